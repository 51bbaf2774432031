"""OpenPose's BODY_25 network (the default model of OpenPose since 1.3), for the BODY25 skeleton.

Architecture (from OpenPose's ``models/pose/body_25/pose_deploy.prototxt``; layer
names are Caffe's, so a ``pose_iter_584000.caffemodel`` maps onto it by name):

- VGG-19 up to conv4_2, then conv4_3_CPM (256) and conv4_4_CPM (128): image features F
  at stride 8. ReLU up to conv4_1, PReLU from conv4_2 on.
- PAF stages first ("L2"; 4 stages, 0..3), then heatmap stages ("L1"; 2 stages, 0..1).
  Each stage is five blocks of three 3x3 convolutions, each followed by a PReLU, where a
  block's three outputs are concatenated (``Mconv{i}_stage{s}_{L}_concat``: 3 x width
  channels) and feed the next block; then a 1x1 convolution (+ PReLU) and a 1x1 output
  convolution. Width 96 and a 256-channel 1x1 in stage 0 of each branch, 128 and 512 after.
- Stage inputs (Caffe concat order): L2 stage 0: F; L2 stage s > 0: [F, PAFs of s-1];
  L1 stage 0: [F, PAFs of L2 stage 3]; L1 stage 1: [F, heatmaps of L1 stage 0, PAFs].
- Output: 26 heatmaps (the 25 parts in BODY25 order, then the background) and 52 PAF
  channels (x, y per limb at the channels of ``BODY25.limbs``), both at stride 8.

Checkpoints: OpenPose's caffemodel (read by :mod:`.caffe`), or any flat mapping
``<Caffe layer>.weight`` / ``.bias`` -> tensor (:func:`body25_checkpoint_to_state_dict`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import nn

from openpose_ray.skeleton import BODY25

SKELETON = BODY25
STRIDE = 8
NUM_HEATMAP_CHANNELS = BODY25.num_parts + 1  # 26
NUM_PAF_CHANNELS = BODY25.num_paf_channels  # 52
FEATURE_CHANNELS = 128  # channels of F (conv4_4_CPM)
PAF_STAGES = 4
HEATMAP_STAGES = 2
_BLOCKS = 5  # blocks of three convolutions per stage

# (Caffe layer, output channels, activation) of the VGG part and the CPM layers; a bare name is a 2x2 max pool.
_BACKBONE: tuple[tuple[str, int, str] | str, ...] = (
    ("conv1_1", 64, "relu"), ("conv1_2", 64, "relu"), "pool1_stage1",
    ("conv2_1", 128, "relu"), ("conv2_2", 128, "relu"), "pool2_stage1",
    ("conv3_1", 256, "relu"), ("conv3_2", 256, "relu"), ("conv3_3", 256, "relu"), ("conv3_4", 256, "relu"),
    "pool3_stage1",
    ("conv4_1", 512, "relu"), ("conv4_2", 512, "prelu4_2"),
    ("conv4_3_CPM", 256, "prelu4_3_CPM"), ("conv4_4_CPM", FEATURE_CHANNELS, "prelu4_4_CPM"),
)


class _Backbone(nn.Module):
    """image float32[N, 3, H, W] -> F float32[N, 128, H/8, W/8]; modules named by their Caffe layers."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        channels = 3
        for layer in _BACKBONE:
            if isinstance(layer, str):
                self.layers[layer] = nn.MaxPool2d(kernel_size=2, stride=2)  # H, W are multiples of 8
                continue
            name, out, activation = layer
            self.layers[name] = nn.Conv2d(channels, out, 3, padding=1)
            self.layers[f"relu_{name}" if activation == "relu" else activation] = (
                nn.ReLU(inplace=True) if activation == "relu" else nn.PReLU(out))
            channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = layer(x)
        return x


