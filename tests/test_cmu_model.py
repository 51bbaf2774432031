"""CmuBodyNet: the paper's architecture, output shapes, and strict loading of the flat CMU layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from openpose_ray.models.cmu import (
    NUM_HEATMAP_CHANNELS,
    NUM_PAF_CHANNELS,
    NUM_STAGES,
    CmuBodyNet,
    cmu_checkpoint_to_state_dict,
    load_cmu_checkpoint,
    state_dict_to_cmu_checkpoint,
)
from openpose_ray.models.loading import CheckpointMismatchError, read_checkpoint


def _paper_layers() -> list[tuple[str, int, int, int]]:
    """Every convolution of the CMU body network as (Caffe name, in, out, kernel), written out by
    hand from the paper and the CMU prototxt, independently of the layer tables in cmu.py."""
    layers = [
        ("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3),
        ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3),
        ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3),
        ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3),
        ("conv4_3_CPM", 512, 256, 3), ("conv4_4_CPM", 256, 128, 3),
    ]
    branches = (("L1", 38), ("L2", 19))  # L1: PAFs (19 limbs x 2), L2: 18 parts + background
    for branch, out in branches:
        layers += [
            (f"conv5_1_CPM_{branch}", 128, 128, 3),
            (f"conv5_2_CPM_{branch}", 128, 128, 3),
            (f"conv5_3_CPM_{branch}", 128, 128, 3),
            (f"conv5_4_CPM_{branch}", 128, 512, 1),
            (f"conv5_5_CPM_{branch}", 512, out, 1),
        ]
    for stage in range(2, 7):
        for branch, out in branches:
            layers += [
                (f"Mconv1_stage{stage}_{branch}", 38 + 19 + 128, 128, 7),
                (f"Mconv2_stage{stage}_{branch}", 128, 128, 7),
                (f"Mconv3_stage{stage}_{branch}", 128, 128, 7),
                (f"Mconv4_stage{stage}_{branch}", 128, 128, 7),
                (f"Mconv5_stage{stage}_{branch}", 128, 128, 7),
                (f"Mconv6_stage{stage}_{branch}", 128, 128, 1),
                (f"Mconv7_stage{stage}_{branch}", 128, out, 1),
            ]
    return layers


def _random_model(seed: int) -> CmuBodyNet:
    """A model whose random weights keep the signal alive through all six stages.

    PyTorch's default initialisation shrinks activations layer by layer, so after
    ~50 convolutions the outputs would be little more than the last biases and an
    equality test would not notice wrongly loaded early layers.
    """
    torch.manual_seed(seed)
    model = CmuBodyNet().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.normal_(module.bias, std=0.1)
    return model


@pytest.fixture(scope="module")
def model() -> CmuBodyNet:
    """A model shared by tests that do not change it (building one initialises ~52M parameters)."""
    return _random_model(seed=0)


@pytest.fixture(scope="module")
def flat_checkpoint(model: CmuBodyNet) -> dict[str, torch.Tensor]:
    return state_dict_to_cmu_checkpoint(model.state_dict())


def _image(seed: int, height: int = 64, width: int = 80) -> torch.Tensor:
    """float32[1, 3, H, W] in the normalised range of pre-processing (x / 256 - 0.5)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, height, width, generator=generator) - 0.5


def test_flat_layout_has_exactly_the_paper_layers(flat_checkpoint: dict[str, torch.Tensor]) -> None:
    expected = {}
    for name, in_channels, out_channels, kernel in _paper_layers():
        expected[f"{name}.weight"] = (out_channels, in_channels, kernel, kernel)
        expected[f"{name}.bias"] = (out_channels,)
    assert {key: tuple(tensor.shape) for key, tensor in flat_checkpoint.items()} == expected


def test_parameter_shapes_match_the_paper(model: CmuBodyNet, flat_checkpoint: dict[str, torch.Tensor]) -> None:
    assert NUM_STAGES == 6
    assert (NUM_PAF_CHANNELS, NUM_HEATMAP_CHANNELS) == (38, 19)
    assert len(model.refinement_stages) == NUM_STAGES - 1
    shapes = {key: tuple(tensor.shape) for key, tensor in flat_checkpoint.items()}
    assert shapes["conv1_1.weight"] == (64, 3, 3, 3)
    assert shapes["conv4_4_CPM.weight"] == (128, 256, 3, 3)
    assert shapes["Mconv1_stage2_L1.weight"] == (128, 185, 7, 7)
    assert shapes["Mconv7_stage6_L1.weight"] == (38, 128, 1, 1)
    assert shapes["Mconv7_stage6_L2.weight"] == (19, 128, 1, 1)
    last_layers = [("conv5_5_CPM_L1", "conv5_5_CPM_L2")] + [
        (f"Mconv7_stage{stage}_L1", f"Mconv7_stage{stage}_L2") for stage in range(2, NUM_STAGES + 1)
    ]
    assert len(last_layers) == 6
    for paf_layer, heatmap_layer in last_layers:
        assert shapes[f"{paf_layer}.weight"][0] == 38
        assert shapes[f"{heatmap_layer}.weight"][0] == 19


