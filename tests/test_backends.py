"""The network's CPU runtimes (openpose_ray.backends): OpenVINO gives torch's fields, and auto picks by what can run."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from openpose_ray.backends import choose_backend, openvino_installed, openvino_network

pytestmark = pytest.mark.skipif(not openvino_installed(), reason="openvino is not installed (a package dependency)")

AVX512_AMX = {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
AVX2 = {"avx2", "fma"}


def test_auto_takes_openvino_on_a_cpu_and_torch_elsewhere():
    assert choose_backend("auto", "cpu", "fp32", AVX2) == "openvino"
    assert choose_backend("auto", "cpu", "bf16", AVX512_AMX) == "openvino"
    assert choose_backend("auto", "cpu", "bf16", AVX2) == "torch"  # OpenVINO refuses bf16 without bf16 units
    assert choose_backend("auto", "cuda", "fp32", AVX512_AMX) == "torch"
    assert choose_backend("torch", "cpu", "fp32", AVX512_AMX) == "torch"
    with pytest.raises(ValueError, match="backend openvino runs fp32"):
        choose_backend("openvino", "cuda", "fp32", AVX512_AMX)
    with pytest.raises(ValueError, match="backend openvino runs fp32"):
        choose_backend("openvino", "cpu", "bf16", AVX2)
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("onnx", "cpu", "fp32")


@pytest.fixture(scope="module")
def frames(data_dir) -> list[np.ndarray]:
    """The 4 labelled photos, a 16:9 video frame and a portrait crop of it: several network input shapes."""
    photos = [cv2.imread(str(p)) for p in sorted((data_dir / "coco_val2017_mini").glob("*.jpg"))]
    capture = cv2.VideoCapture(str(data_dir / "videos" / "sports_994p_vp9.mp4"))
    ok, frame = capture.read()
    assert ok
    return photos + [frame, np.ascontiguousarray(frame[:, 600:1100])]


@pytest.mark.parametrize("settings", [
    {},  # the default input: fit, height 368
    {"net_size": (432, 368), "resize_mode": "stretch"},
    {"scales": (1.0, 0.5)},
], ids=["fit", "stretch432", "fit-multiscale"])
def test_openvino_fields_and_people_equal_torchs(estimator, frames, settings):
    on_openvino = estimator.with_config(backend="openvino", **settings)
    on_torch = estimator.with_config(backend="torch", **settings)
    assert (on_openvino.engine.backend, on_torch.engine.backend) == ("openvino", "torch")
    got, want = on_openvino.fields(frames, batch_size=3), on_torch.fields(frames, batch_size=3)
    for (heat, paf, _), (heat_t, paf_t, _) in zip(got, want):
        np.testing.assert_allclose(heat, heat_t, atol=1e-4)
        np.testing.assert_allclose(paf, paf_t, atol=1e-4)
    people, people_t = on_openvino.estimate(frames), on_torch.estimate(frames)
    assert [len(p) for p in people] == [len(p) for p in people_t]
    for mine, theirs in zip(people, people_t):
        for a, b in zip(mine, theirs):
            np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-3)


def test_inputs_off_the_stride_run_on_torch(estimator):
    """The traced padding holds for sides that are multiples of the stride only; other batches run on torch."""
    engine = estimator.with_config(backend="openvino").engine
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 370, 430, 3), dtype=np.uint8))
    assert not engine.compiled.fits(batch.permute(0, 3, 1, 2))
    heat, paf = engine.network_fields(batch)
    heat_t, paf_t = estimator.with_config(backend="torch").engine.network_fields(batch)
    assert heat.shape == heat_t.shape == (1, 19, 47, 54)
    np.testing.assert_allclose(heat, heat_t, atol=1e-5)
    np.testing.assert_allclose(paf, paf_t, atol=1e-5)


def test_the_converted_model_is_cached_on_disk_and_read_back(estimator, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENPOSE_RAY_CACHE", str(tmp_path))
    network = type(estimator.network)()
    network.load_state_dict(estimator.network.state_dict())
    compiled = openvino_network(network.eval(), 8, "fp32", 2, weights_key="mobilenet_thin-test")
    (xml,) = (tmp_path / "openvino").glob("*.xml")
    assert xml.with_suffix(".bin").stat().st_size > 1_000_000  # the weights, in float32
    other = type(estimator.network)()
    other.load_state_dict(estimator.network.state_dict())
    again = openvino_network(other.eval(), 8, "fp32", 2, weights_key="mobilenet_thin-test")
    assert again is not compiled and sorted((tmp_path / "openvino").iterdir()) == [xml.with_suffix(".bin"), xml]
    batch = torch.rand(2, 3, 368, 432) * 255 - 128
    for a, b in zip(compiled(batch), again(batch)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_batch_runs_frame_by_frame_on_streams_in_order(estimator, frames):
    """Several frames go to the throughput-compiled model, one request per frame, and come back in order,
    each equal to what a batch of one (the latency-compiled model) gives it."""
    engine = estimator.with_config(backend="openvino").engine
    batch = torch.from_numpy(np.stack([cv2.resize(frame, (432, 368)) for frame in frames]))  # 6 distinct frames
    compiled = engine.compiled
    heat, paf = engine.network_fields(batch)
    assert len(compiled.streams) >= min(2, torch.get_num_threads())  # OpenVINO's THROUGHPUT hint: a stream per 1-2 threads
    for i in range(len(frames)):
        heat_1, paf_1 = engine.network_fields(batch[i : i + 1])
        np.testing.assert_allclose(heat[i : i + 1], heat_1, atol=1e-5)
        np.testing.assert_allclose(paf[i : i + 1], paf_1, atol=1e-5)
    assert float((heat[0] - heat[1]).abs().max()) > 0.1  # distinct frames: an order swap would show
