"""Upsampled fields without upsampling them: OpenCV's resize and Gaussian blur as small separable matrices.

Decoding needs the stride-8 fields at ``factor`` times their resolution, but
only in two ways: the smoothed heatmaps everywhere (for the peak search) and
the PAFs (and unsmoothed heatmaps) at a few hundred points. Both operations
are linear and separable, so

- the smoothed upsampled heatmap of a channel is ``L_y @ h @ L_x.T``, where
  ``L = blur @ resize`` per axis: two small matrix products (BLAS) instead of
  a cubic resize of every pixel and a 19-tap blur in each direction; and the
  peak search needs only the pixels that can pass its threshold, which a
  bound from ``|h|`` confines to a box per channel
  (:func:`smoothed_upsampled_above`);
- a value of the upsampled field at an integer pixel (X, Y) is the sum of its
  4 x 4 taps (cubic; 2 x 2 linear, 1 nearest) with the weights cv2.resize
  uses: 16 multiply-adds per point instead of upsampling 38 channels.

The matrices reproduce ``cv2.resize`` (half-pixel aligned, cubic a = -0.75,
replicated border; linear clamped at the border; nearest ``floor(X / factor)``)
and ``cv2.GaussianBlur`` (``getGaussianKernel``, zero outside the field), so
values agree with :func:`.peaks.upsample` and :func:`.peaks.smooth` to float
rounding (measured max abs difference 2e-7 on real fields). Shapes: fields
``[C, h, w]``; upsampled pixels ``[C, factor*h, factor*w]``.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

_CUBIC_A = -0.75  # OpenCV's (and PyTorch's) cubic convolution constant


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """float64[n, 4]: weights of the samples at offsets -1, 0, 1, 2 for fractional positions t in [0, 1)."""
    a = _CUBIC_A
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    return np.stack([w0, w1, w2, 1 - w0 - w1 - w2], axis=-1)


@functools.lru_cache(maxsize=128)
def resize_taps(size: int, factor: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """(index int64[factor*size, k], weight float64[factor*size, k]): the source samples of each
    output pixel of ``cv2.resize`` along one axis of ``size`` pixels, k = 4 (cubic), 2 (linear), 1 (nearest)."""
    out = np.arange(factor * size)
    if interpolation == "nearest":
        return np.minimum(out // factor, size - 1)[:, None], np.ones((len(out), 1))
    x = (out + 0.5) / factor - 0.5
    if interpolation == "linear":  # OpenCV clamps the position itself at the borders
        left = np.floor(x).astype(np.int64)
        t = x - left
        t = np.where(left < 0, 0.0, np.where(left >= size - 1, 0.0, t))
        left = np.clip(left, 0, size - 1)
        return np.stack([left, np.minimum(left + 1, size - 1)], 1), np.stack([1 - t, t], 1)
    left = np.floor(x).astype(np.int64)
    index = np.clip(left[:, None] + np.arange(-1, 3)[None, :], 0, size - 1)  # replicated border
    return index, _cubic_weights(x - left)


def _dense(index: np.ndarray, weight: np.ndarray, size: int) -> np.ndarray:
    matrix = np.zeros((len(index), size))
    np.add.at(matrix, (np.repeat(np.arange(len(index)), index.shape[1]), index.ravel()), weight.ravel())
    return matrix


@functools.lru_cache(maxsize=128)
def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """float64[size, size]: cv2.GaussianBlur along one axis with zeros outside (BORDER_CONSTANT)."""
    radius = int(np.ceil(3 * sigma))
    kernel = cv2.getGaussianKernel(2 * radius + 1, sigma, cv2.CV_64F)[:, 0]
    matrix = np.zeros((size, size))
    for offset, tap in zip(range(-radius, radius + 1), kernel):
        rows = np.arange(max(0, -offset), min(size, size - offset))
        matrix[rows, rows + offset] = tap
    return matrix


@functools.lru_cache(maxsize=128)
def _smooth_upsample_operators(height: int, width: int, factor: int, interpolation: str,
                               sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(L_y float32[factor*h, h], L_x^T float32[w, factor*w]) with L = blur @ resize per axis."""
    ops = []
    for size in (height, width):
        resize = _dense(*resize_taps(size, factor, interpolation), size)
        ops.append(resize if sigma <= 0 else _blur_matrix(factor * size, sigma) @ resize)
    return ops[0].astype(np.float32), np.ascontiguousarray(ops[1].T.astype(np.float32))