class _Stage(nn.Module):
    """One BODY_25 stage of branch ``branch`` ("L1" heatmaps, "L2" PAFs): float32[N, C_in, h, w] -> [N, out, h, w]."""

    def __init__(self, stage: int, branch: str, in_channels: int, width: int, hidden: int, out_channels: int):
        super().__init__()
        self.convs = nn.ModuleDict()
        self.prelus = nn.ModuleDict()
        self.block_names = []
        channels = in_channels
        for block in range(1, _BLOCKS + 1):
            names = [f"Mconv{block}_stage{stage}_{branch}_{j}" for j in range(3)]
            previous = channels
            for j, name in enumerate(names):
                self.convs[name] = nn.Conv2d(previous, width, 3, padding=1)
                self.prelus[f"Mprelu{block}_stage{stage}_{branch}_{j}"] = nn.PReLU(width)
                previous = width
            self.block_names.append(names)
            channels = 3 * width
        self.convs[f"Mconv6_stage{stage}_{branch}"] = nn.Conv2d(channels, hidden, 1)
        self.prelus[f"Mprelu6_stage{stage}_{branch}"] = nn.PReLU(hidden)
        self.convs[f"Mconv7_stage{stage}_{branch}"] = nn.Conv2d(hidden, out_channels, 1)
        self.stage, self.branch = stage, branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for names in self.block_names:
            outputs = []
            for name in names:
                x = self.prelus["Mprelu" + name[len("Mconv"):]](self.convs[name](x))
                outputs.append(x)
            x = torch.cat(outputs, dim=1)  # the block's three outputs: more paths, more receptive fields
        suffix = f"stage{self.stage}_{self.branch}"
        x = self.prelus[f"Mprelu6_{suffix}"](self.convs[f"Mconv6_{suffix}"](x))
        return self.convs[f"Mconv7_{suffix}"](x)  # raw fields: PAF components are signed


def _stage_shape(stage: int) -> tuple[int, int]:
    """(block width, 1x1 hidden channels) of a stage: stage 0 of a branch is the narrower one."""
    return (96, 256) if stage == 0 else (128, 512)


class Body25Net(nn.Module):
    """OpenPose BODY_25. Input float32[N, 3, H, W] normalised as x / 256 - 0.5 (BGR), H and W multiples of 8.

    Returns (heatmaps float32[N, 26, H/8, W/8], pafs float32[N, 52, H/8, W/8]) of the last stages.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Backbone()
        self.paf_stages = nn.ModuleList(
            _Stage(s, "L2", FEATURE_CHANNELS + (NUM_PAF_CHANNELS if s else 0), *_stage_shape(s), NUM_PAF_CHANNELS)
            for s in range(PAF_STAGES))
        self.heatmap_stages = nn.ModuleList(
            _Stage(s, "L1", FEATURE_CHANNELS + NUM_PAF_CHANNELS + (NUM_HEATMAP_CHANNELS if s else 0),
                   *_stage_shape(s), NUM_HEATMAP_CHANNELS)
            for s in range(HEATMAP_STAGES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        pafs = self.paf_stages[0](features)
        for stage in self.paf_stages[1:]:
            pafs = stage(torch.cat([features, pafs], dim=1))
        heatmaps = self.heatmap_stages[0](torch.cat([features, pafs], dim=1))
        for stage in self.heatmap_stages[1:]:
            heatmaps = stage(torch.cat([features, heatmaps, pafs], dim=1))
        return heatmaps, pafs


@functools.cache
def _module_path_by_layer() -> Mapping[str, str]:
    """Caffe layer name -> module path in :class:`Body25Net` (e.g. ``prelu4_2`` -> ``backbone.layers.prelu4_2``)."""
    with torch.device("meta"):  # names only: no weights allocated
        model = Body25Net()
    paths = {}
    for path, module in model.named_modules():
        layer = path.rpartition(".")[2]
        if isinstance(module, (nn.Conv2d, nn.PReLU)):
            paths[layer] = path
    return paths


def _rename(state_dict: Mapping[str, torch.Tensor], renames: Mapping[str, str]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, tensor in state_dict.items():
        layer, _, parameter = key.rpartition(".")
        renamed[f"{renames[layer]}.{parameter}" if layer in renames else key] = tensor  # unknown keys: reported as such
    return renamed


def body25_checkpoint_to_state_dict(flat: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat Caffe-named checkpoint (``conv1_1.weight``, ``Mprelu6_stage1_L1.weight``, ...) -> state dict."""
    return _rename(flat, _module_path_by_layer())


def state_dict_to_body25_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:class:`Body25Net` state dict -> flat Caffe-named checkpoint; the inverse of the above."""
    return _rename(state_dict, {path: layer for layer, path in _module_path_by_layer().items()})
