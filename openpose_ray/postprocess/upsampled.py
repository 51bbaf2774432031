"""Upsampled fields without upsampling them: OpenCV's resize and Gaussian blur as small separable matrices.

Decoding needs the stride-8 fields at ``factor`` times their resolution, but
only in two ways: the smoothed heatmaps everywhere (for the peak search) and
the PAFs (and unsmoothed heatmaps) at a few hundred points. Both operations
are linear and separable, so

- the smoothed upsampled heatmap of a channel is ``L_y @ h @ L_x.T``, where
  ``L = blur @ resize`` per axis: two small matrix products (BLAS) instead of
  a cubic resize of every pixel and a 19-tap blur in each direction;
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


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 matrix product on torch's CPU thread pool: numpy's BLAS has a pool of its own, and the two
    spinning against each other between the network and post-processing of a frame doubled both times
    (measured: post-processing 12.7 ms after a forward against 5 ms alone on 2 cores)."""
    import torch

    return torch.matmul(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b))).numpy()


def upsampled_values(fields: np.ndarray, factor: int, interpolation: str, channel: np.ndarray, y: np.ndarray,
                     x: np.ndarray) -> np.ndarray:
    """float32[...]: ``upsample(fields)[channel, y, x]`` from the k x k taps of each point (for a few points;
    :class:`UpsampledField` for many)."""
    rows = resize_taps(fields.shape[1], factor, interpolation)
    cols = resize_taps(fields.shape[2], factor, interpolation)
    taps = fields[channel[..., None, None], rows[0][y][..., :, None], cols[0][x][..., None, :]]
    return np.einsum("...ij,...i,...j->...", taps, rows[1][y], cols[1][x]).astype(np.float32)


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
        """float32[...]: the upsampled field at integer pixels (channel, y, x) of equal shapes."""
        if self._along_x is None and np.size(channel) <= _DIRECT_MAX_POINTS:
            return upsampled_values(self.fields, self.factor, self.interpolation, channel, y, x)
        if self._along_x is None:
            width = self.fields.shape[2]
            columns = _dense(*resize_taps(width, self.factor, self.interpolation), width).T.astype(np.float32)
            self._along_x = _matmul(self.fields.astype(np.float32, copy=False), columns)
        row_index, row_weight = resize_taps(self.fields.shape[1], self.factor, self.interpolation)
        taps = self._along_x[channel[..., None], row_index[y], x[..., None]]
        return (taps * row_weight[y].astype(np.float32)).sum(-1)