def smoothed_upsampled(fields: np.ndarray, factor: int, interpolation: str, sigma: float,
                       out: np.ndarray | None = None) -> np.ndarray:
    """float32[C, h, w] -> float32[C, factor*h, factor*w]: ``smooth(upsample(fields))`` as two matrix products.

    out: where to write it (any float32 view of that shape), e.g. inside a padded buffer.
    """
    _, height, width = fields.shape
    left, right = _smooth_upsample_operators(height, width, factor, interpolation, float(sigma))
    result = _matmul(_matmul(left, fields.astype(np.float32, copy=False)), right)
    if out is None:
        return result
    out[...] = result
    return out


@functools.lru_cache(maxsize=128)
def _operator_gains(height: int, width: int, factor: int, interpolation: str, sigma: float) -> tuple[np.ndarray, ...]:
    """(|L_y| float32[factor*h, h], |L_x^T| float32[w, factor*w], g_y, g_x): the absolute operators and their
    largest row sums (how much an output pixel can exceed the largest |input| it is made of; ~1.02 for cubic)."""
    left, right = _smooth_upsample_operators(height, width, factor, interpolation, sigma)
    abs_left, abs_right = np.abs(left), np.ascontiguousarray(np.abs(right))
    return abs_left, abs_right, float(abs_left.sum(1).max()), float(abs_right.sum(0).max())


