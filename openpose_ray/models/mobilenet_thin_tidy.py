"""mobilenet_thin rearranged for inference: the same function as :class:`.MobilenetThin`, fewer bytes moved.

Built from a loaded :class:`.MobilenetThin` (:meth:`TidyMobilenetThin.from_network`); its outputs
equal the network's within float rounding: never further from float64 arithmetic than 1.5x the
network's own float32 error (tests/test_mobilenet_thin_tidy.py; heatmaps within 1e-5 of their
range, PAFs, which cancel, ~1e-4 for both). What changes, and why each is exact:

- **No pad copies at stride 1.** TensorFlow's SAME padding of a 3x3, stride-1 convolution is one
  pixel on every side whatever the size, which the convolution's own ``padding=1`` does without
  copying its input (``SameConv2d`` pads through ``F.pad``, a full copy, before every depthwise
  convolution). Stride-2 layers (conv0 and two trunk blocks) keep the asymmetric SAME pad.
- **The k=1 "depthwise" layers are scales.** Layers 4 and 5 of each stage branch are a 1x1
  depthwise convolution (one factor per channel, no bias) then a pointwise one: folded into the
  pointwise weights, ``W @ (s * x) + b == (W * s) @ x + b``.
- **Both branches of a stage as one.** Each stage runs its PAF branch (L1) and its confidence-map
  branch (L2) on the same input. Here their channels travel together, ``[PAF | heatmap]``:
  depthwise layers over both branches' channels at once, pointwise layers as grouped convolutions
  (``groups=2``: each branch sees only its own channels), and the last layer writes
  ``[38 PAFs | 19 heatmaps]``, which is exactly the head of the next stage's input
  (``cat(pafs, heatmaps, features)``), so a stage's input is one concat of two tensors.
- **The stage input read once** (``share_stage_input``, for GPUs, where moving bytes is the cost):
  both branches' first depthwise convolutions over the 864/921-channel stage input become one
  depthwise convolution with channel multiplier 2 (output channel ``2c + b`` is branch b's
  channel c) and the first pointwise layer reads that interleaved tensor with zeros where a branch
  does not look. That doubles the first pointwise layer's multiply-adds, which costs more than
  it saves where arithmetic is the limit (CPUs): off there.

forward(x: float32[N, 3, H, W], BGR 0..255) -> (heatmaps float32[N, 19, ceil(H/8), ceil(W/8)],
pafs float32[N, 38, ...]) as :class:`.MobilenetThin`; both are views into one [N, 57, ...] tensor.
Inference only: the module holds copies of the weights, not the network's parameters.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .mobilenet_thin import _FEATURE_BLOCKS, NUM_PAFS, MobilenetThin, SameConv2d, SeparableConv, _same_max_pool_2x2


def _conv(weight: torch.Tensor, bias: torch.Tensor | None, *, groups: int = 1, padding: int = 0) -> nn.Conv2d:
    """An nn.Conv2d holding copies of ``weight`` [O, I/groups, kh, kw] and ``bias`` [O]."""
    out_channels, in_per_group, kh, kw = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_channels, (kh, kw), padding=padding, groups=groups,
                     bias=bias is not None)
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    return conv


def _scaled_pointwise(layer: SeparableConv) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a SeparableConv with a 1x1 depthwise scale, the scale folded into the pointwise weight."""
    scale = layer.depthwise.weight.detach().reshape(1, -1, 1, 1)  # [C, 1, 1, 1] -> [1, C, 1, 1]
    return layer.pointwise.weight.detach() * scale, layer.pointwise.bias.detach()


def _block_diagonal(weights: list[torch.Tensor], interleave: bool = False) -> torch.Tensor:
    """A pointwise weight [sum O_b, sum I_b, 1, 1] in which branch b's rows see only branch b's input channels.

    interleave: the input channels alternate between the branches (``2c + b``) instead of following each other.
    """
    rows = sum(w.shape[0] for w in weights)
    columns = sum(w.shape[1] for w in weights)
    combined = weights[0].new_zeros(rows, columns, 1, 1)
    row = column = 0
    for branch, weight in enumerate(weights):
        out_channels, in_channels = weight.shape[:2]
        if interleave:
            combined[row:row + out_channels, branch::len(weights)] = weight
        else:
            combined[row:row + out_channels, column:column + in_channels] = weight
        row, column = row + out_channels, column + in_channels
    return combined


