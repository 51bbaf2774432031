"""Network inputs made on the inference device from YUV 4:2:0 planes (``sources.decoder: yuv``).

What the decode tasks do on the CPU for ``decoder: cpu`` (swscale's YUV -> BGR, then
preprocess.resize_to_input), done here on a batch that is already on the device:

    y uint8[N, H, W], uv uint8[N, 2, ceil(H/2), ceil(W/2)]
      -> RGB float32[N, 3, H, W]: the standard matrix (sources.yuv.MATRICES), each chroma
         sample over its 2x2 luma block, rounded and clamped to 0-255 like an 8-bit frame
      -> per scale: resized to the transform's valid size (cubic, half-pixel aligned, no
         antialiasing: cv2.INTER_CUBIC's filter), rounded and clamped, padded right and
         bottom with the spec's pad value, in the spec's colour order
      -> uint8[N, h, w, 3], the same kind of input inference.normalize takes from the host.

The arithmetic is float32 whatever the network's precision. It differs from the CPU path
by rounding only: swscale's fixed-point conversion is biased about one level low, and
OpenCV's cubic filter works in fixed point (tests/test_device_pixels.py states the bounds).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .models.registry import InputSpec
from .postprocess.device import resize_torch
from .preprocess import ResizeTransform
from .sources.yuv import MATRICES

def rgb_from_yuv420(y: torch.Tensor, uv: torch.Tensor, matrix: str, full_range: bool) -> torch.Tensor:
    """y uint8[N, H, W], uv uint8[N, 2, ceil(H/2), ceil(W/2)] (U then V) -> RGB float32[N, 3, H, W], whole
    levels 0-255."""
    height, width = y.shape[-2:]
    kr, kb = MATRICES[matrix]
    kg = 1.0 - kr - kb
    luma = y.to(torch.float32)
    chroma = uv.to(torch.float32).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :height, :width]
    chroma = chroma - 128.0
    if not full_range:  # 16-235 luma, 16-240 chroma (128 +- 112) -> 0-255
        luma = (luma - 16.0) * (255.0 / 219.0)
        chroma = chroma * (255.0 / 224.0)
    cb, cr = chroma[:, 0], chroma[:, 1]
    red = luma + (2.0 * (1.0 - kr)) * cr
    blue = luma + (2.0 * (1.0 - kb)) * cb
    green = luma - (2.0 * kb * (1.0 - kb) / kg) * cb - (2.0 * kr * (1.0 - kr) / kg) * cr
    return torch.stack([red, green, blue], dim=1).round_().clamp_(0.0, 255.0)


# Source pixels converted at once: the float32 RGB frames and the upsampled chroma of a pass take ~20 bytes
# a pixel, so a pass stays near 1.3 GB whatever the batch (64 frames of 4K video would take ~11 GB at once).
PIXELS_PER_PASS = 1 << 26


def network_inputs(y: torch.Tensor, uv: torch.Tensor, matrix: str, full_range: bool,
                   transforms: Sequence[ResizeTransform], spec: InputSpec) -> list[torch.Tensor]:
    """The network input at each of ``transforms`` (frames of one size): uint8[N, h, w, 3] on y's device.

    y, uv: as :func:`rgb_from_yuv420`. Each transform's ``source_size`` must be the planes' (width, height).
    Converted in passes of at most PIXELS_PER_PASS source pixels (at least one frame).
    """
    source = (y.shape[-1], y.shape[-2])
    for transform in transforms:
        if tuple(transform.source_size) != source:
            raise ValueError(f"transform for a {transform.source_size} source, planes of {source}")
    per_pass = max(1, PIXELS_PER_PASS // (source[0] * source[1]))
    passes = [_inputs_of(y[start:start + per_pass], uv[start:start + per_pass], matrix, full_range, transforms, spec)
              for start in range(0, y.shape[0], per_pass)]
    return [torch.cat(scale) if len(scale) > 1 else scale[0] for scale in zip(*passes)]


def _inputs_of(y: torch.Tensor, uv: torch.Tensor, matrix: str, full_range: bool,
               transforms: Sequence[ResizeTransform], spec: InputSpec) -> list[torch.Tensor]:
    """:func:`network_inputs` of one pass."""
    rgb = rgb_from_yuv420(y, uv, matrix, full_range)
    source = (rgb.shape[-1], rgb.shape[-2])
    order = [0, 1, 2] if spec.color_order == "RGB" else [2, 1, 0]
    inputs = []
    for transform in transforms:
        resized = rgb
        if tuple(transform.valid_size) != source:
            resized = _resized(rgb, transform.valid_size, spec.interpolation)
        padded = _padded(resized, transform.input_size, float(spec.pad_value))
        inputs.append(padded[:, order].permute(0, 2, 3, 1).to(torch.uint8))
    return inputs


def _resized(rgb: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """float32[N, 3, H, W] -> [N, 3, size[1], size[0]], half-pixel aligned, whole levels 0-255."""
    return resize_torch(rgb, size, interpolation).round_().clamp_(0.0, 255.0)


def _padded(rgb: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    """[N, 3, h, w] padded right and bottom to [N, 3, size[1], size[0]] with ``value``."""
    height, width = rgb.shape[-2:]
    if (width, height) == tuple(size):
        return rgb
    return F.pad(rgb, (0, size[0] - width, 0, size[1] - height), value=value)
