"""The tidy mobilenet_thin (no pad copies, folded scales, both branches of a stage at once) computes
what the network computes: as close to exact (float64) arithmetic as the network itself in float32."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from openpose_ray.models.mobilenet_thin import MobilenetThin
from openpose_ray.models.mobilenet_thin_tidy import TidyMobilenetThin, inference_form


@pytest.fixture(scope="module")
def networks(estimator):
    """(the registered network in float32 on the CPU, the same weights in float64)."""
    state = {key: value.detach().cpu() for key, value in estimator.network.state_dict().items()}
    fp32, fp64 = MobilenetThin().eval(), MobilenetThin().double().eval()
    fp32.load_state_dict(state)
    fp64.load_state_dict({key: value.double() for key, value in state.items()})
    return fp32, fp64


def _inputs(data_dir, width: int, height: int, batch: int) -> torch.Tensor:
    """Real photos resized to width x height, BGR 0..255: float32[batch, 3, height, width]."""
    photos = sorted((data_dir / "coco_val2017_mini").glob("*.jpg"))[:batch]
    images = [cv2.resize(cv2.imread(str(p)), (width, height), interpolation=cv2.INTER_CUBIC) for p in photos]
    return torch.from_numpy(np.stack(images).astype(np.float32).transpose(0, 3, 1, 2).copy())


def _relative_error(ours: torch.Tensor, exact: torch.Tensor) -> float:
    return float((ours.double() - exact).abs().max() / exact.abs().max())


@pytest.mark.parametrize("share_stage_input", [False, True], ids=["cpu-form", "cuda-form"])
@pytest.mark.parametrize("width, height, batch", [(432, 368, 2), (437, 371, 1), (120, 96, 1)])
def test_the_tidy_graph_is_as_exact_as_the_network(networks, data_dir, share_stage_input, width, height, batch):
    network, exact_network = networks
    tidy = TidyMobilenetThin.from_network(network, share_stage_input=share_stage_input)
    x = _inputs(data_dir, width, height, batch)
    with torch.inference_mode():
        exact = exact_network(x.double())
        eager = network(x)
        ours = tidy(x)
    for name, index in (("heatmaps", 0), ("pafs", 1)):
        assert ours[index].shape == eager[index].shape == (batch, (19, 38)[index], -(-height // 8), -(-width // 8))
        eager_error, our_error = _relative_error(eager[index], exact[index]), _relative_error(ours[index], exact[index])
        # PAFs cancel: the network's own float32 error is ~1e-4 of their range (heatmaps ~4e-6).
        assert our_error <= 1.5 * eager_error + 1e-6, (name, our_error, eager_error)
        assert our_error <= (1e-5 if name == "heatmaps" else 3e-4), (name, our_error)


def test_the_engine_runs_one_tidy_form_per_network_and_device(estimator):
    engine = estimator.engine
    assert isinstance(engine.network, TidyMobilenetThin) and engine.registered is estimator.network
    assert not engine.network.stages[0].share_input  # on a CPU each branch reads the stage input itself
    assert estimator.with_config(net_size=(656, 368)).engine.network is engine.network  # shared, as OpenVINO's model
    ours = {id(p) for p in engine.network.parameters()}
    assert not ours & {id(p) for p in estimator.network.parameters()}  # copies: the network is left as it is


def test_the_form_follows_the_device_and_the_networks_weights(networks):
    network = MobilenetThin().eval()
    network.load_state_dict(networks[0].state_dict())
    cpu_form = inference_form(network, torch.device("cpu"))
    assert not cpu_form.stages[0].share_input and inference_form(network, torch.device("cpu")) is cpu_form
    cuda_form = inference_form(network, torch.device("cuda"))  # built on the network's device (here the CPU)
    assert cuda_form.stages[0].share_input
    x = torch.rand(1, 3, 64, 80) * 255
    with torch.inference_mode():
        before = cpu_form(x)[0]
    changed = networks[0].state_dict()
    changed["heatmap_stages.5.4.pointwise.bias"] = changed["heatmap_stages.5.4.pointwise.bias"] + 1.0
    network.load_state_dict(changed)  # in place, after the form was made
    again = inference_form(network, torch.device("cpu"))
    assert again is not cpu_form  # new weights: a new form, not the stale copy
    with torch.inference_mode():
        assert torch.allclose(again(x)[0], before + 1.0, atol=1e-4)  # the last layer's bias, one more
