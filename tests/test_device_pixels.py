"""sources.decoder: yuv: video frames decoded to YUV 4:2:0 planes and made into network inputs on the device.

Against today's path (swscale's BGR, then OpenCV's resize on the CPU) on the shared videos: pixels
within swscale's rounding, network inputs within a few levels, the engine's results for planar
frames equal to those of the same inputs given as host arrays, people within stated bounds.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from openpose_ray.device_pixels import network_inputs, rgb_from_yuv420
from openpose_ray.jobconfig import S3Config, SourcesConfig
from openpose_ray.models.registry import get_entry
from openpose_ray.preprocess import PreparedImage, prepare_image, prepare_planar, resolve_input_spec
from openpose_ray.sources.decoding import decode_frames
from openpose_ray.sources.listing import iter_objects
from openpose_ray.sources.planning import plan_video
from openpose_ray.sources.yuv import MATRICES, Yuv420, rotated, yuv420_of

VIDEOS = ["videos/street_720p_h264.avi", "videos/sports_994p_vp9.mp4"]  # H.264 and VP9, both BT.709 limited
LOCAL = S3Config()


def _frame(path, index: int = 10):
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame


def _rgb(planes: Yuv420) -> np.ndarray:
    """uint8[H, W, 3] BGR of planes, converted by device_pixels on the CPU."""
    y = torch.from_numpy(planes.y)[None]
    uv = torch.from_numpy(np.stack([planes.u, planes.v]))[None]
    rgb = rgb_from_yuv420(y, uv, planes.matrix, planes.full_range)[0].permute(1, 2, 0).numpy()
    return rgb[..., ::-1].astype(np.uint8)


def _inputs(planes: Yuv420, item) -> list[np.ndarray]:
    y = torch.from_numpy(planes.y)[None]
    uv = torch.from_numpy(np.stack([planes.u, planes.v]))[None]
    return [x[0].numpy() for x in network_inputs(y, uv, planes.matrix, planes.full_range, item.transforms, SPEC)]


SPEC = resolve_input_spec(get_entry("mobilenet_thin").input_spec)  # fit at height 368: 656x368 for 16:9


@pytest.mark.parametrize("name", VIDEOS)
def test_conversion_equals_swscales_up_to_its_rounding(data_dir, name):
    """The standard BT.709 conversion against PyAV's bgr24 (swscale, fixed point): at most 3 levels apart,
    ~1 on average (swscale's result is about one level low)."""
    frame = _frame(data_dir / name)
    planes = yuv420_of(frame)
    assert (planes.matrix, planes.full_range, planes.size) == ("bt709", False, (frame.width, frame.height))
    difference = np.abs(_rgb(planes).astype(int) - frame.to_ndarray(format="bgr24").astype(int))
    assert difference.max() <= 3 and difference.mean() < 1.2, (difference.max(), difference.mean())


@pytest.mark.parametrize("matrix", sorted(MATRICES))
@pytest.mark.parametrize("full_range", [False, True])
def test_colours_round_trip_through_each_matrix(matrix, full_range):
    """RGB colours made YUV by the textbook forward transform come back within one level; black, white and
    grey are exact (16/235 in limited range, 0/255 in full)."""
    kr, kb = MATRICES[matrix]
    rgb = np.array([[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                    [200, 120, 40], [30, 180, 220]], np.float64)
    luma = kr * rgb[:, 0] + (1 - kr - kb) * rgb[:, 1] + kb * rgb[:, 2]
    cb, cr = (rgb[:, 2] - luma) / (2 * (1 - kb)), (rgb[:, 0] - luma) / (2 * (1 - kr))
    if full_range:
        y, u, v = luma, cb + 128, cr + 128
    else:
        y, u, v = 16 + luma * 219 / 255, 128 + cb * 224 / 255, 128 + cr * 224 / 255
    # each colour a 2x2 block: one chroma sample each
    level = lambda values: np.clip(np.round(values), 0, 255).astype(np.uint8)[None]  # noqa: E731 (full range: 255.5)
    planes = Yuv420(np.repeat(np.repeat(level(y), 2, 0), 2, 1), level(u), level(v), matrix, full_range)
    got = _rgb(planes)[0, 0::2, ::-1].astype(int)
    assert np.abs(got - rgb).max() <= 1, got
    assert got[:3].tolist() == [[0, 0, 0], [255, 255, 255], [128, 128, 128]]


def test_planes_of_nv12_and_odd_sized_frames():
    """NV12 (hardware decoders' layout) gives the planes of the same frame in yuv420p; odd sizes round chroma up."""
    rng = np.random.default_rng(0)
    planar = av.VideoFrame(width=34, height=18, format="yuv420p")
    for plane, (h, w) in zip(planar.planes, [(18, 34), (9, 17), (9, 17)]):
        plane.update(rng.integers(0, 256, (h, plane.line_size), dtype=np.uint8).tobytes())
    nv12 = planar.reformat(format="nv12")
    a, b = yuv420_of(planar), yuv420_of(nv12)
    assert all(np.array_equal(getattr(a, p), getattr(b, p)) for p in "yuv")
    odd = yuv420_of(av.VideoFrame(width=33, height=17, format="yuv420p"))
    assert (odd.y.shape, odd.u.shape, odd.v.shape) == ((17, 33), (9, 17), (9, 17))
    assert yuv420_of(av.VideoFrame(width=32, height=16, format="yuv444p")) is None  # converted on the CPU instead
    with pytest.raises(ValueError, match="not 4:2:0"):
        Yuv420(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), np.zeros((2, 2), np.uint8), "bt709", False)


def test_turned_planes_convert_to_the_turned_picture():
    """Turning the planes then converting equals converting then turning (clockwise quarter turns)."""
    rng = np.random.default_rng(1)
    planes = Yuv420(rng.integers(16, 236, (6, 10), dtype=np.uint8), rng.integers(16, 241, (3, 5), dtype=np.uint8),
                    rng.integers(16, 241, (3, 5), dtype=np.uint8), "bt601", False)
    for turns in range(4):
        assert np.array_equal(_rgb(rotated(planes, turns)), np.rot90(_rgb(planes), -turns)), turns
    odd = Yuv420(np.zeros((5, 4), np.uint8), np.zeros((3, 2), np.uint8), np.zeros((3, 2), np.uint8), "bt601", False)
    with pytest.raises(ValueError, match="odd size"):
        rotated(odd, 1)


@pytest.mark.parametrize("name", VIDEOS)
@pytest.mark.parametrize("geometry", [dict(), dict(aspect_buckets=True), dict(net_size=(432, 368)),
                                      dict(scales=(1.0, 0.5))])
def test_network_inputs_equal_the_cpu_paths_within_rounding(data_dir, name, geometry):
    """Fit (656x368), fit padded to an aspect bucket, stretch at 432x368, two scales: the same sizes and transforms
    as prepare_image on swscale's BGR, pixels at most 4 levels apart (~1 on average), padding exactly pad_value."""
    frame = _frame(data_dir / name)
    scales = geometry.get("scales", (1.0,))
    spec = resolve_input_spec(SPEC, geometry.get("net_size"), None, geometry.get("aspect_buckets", False))
    cpu = prepare_image(frame.to_ndarray(format="bgr24"), spec, spec.net_size, scales)
    planar = prepare_planar(yuv420_of(frame), spec, spec.net_size, scales)
    assert planar.transforms == cpu.transforms and planar.base_transform == cpu.base_transform
    y = torch.from_numpy(planar.planes.y)[None]
    uv = torch.from_numpy(np.stack([planar.planes.u, planar.planes.v]))[None]
    made = network_inputs(y, uv, planar.planes.matrix, planar.planes.full_range, planar.transforms, spec)
    for ours, theirs, transform in zip(made, cpu.inputs, cpu.transforms):
        ours = ours[0].numpy()
        assert ours.shape == theirs.shape and ours.dtype == np.uint8
        difference = np.abs(ours.astype(int) - theirs.astype(int))
        assert difference.max() <= 4 and difference.mean() < 1.3, (difference.max(), difference.mean())
        valid_w, valid_h = transform.valid_size
        assert (ours[valid_h:] == spec.pad_value).all() and (ours[:, valid_w:] == spec.pad_value).all()


def test_the_engine_runs_planar_frames_as_their_inputs(data_dir, estimator):
    """Planar frames mixed with host-prepared ones: each frame's peaks equal those of its own device-made
    inputs given as a host PreparedImage (the same network input, bit for bit), in the order given."""
    frames = [_frame(data_dir / VIDEOS[0], i) for i in (0, 40)] + [_frame(data_dir / VIDEOS[1], 5)]
    spec, net_size, scales = estimator.input_spec, estimator.net_size, estimator.network_config.scales
    planar = [prepare_planar(yuv420_of(f), spec, net_size, scales) for f in frames]
    as_host = [PreparedImage(tuple(_inputs(p.planes, p)), p.transforms, p.base_transform) for p in planar]
    photo = prepare_image(frames[2].to_ndarray(format="bgr24")[:400, :300].copy(), spec, net_size, scales)
    mixed = [planar[0], photo, planar[2], planar[1]]
    got = estimator.engine.peaks(mixed, estimator.postprocess, batch_size=2)
    want = estimator.engine.peaks([as_host[0], photo, as_host[2], as_host[1]], estimator.postprocess,
                                  batch_size=2)
    assert estimator.engine.transfers.inputs.allocated > 0
    for a, b in zip(got, want):
        for field in ("part", "xy", "score"):
            assert np.array_equal(getattr(a.peaks, field), getattr(b.peaks, field)), field
        for field in ("limb", "a", "b", "score"):
            assert np.array_equal(getattr(a.candidates, field), getattr(b.candidates, field)), field
    assert all(len(got[i].peaks.part) > 0 for i in (0, 2, 3))  # the video frames have people


def test_decoding_yields_planes_where_it_can_and_bgr_otherwise(data_dir, tmp_path):
    """Asked for planes (the decode tasks under decoder yuv): the H.264 video's frames come as planes (the
    same pictures as BGR decoding, within swscale's rounding); of a turned video (display matrix), 4:2:0
    comes as turned planes, 4:4:4 as BGR."""
    from synthetic_media import rotated_clip, video_clip

    sources = SourcesConfig()
    (obj,) = iter_objects(str(data_dir / VIDEOS[0]), sources, LOCAL)
    shard = plan_video(obj, 16, LOCAL)[0]
    as_planes = list(decode_frames(shard, sources, LOCAL, planes=True))
    as_bgr = list(decode_frames(shard, sources, LOCAL))
    assert len(as_planes) == len(as_bgr) == 16
    for a, b in zip(as_planes, as_bgr):
        assert a.image is None and a.planes is not None and b.planes is None
        assert (a.frame_index, a.timestamp, a.width, a.height) == (b.frame_index, b.timestamp, 1280, 720)
        assert np.abs(_rgb(a.planes).astype(int) - b.image.astype(int)).max() <= 3

    upright = video_clip(data_dir / VIDEOS[0], tmp_path / "upright.mp4", 3, width=160)
    for pix_fmt, as_yuv in (("yuv420p", True), ("yuv444p", False)):
        turned = rotated_clip(upright, tmp_path / f"turned-{pix_fmt}.mp4", pix_fmt=pix_fmt)
        (obj,) = iter_objects(str(turned), sources, LOCAL)
        frames = list(decode_frames(plan_video(obj, 16, LOCAL)[0], sources, LOCAL, planes=True))
        reference = list(decode_frames(plan_video(obj, 16, LOCAL)[0], sources, LOCAL))
        assert [(f.width, f.height) for f in frames] == [(160, 90)] * 3
        for a, b in zip(frames, reference):
            assert (a.planes is not None) == as_yuv and (a.image is None) == as_yuv
            pixels = _rgb(a.planes) if as_yuv else a.image
            assert np.abs(pixels.astype(int) - b.image.astype(int)).max() <= 3, pix_fmt


def test_nvdec_where_it_cannot_be_used_decodes_on_the_cpu_saying_why(data_dir, monkeypatch):
    """decoder gpu on a node without a GPU, with a GPU CUDA cannot open, and with too old a PyAV: the planes of
    CPU decoding, bit for bit, every frame saying why NVDEC did not decode it."""
    import openpose_ray.sources.nvdec as nvdec

    sources = SourcesConfig()
    (obj,) = iter_objects(str(data_dir / VIDEOS[0]), sources, LOCAL)
    shard = plan_video(obj, 8, LOCAL)[1]
    want = list(decode_frames(shard, sources, LOCAL, planes=True))
    assert all(f.decoded_by == "cpu" and f.not_nvdec is None for f in want)

    def decoded_with_nvdec() -> list:
        frames = list(decode_frames(shard, sources, LOCAL, planes=True, nvdec=True))
        assert [f.frame_index for f in frames] == [f.frame_index for f in want]
        for a, b in zip(frames, want):
            assert a.decoded_by == "cpu"
            assert all(np.array_equal(getattr(a.planes, p), getattr(b.planes, p)) for p in "yuv")
        assert len({f.not_nvdec for f in frames}) == 1
        return frames

    monkeypatch.setattr(nvdec, "_NVIDIA_GPUS", "/nonexistent")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert decoded_with_nvdec()[0].not_nvdec == "no NVIDIA GPU on this node"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a GPU named, but no driver here: opening it fails
    assert decoded_with_nvdec()[0].not_nvdec.startswith("NVDEC could not be opened")
    monkeypatch.setattr(av, "__version__", "16.1.0")
    assert decoded_with_nvdec()[0].not_nvdec.startswith("PyAV 16.1.0 loses frame properties")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert nvdec.gpus_on_node() == 0


def test_a_batch_is_converted_in_passes_with_the_same_result(data_dir, monkeypatch):
    """Frames converted a few at a time (memory bounded by PIXELS_PER_PASS) equal those converted at once."""
    import openpose_ray.device_pixels as device_pixels

    frames = [yuv420_of(_frame(data_dir / VIDEOS[0], i)) for i in (0, 7, 30)]
    item = prepare_planar(frames[0], SPEC, SPEC.net_size, (1.0, 0.5))
    y = torch.from_numpy(np.stack([f.y for f in frames]))
    uv = torch.from_numpy(np.stack([np.stack([f.u, f.v]) for f in frames]))
    at_once = network_inputs(y, uv, "bt709", False, item.transforms, SPEC)
    monkeypatch.setattr(device_pixels, "PIXELS_PER_PASS", 2 * 1280 * 720)  # passes of 2 frames, then 1
    in_passes = network_inputs(y, uv, "bt709", False, item.transforms, SPEC)
    assert [x.shape for x in in_passes] == [(3, 368, 656, 3), (3, 184, 328, 3)]
    assert all(torch.equal(a, b) for a, b in zip(at_once, in_passes))