def test_parameter_count_matches_the_architecture(model: CmuBodyNet) -> None:
    by_hand = sum(c_in * c_out * k * k + c_out for _, c_in, c_out, k in _paper_layers())
    assert by_hand == 52_311_446
    assert sum(p.numel() for p in model.parameters()) == by_hand


def test_output_shapes_and_values(model: CmuBodyNet) -> None:
    with torch.inference_mode():
        heatmaps, pafs = model(_image(seed=1, height=64, width=80))
    assert heatmaps.shape == (1, 19, 8, 10)
    assert pafs.shape == (1, 38, 8, 10)
    assert heatmaps.dtype == pafs.dtype == torch.float32
    assert torch.isfinite(heatmaps).all() and torch.isfinite(pafs).all()


def test_random_flat_checkpoint_loads_strictly_and_reproduces_outputs(
    model: CmuBodyNet, flat_checkpoint: dict[str, torch.Tensor], tmp_path
) -> None:
    path = tmp_path / "body_pose_model.pth"
    torch.save(flat_checkpoint, path)
    loaded = read_checkpoint(path)

    other = _random_model(seed=1)
    image = _image(seed=2)
    with torch.inference_mode():
        expected = model(image)
        # The comparison below only means something if outputs depend on input and weights.
        assert not torch.equal(expected[0], model(_image(seed=3))[0])
        assert not torch.equal(expected[0], other(image)[0])

    load_cmu_checkpoint(other, loaded, source=str(path))
    with torch.inference_mode():
        heatmaps, pafs = other(image)
    assert torch.equal(heatmaps, expected[0])
    assert torch.equal(pafs, expected[1])


def _mismatch_message(model: CmuBodyNet, flat: dict[str, torch.Tensor]) -> str:
    with pytest.raises(CheckpointMismatchError) as error:
        load_cmu_checkpoint(model, flat, source="test.pth")
    assert "test.pth" in str(error.value)
    return str(error.value)


def test_renamed_key_is_named_as_unexpected_and_missing(
    model: CmuBodyNet, flat_checkpoint: dict[str, torch.Tensor]
) -> None:
    flat = dict(flat_checkpoint)
    flat["Mconv7_stage6_L2.weights"] = flat.pop("Mconv7_stage6_L2.weight")
    message = _mismatch_message(model, flat)
    assert "missing keys: Mconv7_stage6_L2.weight;" in message
    assert "unexpected keys: Mconv7_stage6_L2.weights" in message


def test_mis_shaped_tensor_is_named(model: CmuBodyNet, flat_checkpoint: dict[str, torch.Tensor]) -> None:
    flat = dict(flat_checkpoint)
    flat["Mconv1_stage2_L1.weight"] = torch.zeros(128, 184, 7, 7)
    message = _mismatch_message(model, flat)
    assert "Mconv1_stage2_L1.weight (checkpoint (128, 184, 7, 7), network (128, 185, 7, 7))" in message


def test_extra_key_is_named(model: CmuBodyNet, flat_checkpoint: dict[str, torch.Tensor]) -> None:
    flat = dict(flat_checkpoint)
    flat["Mconv7_stage7_L1.weight"] = torch.zeros(38, 128, 1, 1)
    message = _mismatch_message(model, flat)
    assert "unexpected keys: Mconv7_stage7_L1.weight" in message
    assert "missing" not in message


def test_flat_name_mapping_round_trips(model: CmuBodyNet, flat_checkpoint: dict[str, torch.Tensor]) -> None:
    state_dict = model.state_dict()
    # The module nests layers, so the mapping is not the identity.
    assert set(flat_checkpoint) != set(state_dict)
    round_trip = cmu_checkpoint_to_state_dict(state_dict_to_cmu_checkpoint(state_dict))
    assert list(round_trip) == list(state_dict)
    assert all(round_trip[key] is state_dict[key] for key in state_dict)


def test_unknown_flat_keys_pass_through_the_mapping() -> None:
    tensor = torch.zeros(1)
    converted = cmu_checkpoint_to_state_dict({"conv1_1.weight": tensor, "fc6.weight": tensor})
    assert set(converted) == {"backbone.conv1_1.weight", "fc6.weight"}


def test_mixed_layouts_colliding_after_mapping_are_rejected() -> None:
    tensor = torch.zeros(1)
    with pytest.raises(ValueError, match="conv1_1.weight.*backbone.conv1_1.weight"):
        cmu_checkpoint_to_state_dict({"conv1_1.weight": tensor, "backbone.conv1_1.weight": tensor})