def smoothed_upsampled_above(fields: np.ndarray, factor: int, interpolation: str, sigma: float,
                             floor: float) -> list[tuple[int, int, int, np.ndarray]]:
    """The parts of ``smoothed_upsampled(fields, ...)`` that may reach ``floor``, and nothing else.

    Returns [(channel, y0, x0, block float32[rows, cols])], at most one box per
    channel: every upsampled pixel outside the boxes is provably below
    ``floor`` in absolute value. The bound: a pixel (Y, X) of a channel is
    ``sum_i L_y[Y, i] sum_j h[i, j] L_x[X, j]``, so it is at most
    ``sum_i |L_y[Y, i]| max_j |h[i, j]| * g_x`` (rows) and the same by columns;
    the box spans the rows and the columns whose bound reaches the floor. A
    network's heatmaps are near zero away from people, so on the shared photos
    the boxes hold ~15% of the pixels and the search costs a fraction of the
    whole-field one, with the same peaks.
    """
    _, height, width = fields.shape
    fields = np.ascontiguousarray(fields, dtype=np.float32)
    left, right = _smooth_upsample_operators(height, width, factor, interpolation, float(sigma))
    abs_left, abs_right, gain_y, gain_x = _operator_gains(height, width, factor, interpolation, float(sigma))
    magnitude = np.abs(fields)
    # [C, factor*h] and [C, factor*w]; the 1% margin covers float rounding of the products below
    row_bound = (magnitude.max(2) @ abs_left.T) * (gain_x * 1.01)
    col_bound = (magnitude.max(1) @ abs_right) * (gain_y * 1.01)
    y0, y1 = _first_and_end(row_bound >= floor)
    x0, x1 = _first_and_end(col_bound >= floor)
    present = np.flatnonzero((y1 > y0) & (x1 > x0))
    if present.size == 0:
        return []
    # The column product for all channels in one call, then each box's rows: small products, on one
    # BLAS thread, so that no pool of threads spins against the network's (see _matmul).
    with _one_blas_thread():
        along_x = fields[present] @ right  # [n, h, factor*w]
        return [(int(c), int(y0[c]), int(x0[c]), left[y0[c] : y1[c]] @ along_x[i, :, x0[c] : x1[c]])
                for i, c in enumerate(present)]


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread():
    """Context in which numpy's BLAS runs on the calling thread only (~20 us to enter)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _first_and_end(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, end) int64[C] of the True run spanning each row of bool[C, n] (first == end where none)."""
    any_true = mask.any(1)
    first = np.where(any_true, mask.argmax(1), 0)
    end = np.where(any_true, mask.shape[1] - mask[:, ::-1].argmax(1), 0)
    return first, end


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 matrix product on the calling thread only: a pool of BLAS threads spinning beside the
    network's own pool, in the same process or a neighbouring one, slowed both (measured: post-processing
    12.7 ms after a forward against 5 ms alone on 2 cores). numpy, not torch: the job's CPU workers
    group people without importing torch."""
    with _one_blas_thread():
        return np.matmul(a, b)


@functools.lru_cache(maxsize=128)
def _resize_taps32(size: int, factor: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    index, weight = resize_taps(size, factor, interpolation)
    return index, weight.astype(np.float32)


def upsampled_values(fields: np.ndarray, factor: int, interpolation: str, channel: np.ndarray, y: np.ndarray,
                     x: np.ndarray) -> np.ndarray:
    """float32[...]: ``upsample(fields)[channel, y, x]`` from the k x k taps of each point (for a few points;
    :class:`UpsampledField` for many). channel, y, x: integer arrays that broadcast together."""
    _, height, width = fields.shape
    row_index, row_weight = _resize_taps32(height, factor, interpolation)
    col_index, col_weight = _resize_taps32(width, factor, interpolation)
    # flat indices of the k x k taps: one gather from the raveled field
    flat = (channel * (height * width))[..., None, None] + (row_index[y] * width)[..., :, None] + col_index[x][..., None, :]
    taps = np.take(np.ascontiguousarray(fields, dtype=np.float32).reshape(-1), flat)
    return ((taps @ col_weight[x][..., :, None])[..., 0] * row_weight[y]).sum(-1)


# Below this many points a value is summed from its k x k taps in the network's field; above it
# the field is first upsampled along x (one matrix product, ~1 ms for 38 channels at 432x368) and
# each value sums k taps (measured on the 24 shared photos: the crossover is near 2e4 points).
_DIRECT_MAX_POINTS = 20_000


class UpsampledField:
    """Values of ``upsample(fields, factor, interpolation)`` at chosen pixels, computed from ``fields``.

    fields: float32[C, h, w] (not copied, not modified); ``shape`` is the
    upsampled one, (C, factor*h, factor*w).
    """

    def __init__(self, fields: np.ndarray, factor: int, interpolation: str):
        channels, height, width = fields.shape
        self.fields, self.factor, self.interpolation = fields, factor, interpolation
        self.shape = (channels, factor * height, factor * width)
        self._along_x: np.ndarray | None = None  # float32[C, h, factor*w], made when many points are asked

    def at(self, channel: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """float32[...]: the upsampled field at integer pixels (channel, y, x), arrays that broadcast together."""
        points = int(np.prod(np.broadcast_shapes(np.shape(channel), np.shape(y), np.shape(x))))
        if self._along_x is None and points <= _DIRECT_MAX_POINTS:
            return upsampled_values(self.fields, self.factor, self.interpolation, channel, y, x)
        if self._along_x is None:
            width = self.fields.shape[2]
            columns = _dense(*resize_taps(width, self.factor, self.interpolation), width).T.astype(np.float32)
            self._along_x = _matmul(self.fields.astype(np.float32, copy=False), columns)
        row_index, row_weight = resize_taps(self.fields.shape[1], self.factor, self.interpolation)
        taps = self._along_x[channel[..., None], row_index[y], x[..., None]]
        return (taps * row_weight[y].astype(np.float32)).sum(-1)
