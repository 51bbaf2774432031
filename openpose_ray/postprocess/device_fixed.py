"""Peaks and scored limb candidates of a batch in fixed-size device buffers: no data-dependent shape.

The GPU form of the CPU fast path (:mod:`.upsampled`, :func:`.peaks.find_peaks_in_fields`,
:func:`.limbs.score_limbs` on an :class:`~.upsampled.UpsampledField`), for a whole chunk of frames
next to the network. Every tensor's shape follows from the batch's shape and ``capacity`` alone, so
the work can be captured in a CUDA graph or compiled with static shapes, and the device
synchronises once per chunk: when the host reads the one packed result
(:func:`fixed_peaks_and_candidates` -> :func:`unpack`).

- Smoothed, upsampled heatmaps are ``L_y @ h @ L_x^T`` per channel (resize and Gaussian blur as
  two small matrix products, :func:`.upsampled._smooth_upsample_operators`): no 4x upsampled map
  is blurred pixel by pixel.
- The peak test (threshold, window maximum, the tie rule of :func:`.peaks.local_maxima`) is
  elementwise over the map (:func:`.device.peak_mask`: one fused kernel when compiled).
- Each (image, part) keeps at most ``capacity`` peaks, in raster order; the true count travels
  with them. An image with more peaks of some part than that is flagged (``unpack`` returns None
  for it) and the caller finds its peaks with the exact, data-dependent path
  (:func:`.device.peaks_and_candidates`), so results never depend on the capacity.
- Limbs are scored on every (slot of part A) x (slot of part B) pair of every limb type, slots
  beyond the count masked. The PAFs are never upsampled: a value at an upsampled pixel (X, Y) is
  the x-upsampled field (one matrix product) at X, summed over its k row taps at Y, which is what
  the CPU path's UpsampledField computes; peak scores likewise.

Values equal the CPU fast path's up to float rounding: the same operators, sample points computed
in float64 and rounded half to even, scores summed in float32 (the CPU path sums in float64).
Nothing here mutates its inputs. Coordinates: upsampled-field pixels, x right, y down, pixel
centres at integers.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..config import PostprocessConfig
from ..skeleton import Skeleton
from .device import limb_tables, peak_mask
from .limbs import LimbCandidates
from .peaks import Peaks
from .upsampled import _dense, _smooth_upsample_operators, resize_taps

# Peaks kept per (image, part) in a chunk's buffers. A part has a handful of peaks in a frame of a few
# people; only crowds exceed this (coco_val2017_mini: at most 11 of one part in an image at
# peak_threshold 0.05), and their images take the exact path. Pair work grows with its square.
PEAKS_PER_PART = 16


@functools.lru_cache(maxsize=32)
def _operators(height: int, width: int, factor: int, interpolation: str, sigma: float,
               device: torch.device) -> tuple[torch.Tensor, ...]:
    """On ``device``: (L_y float32[H, h], L_x^T float32[w, W]: smoothing + upsampling;
    R_x^T float32[w, W]: upsampling along x; row_index int64[H, k], row_weight float32[H, k]: upsampling
    along y as k taps per output row), H = factor*h, W = factor*w."""
    left, right = _smooth_upsample_operators(height, width, factor, interpolation, float(sigma))
    along_x = _dense(*resize_taps(width, factor, interpolation), width).T.astype(np.float32)
    row_index, row_weight = resize_taps(height, factor, interpolation)
    return tuple(torch.as_tensor(np.ascontiguousarray(a), device=device)
                 for a in (left, right, along_x, row_index, row_weight.astype(np.float32)))


@functools.lru_cache(maxsize=16)
def _sample_positions(samples: int, device: torch.device) -> torch.Tensor:
    """float64[S]: np.linspace(0, 1, S), numpy's values exactly (torch.linspace rounds differently)."""
    return torch.as_tensor(np.linspace(0.0, 1.0, samples), device=device)


