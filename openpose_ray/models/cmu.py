"""The original CMU OpenPose body network (COCO-18), as in Cao et al., CVPR 2017.

"Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields": a VGG-19
backbone and two CPM convolutions compute image features F at stride 8; stage 1
predicts part affinity fields (branch L1) and part confidence maps (branch L2)
from F alone, and each refinement stage 2..6 predicts them again from the
previous stage's fields concatenated with F.

Checkpoints are read in the flat layout of the widely used PyTorch conversion of
the CMU Caffe model (pytorch-openpose ``body_pose_model.pth``): one key per
parameter named after the Caffe layer, e.g. ``conv1_1.weight`` or
``Mconv7_stage6_L2.bias``. Every module here carries its Caffe layer name as its
leaf name, so the conversion is a table built from the same layer lists as the
network.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from openpose_ray.models.loading import check_state_dict, load_state_dict_strict
from openpose_ray.skeleton import COCO18

SKELETON = COCO18
NUM_STAGES = 6
STRIDE = 8
NUM_PAF_CHANNELS = COCO18.num_paf_channels  # 38: x and y per limb, channels as in COCO18.limbs
NUM_HEATMAP_CHANNELS = COCO18.num_parts + 1  # 19: one per part in COCO18 order, then background
FEATURE_CHANNELS = 128  # channels of F (conv4_4_CPM)
REFINEMENT_INPUT_CHANNELS = NUM_PAF_CHANNELS + NUM_HEATMAP_CHANNELS + FEATURE_CHANNELS  # 185

# A layer is (Caffe name, output channels, square kernel size); a bare name is a
# 2x2 max pool with stride 2. Every convolution keeps the spatial size.
_Layer = tuple[str, int, int]

# VGG-19 up to conv4_2 (its first 10 convolutions, three pools -> stride 8).
_BACKBONE_LAYERS: tuple[_Layer | str, ...] = (
    ("conv1_1", 64, 3), ("conv1_2", 64, 3), "pool1_stage1",
    ("conv2_1", 128, 3), ("conv2_2", 128, 3), "pool2_stage1",
    ("conv3_1", 256, 3), ("conv3_2", 256, 3), ("conv3_3", 256, 3), ("conv3_4", 256, 3), "pool3_stage1",
    ("conv4_1", 512, 3), ("conv4_2", 512, 3),
)
# The two CPM convolutions that reduce the VGG features to F.
_CPM_LAYERS: tuple[_Layer, ...] = (("conv4_3_CPM", 256, 3), ("conv4_4_CPM", FEATURE_CHANNELS, 3))

# (Caffe branch suffix, attribute of the branch in a stage, output channels).
_BRANCHES: tuple[tuple[str, str, int], ...] = (
    ("L1", "paf_branch", NUM_PAF_CHANNELS),
    ("L2", "heatmap_branch", NUM_HEATMAP_CHANNELS),
)


def _initial_stage_layers(branch: str, out_channels: int) -> tuple[_Layer, ...]:
    return (
        (f"conv5_1_CPM_{branch}", 128, 3),
        (f"conv5_2_CPM_{branch}", 128, 3),
        (f"conv5_3_CPM_{branch}", 128, 3),
        (f"conv5_4_CPM_{branch}", 512, 1),
        (f"conv5_5_CPM_{branch}", out_channels, 1),
    )


def _refinement_stage_layers(stage: int, branch: str, out_channels: int) -> tuple[_Layer, ...]:
    # Five 7x7 convolutions give each refinement stage a large receptive field,
    # so it can relate parts far apart (the paper's reason for the stages).
    return (
        *((f"Mconv{i}_stage{stage}_{branch}", 128, 7) for i in range(1, 6)),
        (f"Mconv6_stage{stage}_{branch}", 128, 1),
        (f"Mconv7_stage{stage}_{branch}", out_channels, 1),
    )


def _conv_stack(in_channels: int, layers: tuple[_Layer | str, ...], *, relu_after_last: bool) -> nn.Sequential:
    """Convolutions (each followed by ReLU) and max pools, named by their Caffe layer names."""
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for layer in layers:
        if isinstance(layer, str):
            # Floor rounding, as in the PyTorch conversion; Caffe rounds up, which
            # only differs when H or W is not a multiple of 8 (pre-processing pads).
            modules[layer] = nn.MaxPool2d(kernel_size=2, stride=2)
            continue
        name, out_channels, kernel = layer
        modules[name] = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
        modules[f"relu_{name}"] = nn.ReLU(inplace=True)
        in_channels = out_channels
    if not relu_after_last:
        # A branch ends in raw field values (PAF components are signed).
        modules.popitem()
    return nn.Sequential(modules)


class _TwoBranchStage(nn.Module):
    """One stage: the PAF branch (L1) and the confidence-map branch (L2) on the same input."""

    def __init__(self, in_channels: int, branch_layers: Mapping[str, tuple[_Layer, ...]]):
        super().__init__()
        self.paf_branch = _conv_stack(in_channels, branch_layers["paf_branch"], relu_after_last=False)
        self.heatmap_branch = _conv_stack(in_channels, branch_layers["heatmap_branch"], relu_after_last=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32[N, C_in, h, w] -> (pafs float32[N, 38, h, w], heatmaps float32[N, 19, h, w])."""
        return self.paf_branch(x), self.heatmap_branch(x)