class _TidyStage(nn.Module):
    """One OpenPose stage, both branches at once: stage input -> [N, 38 + 19, h, w] ([PAFs | heatmaps])."""

    def __init__(self, paf_branch: nn.Sequential, heatmap_branch: nn.Sequential, share_input: bool):
        super().__init__()
        branches = (paf_branch, heatmap_branch)
        first = [branch[0] for branch in branches]
        self.share_input = share_input
        if share_input:  # one depthwise conv with channel multiplier 2: output 2c + b is branch b's channel c
            depthwise = torch.stack([layer.depthwise.weight.detach() for layer in first], dim=1).flatten(0, 1)
            self.first_depthwise = _conv(depthwise, None, groups=depthwise.shape[0] // 2, padding=1)
            self.first_pointwise = _conv(_block_diagonal([layer.pointwise.weight.detach() for layer in first],
                                                         interleave=True),
                                         torch.cat([layer.pointwise.bias.detach() for layer in first]))
        else:  # each branch's own depthwise and pointwise conv, reading the input once each
            self.branch_depthwise = nn.ModuleList(_conv(layer.depthwise.weight.detach(), None,
                                                        groups=layer.depthwise.groups, padding=1) for layer in first)
            self.branch_pointwise = nn.ModuleList(_conv(layer.pointwise.weight.detach(), layer.pointwise.bias.detach())
                                                  for layer in first)
        # Layers 2 and 3: 3x3 depthwise over both branches' channels, grouped pointwise.
        self.middle = nn.ModuleList()
        for index in (1, 2):
            layers = [branch[index] for branch in branches]
            depthwise = torch.cat([layer.depthwise.weight.detach() for layer in layers])
            pointwise = torch.cat([layer.pointwise.weight.detach() for layer in layers])
            self.middle.append(nn.ModuleList([
                _conv(depthwise, None, groups=depthwise.shape[0], padding=1),
                _conv(pointwise, torch.cat([layer.pointwise.bias.detach() for layer in layers]), groups=2)]))
        # Layer 4: the 1x1 depthwise scale folded, grouped pointwise. Layer 5: folded, one conv writing
        # [PAFs | heatmaps] (the branches' outputs differ in size, so a block-diagonal weight, not groups).
        fourth = [_scaled_pointwise(branch[3]) for branch in branches]
        self.fourth = _conv(torch.cat([w for w, _ in fourth]), torch.cat([b for _, b in fourth]), groups=2)
        fifth = [_scaled_pointwise(branch[4]) for branch in branches]
        self.last = _conv(_block_diagonal([w for w, _ in fifth]), torch.cat([b for _, b in fifth]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.share_input:
            x = F.relu(self.first_pointwise(self.first_depthwise(x)), inplace=True)
        else:
            x = torch.cat([F.relu(pointwise(depthwise(x)), inplace=True)
                           for depthwise, pointwise in zip(self.branch_depthwise, self.branch_pointwise)], dim=1)
        for depthwise, pointwise in self.middle:
            x = F.relu(pointwise(depthwise(x)), inplace=True)
        return self.last(F.relu(self.fourth(x), inplace=True))


class TidyMobilenetThin(nn.Module):
    """See the module docstring. Build with :meth:`from_network`."""

    def __init__(self, network: MobilenetThin, share_stage_input: bool):
        super().__init__()
        self.conv0 = _copy_same_conv(network.conv0)
        self.trunk = nn.ModuleList()
        for block in network.trunk:
            stride = block.depthwise.stride[0]
            depthwise = (_copy_same_conv(block.depthwise) if stride != 1 else
                         _conv(block.depthwise.weight.detach(), None, groups=block.depthwise.groups, padding=1))
            self.trunk.append(nn.ModuleList([depthwise, _conv(block.pointwise.weight.detach(),
                                                              block.pointwise.bias.detach())]))
        self.stages = nn.ModuleList(_TidyStage(paf, heatmap, share_stage_input)
                                    for paf, heatmap in zip(network.paf_stages, network.heatmap_stages))

    @classmethod
    def from_network(cls, network: MobilenetThin, *, share_stage_input: bool = False) -> "TidyMobilenetThin":
        """The tidy form of a loaded network, on the network's device and dtype, in eval mode.

        share_stage_input: read each stage's input once (GPUs); see the module docstring.
        """
        parameter = next(network.parameters())
        with torch.no_grad():
            tidy = cls(network, share_stage_input)
        return tidy.to(device=parameter.device, dtype=parameter.dtype).eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv0(x), inplace=True)
        kept = {}
        for index, (depthwise, pointwise) in enumerate(self.trunk, start=1):
            x = F.relu(pointwise(depthwise(x)), inplace=True)
            if index in _FEATURE_BLOCKS:
                kept[index] = x
        features = torch.cat([_same_max_pool_2x2(kept[3]), kept[7], kept[11]], dim=1)
        out = self.stages[0](features)
        for stage in self.stages[1:]:
            out = stage(torch.cat([out, features], dim=1))
        return out[:, NUM_PAFS:], out[:, :NUM_PAFS]


_FORMS: "weakref.WeakKeyDictionary[MobilenetThin, dict]" = weakref.WeakKeyDictionary()


def inference_form(network: MobilenetThin, device: torch.device) -> TidyMobilenetThin:
    """The tidy form of ``network`` for running on ``device`` (the registry's inference_form).

    Stage inputs are read once on CUDA only (see the module docstring: it doubles the first
    pointwise layer's arithmetic, which CPUs pay for). Built once per network and form: estimators
    sharing a network (``with_config``) share its tidy form, and with it OpenVINO's compiled model.
    The form is on the network's device and dtype (the engine moves the network before asking).
    """
    device = torch.device(device)
    parameters = list(network.parameters())
    # A form holds copies: it is made again when the network's weights changed since (in place:
    # load_state_dict bumps each tensor's version) or moved to another device or dtype.
    key = (device.type == "cuda", str(parameters[0].device), parameters[0].dtype,
           tuple(p._version for p in parameters))
    forms = _FORMS.setdefault(network, {})
    if key not in forms:
        forms.clear()
        forms[key] = TidyMobilenetThin.from_network(network, share_stage_input=key[0]).to(
            memory_format=torch.channels_last)
    return forms[key]


def _copy_same_conv(conv: SameConv2d) -> SameConv2d:
    copy = SameConv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], groups=conv.groups,
                      bias=conv.bias is not None)
    copy.load_state_dict(conv.state_dict())
    return copy