def packed_width(skeleton: Skeleton, capacity: int = PEAKS_PER_PART) -> int:
    """Floats per frame of :func:`fixed_peaks_and_candidates`' result."""
    return skeleton.num_parts * (3 * capacity + 1) + len(skeleton.limbs) * capacity * capacity


def _at_rows(field_x: torch.Tensor, image: torch.Tensor, channel: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
             row_index: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
    """float32[...]: the upsampled field at (image, channel, y, x), from the x-upsampled field_x[N, C, h, W]
    and the k row taps of y (index tensors broadcast together)."""
    rows = row_index[y]  # [..., k]
    values = field_x[image[..., None], channel[..., None], rows, x[..., None]]
    return (values * row_weight[y]).sum(-1)


def peak_tables(height: int, width: int, skeleton: Skeleton, config: PostprocessConfig,
                device: torch.device) -> tuple[torch.Tensor, ...]:
    """The constant tensors :func:`packed_peaks` needs for fields of h x w on ``device`` (made once each)."""
    return (*_operators(height, width, config.upsample, config.upsample_interpolation, config.heatmap_sigma, device),
            *limb_tables(skeleton, device), _sample_positions(config.paf_samples, device))


def fixed_peaks_and_candidates(heatmaps: torch.Tensor, pafs: torch.Tensor, skeleton: Skeleton,
                               config: PostprocessConfig, capacity: int = PEAKS_PER_PART) -> torch.Tensor:
    """A chunk's peaks and scored limb candidates as one float32[N, packed_width] tensor on the device.

    heatmaps: [N, K+1, h, w], pafs: [N, 2L, h, w]: a chunk's fields at the network's stride, cropped
    to the frames' (equal) valid region, any float dtype; not modified. Per frame, in order:
    peaks float32[K, capacity, 3] (x, y, score; raster order within a part; slots beyond the count
    are zero), counts [K] (the true number of peaks of each part, may exceed capacity), pair scores
    [L, capacity, capacity] (score of the limb from slot i of part A to slot j of part B where it
    passes the PAF tests, else 0: a valid score is > 0). Read it with :func:`unpack`.
    """
    tables = peak_tables(*heatmaps.shape[-2:], skeleton, config, heatmaps.device)
    return packed_peaks(heatmaps, pafs, *tables, num_parts=skeleton.num_parts, config=config, capacity=capacity)


def packed_peaks(heatmaps: torch.Tensor, pafs: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                 along_x: torch.Tensor, row_index: torch.Tensor, row_weight: torch.Tensor, ends: torch.Tensor,
                 channels: torch.Tensor, t: torch.Tensor, *, num_parts: int, config: PostprocessConfig,
                 capacity: int) -> torch.Tensor:
    """:func:`fixed_peaks_and_candidates` with its constant tensors given (:func:`peak_tables`): tensors in,
    tensors out, every shape static, so torch.compile(fullgraph=True, dynamic=False) takes it whole."""
    num_images = heatmaps.shape[0]
    big_h, big_w = left.shape[0], right.shape[1]
    capacity = min(capacity, big_h * big_w)
    parts = heatmaps[:, :num_parts].float()
    smoothed = left @ parts @ right  # [N, K, H, W]
    is_peak = peak_mask(smoothed, config).flatten(2)
    count = is_peak.sum(-1)  # [N, K]
    # The `capacity` best peaks of each (image, part) (all of them where count <= capacity), then raster order.
    best = torch.where(is_peak, smoothed.flatten(2), float("-inf")).topk(capacity, dim=-1)
    pixel = torch.where(best.values > float("-inf"), best.indices, big_h * big_w).sort(-1).values
    present = pixel < big_h * big_w  # [N, K, C]
    pixel = pixel.clamp_max(big_h * big_w - 1)
    y, x = pixel // big_w, pixel % big_w
    image = torch.arange(num_images, device=heatmaps.device)[:, None, None]
    part = torch.arange(num_parts, device=heatmaps.device)[None, :, None]
    score = _at_rows(parts @ along_x, image, part, y, x, row_index, row_weight)
    peaks = torch.stack([x.float(), y.float(), score], -1) * present[..., None]

    # [N, L, C, 1] first ends against [N, L, 1, C] second ends
    ya, xa, pa = y[:, ends[:, 0], :, None], x[:, ends[:, 0], :, None], present[:, ends[:, 0], :, None]
    yb, xb, pb = y[:, ends[:, 1], None, :], x[:, ends[:, 1], None, :], present[:, ends[:, 1], None, :]
    dx, dy = (xb - xa).double(), (yb - ya).double()
    length = torch.sqrt(dx * dx + dy * dy)
    safe_length = length.clamp_min(1e-12)
    ux, uy = (dx / safe_length).float()[..., None], (dy / safe_length).float()[..., None]
    sx = torch.round(xa.double()[..., None] + t * dx[..., None]).long().clamp_(0, big_w - 1)  # [N, L, C, C, S]
    sy = torch.round(ya.double()[..., None] + t * dy[..., None]).long().clamp_(0, big_h - 1)
    pafs_x = pafs.float() @ along_x  # [N, 2L, h, W]
    image = image[..., None, None]  # [N, 1, 1, 1, 1]
    limb_channels = channels[None, :, None, None, None, :]  # [1, L, 1, 1, 1, 2]
    paf_x = _at_rows(pafs_x, image, limb_channels[..., 0], sy, sx, row_index, row_weight)
    paf_y = _at_rows(pafs_x, image, limb_channels[..., 1], sy, sx, row_index, row_weight)
    alignment = paf_x * ux + paf_y * uy  # [N, L, C, C, S]
    aligned = (alignment > config.paf_sample_threshold).sum(-1)
    prior = (config.limb_length_prior * big_h / safe_length - 1.0).clamp_max(0.0)
    pair_score = (alignment.mean(-1).double() + prior).float()
    valid = (aligned > config.min_aligned_samples) & (pair_score > 0) & (length > 1e-12) & pa & pb
    pair_score = torch.where(valid, pair_score, 0.0)
    return torch.cat([peaks.reshape(num_images, -1), count.float(), pair_score.reshape(num_images, -1)], 1)


def unpack(packed: np.ndarray, skeleton: Skeleton, capacity: int = PEAKS_PER_PART
           ) -> list[tuple[Peaks, LimbCandidates] | None]:
    """Each frame's (Peaks, LimbCandidates) from the host copy of :func:`fixed_peaks_and_candidates`' result;
    None for a frame with more peaks of some part than ``capacity`` (find those with the exact path)."""
    num_parts, num_limbs = skeleton.num_parts, len(skeleton.limbs)
    peak_end = num_parts * capacity * 3
    peaks = packed[:, :peak_end].reshape(-1, num_parts, capacity, 3)
    counts = packed[:, peak_end : peak_end + num_parts].astype(np.int64)
    pairs = packed[:, peak_end + num_parts :].reshape(-1, num_limbs, capacity, capacity)
    ends = np.asarray(skeleton.limb_part_indices(), np.int64)
    slots = np.arange(capacity)
    results: list[tuple[Peaks, LimbCandidates] | None] = []
    for frame, count in enumerate(counts):
        if (count > capacity).any():
            results.append(None)
            continue
        part, slot = np.nonzero(slots[None, :] < count[:, None])  # sorted by (part, slot): raster order within a part
        found = peaks[frame, part, slot]
        first = np.cumsum(count) - count  # each part's first index in the frame's Peaks
        limb, i, j = np.nonzero(pairs[frame] > 0)  # sorted by (limb, i, j) = (limb, a, b)
        results.append((Peaks(part.astype(np.int64), np.ascontiguousarray(found[:, :2]), found[:, 2].copy()),
                        LimbCandidates(limb.astype(np.int64), first[ends[limb, 0]] + i, first[ends[limb, 1]] + j,
                                       pairs[frame, limb, i, j].astype(np.float32))))
    return results