class CmuBodyNet(nn.Module):
    """The six-stage, two-branch CMU OpenPose body network for the COCO-18 skeleton.

    Input: float32[N, 3, H, W], already normalised (x / 256 - 0.5, BGR as in the
    CMU release); H and W should be multiples of :data:`STRIDE`. The network
    does no pre-processing and returns raw fields of the last stage only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = _conv_stack(3, _BACKBONE_LAYERS, relu_after_last=True)
        self.cpm = _conv_stack(512, _CPM_LAYERS, relu_after_last=True)
        self.initial_stage = _TwoBranchStage(
            FEATURE_CHANNELS, {attr: _initial_stage_layers(b, out) for b, attr, out in _BRANCHES}
        )
        self.refinement_stages = nn.ModuleList(
            _TwoBranchStage(
                REFINEMENT_INPUT_CHANNELS, {attr: _refinement_stage_layers(stage, b, out) for b, attr, out in _BRANCHES}
            )
            for stage in range(2, NUM_STAGES + 1)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32[N, 3, H, W] -> (heatmaps float32[N, 19, H/8, W/8], pafs float32[N, 38, H/8, W/8]).

        ``heatmaps`` hold one confidence map per COCO-18 part (in ``COCO18.part_names``
        order) then the background map; ``pafs`` hold the x and y components of each
        limb's field at the channels given by ``COCO18.limbs``.
        """
        features = self.cpm(self.backbone(x))
        pafs, heatmaps = self.initial_stage(features)
        for stage in self.refinement_stages:
            # Each stage sees the previous predictions and the image features, in
            # the Caffe concat order (L1, L2, F) that the Mconv1 weights expect.
            pafs, heatmaps = stage(torch.cat([pafs, heatmaps, features], dim=1))
        return heatmaps, pafs


@functools.cache
def _module_path_by_layer() -> Mapping[str, str]:
    """Caffe layer name -> module path in :class:`CmuBodyNet`, e.g.
    ``Mconv1_stage2_L1`` -> ``refinement_stages.0.paf_branch.Mconv1_stage2_L1``."""
    paths = {layer[0]: f"backbone.{layer[0]}" for layer in _BACKBONE_LAYERS if not isinstance(layer, str)}
    paths.update({name: f"cpm.{name}" for name, _, _ in _CPM_LAYERS})
    for branch, attr, out_channels in _BRANCHES:
        for name, _, _ in _initial_stage_layers(branch, out_channels):
            paths[name] = f"initial_stage.{attr}.{name}"
        for stage in range(2, NUM_STAGES + 1):
            for name, _, _ in _refinement_stage_layers(stage, branch, out_channels):
                paths[name] = f"refinement_stages.{stage - 2}.{attr}.{name}"
    return paths


def _rename_layers(state_dict: Mapping[str, torch.Tensor], renames: Mapping[str, str]) -> dict[str, torch.Tensor]:
    renamed: dict[str, torch.Tensor] = {}
    original_key: dict[str, str] = {}
    for key, tensor in state_dict.items():
        layer, _, parameter = key.rpartition(".")
        # Keys of unknown layers pass through unchanged, so the strict check
        # reports them as unexpected under the name the caller gave them.
        new_key = f"{renames[layer]}.{parameter}" if layer in renames else key
        if new_key in renamed:
            raise ValueError(
                f"checkpoint keys {original_key[new_key]!r} and {key!r} both map to {new_key!r}; "
                "the checkpoint mixes the flat CMU layout with module paths"
            )
        renamed[new_key] = tensor
        original_key[new_key] = key
    return renamed


def cmu_checkpoint_to_state_dict(flat: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat CMU layout (``conv1_1.weight``, ``Mconv7_stage6_L2.bias``, ...) -> :class:`CmuBodyNet` state dict.

    Pure: tensors are not copied. Keys of unknown layers are kept unchanged.
    """
    return _rename_layers(flat, _module_path_by_layer())


def state_dict_to_cmu_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:class:`CmuBodyNet` state dict -> flat CMU layout; the inverse of :func:`cmu_checkpoint_to_state_dict`."""
    return _rename_layers(state_dict, {path: layer for layer, path in _module_path_by_layer().items()})


def load_cmu_checkpoint(model: CmuBodyNet, flat: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load a flat CMU checkpoint (e.g. ``read_checkpoint(path)``) into ``model``, strictly.

    Raises :class:`~openpose_ray.models.loading.CheckpointMismatchError` naming every
    missing, unexpected and mis-shaped key as the checkpoint file names them.
    """
    # Check in the file's own layout first: an error then names keys the way the
    # user's file does, not by this module's internal paths.
    check_state_dict(state_dict_to_cmu_checkpoint(model.state_dict()), flat, source=source)
    load_state_dict_strict(model, cmu_checkpoint_to_state_dict(flat), source=source)
