"""OpenPose field work for a batch of images on a torch device, next to the network.

What :mod:`.peaks` and :mod:`.limbs` do per image in numpy, done here for a
whole batch at once on the tensors' device (CPU or CUDA): upsampling, Gaussian
smoothing, non-maximum suppression, and the PAF line integral of every
candidate limb. Only the peaks and the limb candidates that pass the PAF tests
go to the host, a few kB per image instead of the fields. Greedy matching and
assembly stay in numpy (data-dependent and cheap).

Dtypes: every kernel follows its input's dtype (the Gaussian taps included),
so half-precision fields work as they come. Peak finding upcasts the stride-8
heatmaps to float32 first: with an 8- or 11-bit mantissa, neighbours near a
maximum become equal and the tie rule would move keypoints. PAFs are upsampled
in their own dtype and only the sampled values are upcast.

The results equal the numpy path's up to float rounding: the same cubic kernel
(a = -0.75, replicated borders), the same peak tie rule, the same sample points
on each candidate limb (computed in float64, as numpy does).

The device synchronises a fixed number of times per batch, never per image:
the peak count, the pair count, the kept pairs and one copy of everything to
the host. Nothing here mutates its inputs. Coordinates: upsampled-field pixels,
x right, y down, pixel centres at integers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PostprocessConfig
from ..skeleton import Skeleton
from .limbs import LimbCandidates
from .peaks import Peaks, earlier_neighbours

# The project's interpolation names (InputSpec.interpolation, PostprocessConfig.upsample_interpolation) as
# torch's modes; all but nearest and area take align_corners=False: half-pixel aligned, as OpenCV.
_TORCH_MODES = {"cubic": "bicubic", "linear": "bilinear", "nearest": "nearest", "area": "area"}


def _interpolation_options(interpolation: str) -> dict:
    mode = _TORCH_MODES[interpolation]
    return {"mode": mode} if mode in ("nearest", "area") else {"mode": mode, "align_corners": False}


def upsample_torch(fields: torch.Tensor, factor: int, interpolation: str = "cubic") -> torch.Tensor:
    """[N, C, h, w] -> [N, C, factor*h, factor*w] on the tensor's device, in its dtype.

    Half-pixel aligned like :func:`.peaks.upsample` (same cubic kernel, a = -0.75,
    and replicated borders), equal to it up to float rounding.
    """
    if factor == 1:
        return fields.clone()
    return F.interpolate(fields, scale_factor=factor, **_interpolation_options(interpolation))


def resize_torch(fields: torch.Tensor, size: tuple[int, int], interpolation: str = "cubic") -> torch.Tensor:
    """[N, C, h, w] -> [N, C, size[1], size[0]]: half-pixel aligned (cubic: cv2.INTER_CUBIC's geometry), no
    antialiasing."""
    return F.interpolate(fields, size=(size[1], size[0]), **_interpolation_options(interpolation))


@functools.lru_cache(maxsize=16)
def _gaussian_taps(sigma: float, channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[C, 1, 1, 2r+1] normalised Gaussian taps (cv2.getGaussianKernel's), made once per device and dtype."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = torch.as_tensor(taps / taps.sum(), dtype=dtype, device=device)
    return taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)


def smooth_torch(heatmaps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each channel of [N, C, H, W], zero outside the field, in its dtype."""
    if sigma <= 0:
        return heatmaps
    channels = heatmaps.shape[1]
    taps = _gaussian_taps(sigma, channels, heatmaps.device, heatmaps.dtype)
    radius = taps.shape[-1] // 2
    rows = F.conv2d(heatmaps, taps, padding=(0, radius), groups=channels)
    return F.conv2d(rows, taps.transpose(2, 3), padding=(radius, 0), groups=channels)


def peak_mask(smoothed: torch.Tensor, config: PostprocessConfig) -> torch.Tensor:
    """bool[N, C, H, W]: above the threshold and the maximum of its window.

    The tie rule of :func:`.peaks.local_maxima`: of a plateau of equal maxima
    only the first pixel in raster order is a peak.
    """
    pad = config.nms_window // 2
    maxed = F.max_pool2d(smoothed, config.nms_window, stride=1, padding=pad)
    is_peak = (smoothed == maxed) & (smoothed > config.peak_threshold)
    height, width = smoothed.shape[-2:]
    padded = F.pad(smoothed, (pad, pad, pad, pad), value=float("-inf"))
    for dy, dx in earlier_neighbours(config.nms_window):
        is_peak = is_peak & (smoothed > padded[..., dy : dy + height, dx : dx + width])
    return is_peak


@dataclass(frozen=True, eq=False)
class PeakTensors:
    """The peaks of a batch, flat and sorted by (image, part, y, x), on the device.

    image, part, y, x: int64[P]; score: float32[P], the unsmoothed heatmap value
    there; num_images: N.
    """

    image: torch.Tensor
    part: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    score: torch.Tensor
    num_images: int


def find_peak_tensors(heatmaps_up: torch.Tensor, config: PostprocessConfig) -> PeakTensors:
    """Peaks of every channel of upsampled heatmaps [N, K, H, W] (background channel removed)."""
    is_peak = peak_mask(smooth_torch(heatmaps_up, config.heatmap_sigma), config)
    image, part, y, x = torch.nonzero(is_peak, as_tuple=True)  # row-major: sorted by (image, part, y, x)
    return PeakTensors(image, part, y, x, heatmaps_up[image, part, y, x].float(), heatmaps_up.shape[0])


@dataclass(frozen=True, eq=False)
class CandidateTensors:
    """The limb candidates of a batch that pass the PAF tests, flat, on the device.

    limb, a, b: int64[M] limb index and the two ends as indices into the
    batch's :class:`PeakTensors`; score: float32[M]. Sorted by (limb, a, b).
    """

    limb: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    score: torch.Tensor


@functools.lru_cache(maxsize=16)
def limb_tables(skeleton: Skeleton, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ends int64[L, 2] part indices, channels int64[L, 2] PAF channels of x and y) on the device, made once."""
    return (torch.as_tensor(skeleton.limb_part_indices(), device=device),
            torch.as_tensor(skeleton.limb_paf_channels(), device=device))


def score_limbs_torch(peaks: PeakTensors, pafs_up: torch.Tensor, skeleton: Skeleton,
                      config: PostprocessConfig) -> CandidateTensors:
    """Score every candidate pair of every limb type in every image of the batch.

    pafs_up: [N, 2L, H, W] upsampled PAFs. The batched twin of
    :func:`.limbs.score_limbs`: pairs are only formed within one image.
    """
    device = pafs_up.device
    num_parts = skeleton.num_parts
    ends, channels = limb_tables(skeleton, device)
    # Peaks are sorted by (image, part): the peaks of one (image, part) are a contiguous run.
    run_key = peaks.image * num_parts + peaks.part
    run_length = torch.bincount(run_key, minlength=peaks.num_images * num_parts)
    run_start = torch.cumsum(run_length, 0) - run_length
    # Every (limb, first end) pair, then each repeated once per second end of the same image.
    limb, a = torch.nonzero(peaks.part[None, :] == ends[:, :1], as_tuple=True)
    b_run = peaks.image[a] * num_parts + ends[limb, 1]
    per_a = run_length[b_run]
    total = int(per_a.sum())
    limb = limb.repeat_interleave(per_a, output_size=total)
    a_first = (torch.cumsum(per_a, 0) - per_a).repeat_interleave(per_a, output_size=total)
    b = run_start[b_run].repeat_interleave(per_a, output_size=total) + torch.arange(total, device=device) - a_first
    a = a.repeat_interleave(per_a, output_size=total)
    score, valid = _line_integrals(peaks, a, b, pafs_up, channels[limb], config)
    keep = torch.nonzero(valid, as_tuple=True)[0]
    return CandidateTensors(limb[keep], a[keep], b[keep], score[keep])


def _line_integrals(peaks: PeakTensors, a: torch.Tensor, b: torch.Tensor, pafs_up: torch.Tensor,
                    channels: torch.Tensor, config: PostprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(score float32[M], valid bool[M]) of the pairs a -> b, as :func:`.limbs.score_candidates` computes them."""
    height, width = pafs_up.shape[-2:]
    # float64, as numpy computes them: a sample point exactly between two pixels rounds the same way
    xa, ya = peaks.x[a].double(), peaks.y[a].double()
    dx, dy = peaks.x[b].double() - xa, peaks.y[b].double() - ya
    length = torch.sqrt(dx * dx + dy * dy)
    safe_length = length.clamp_min(1e-12)
    ux, uy = (dx / safe_length).float(), (dy / safe_length).float()
    t = torch.linspace(0.0, 1.0, config.paf_samples, dtype=torch.float64, device=pafs_up.device)
    sx = torch.round(xa[:, None] + t * dx[:, None]).long().clamp_(0, width - 1)
    sy = torch.round(ya[:, None] + t * dy[:, None]).long().clamp_(0, height - 1)
    image = peaks.image[a][:, None]
    paf_x = pafs_up[image, channels[:, :1], sy, sx].float()
    paf_y = pafs_up[image, channels[:, 1:], sy, sx].float()
    alignment = paf_x * ux[:, None] + paf_y * uy[:, None]  # [M, S]
    aligned = (alignment > config.paf_sample_threshold).sum(-1)
    prior = (config.limb_length_prior * height / safe_length - 1.0).clamp_max(0.0).float()
    score = alignment.mean(-1) + prior
    valid = (aligned > config.min_aligned_samples) & (score > 0) & (length > 1e-12)
    return score, valid


def to_host(peaks: PeakTensors, candidates: CandidateTensors | None = None
            ) -> list[tuple[Peaks, LimbCandidates | None]]:
    """A batch's peaks (and limb candidates) on the host, per image, in one copy from the device.

    Candidate ends become indices into their image's Peaks.
    """
    columns = [peaks.image, peaks.part, peaks.x, peaks.y, peaks.score]
    if candidates is not None:
        columns += [candidates.limb, candidates.a, candidates.b, peaks.image[candidates.a], candidates.score]
    # float64 holds every index and float32 score exactly: one tensor, one copy, one synchronisation.
    flat = torch.cat([column.double() for column in columns]).cpu().numpy()
    count = len(peaks.image)
    image, part, x, y, score = flat[: 5 * count].reshape(5, count)
    xy = np.stack([x, y], axis=1).astype(np.float32)
    part, image, score = part.astype(np.int64), image.astype(np.int64), score.astype(np.float32)
    bounds = np.searchsorted(image, np.arange(peaks.num_images + 1))
    per_image = [Peaks(part[s:e], xy[s:e], score[s:e]) for s, e in zip(bounds[:-1], bounds[1:])]
    if candidates is None:
        return [(p, None) for p in per_image]
    limb, a, b, pair_image, pair_score = flat[5 * count :].reshape(5, -1)
    limb, a, b, pair_image = (v.astype(np.int64) for v in (limb, a, b, pair_image))
    order = np.argsort(pair_image, kind="stable")  # per image, keeping the (limb, a, b) order
    pair_bounds = np.searchsorted(pair_image[order], np.arange(peaks.num_images + 1))
    result = []
    for n, (s, e) in enumerate(zip(pair_bounds[:-1], pair_bounds[1:])):
        rows, first = order[s:e], bounds[n]
        result.append((per_image[n], LimbCandidates(limb[rows], a[rows] - first, b[rows] - first,
                                                    pair_score[rows].astype(np.float32))))
    return result


def peaks_and_candidates(heatmaps: torch.Tensor, pafs: torch.Tensor, skeleton: Skeleton,
                         config: PostprocessConfig) -> list[tuple[Peaks, LimbCandidates]]:
    """Each image's peaks and scored limb candidates, on the host, from a batch's fields on the device.

    heatmaps: [N, K+1, h, w] and pafs: [N, 2L, h, w] at the network's stride,
    cropped to the images' valid region, any float dtype. Peak work runs before
    the PAFs are upsampled, so at most one upsampled field is alive at a time;
    device memory grows with N, which the caller bounds (``inference.batch_size``).
    """
    parts = heatmaps[:, : skeleton.num_parts].float()
    heat_up = upsample_torch(parts, config.upsample, config.upsample_interpolation)
    peaks = find_peak_tensors(heat_up, config)
    del heat_up
    pafs_up = upsample_torch(pafs, config.upsample, config.upsample_interpolation)
    candidates = score_limbs_torch(peaks, pafs_up, skeleton, config)
    del pafs_up
    return to_host(peaks, candidates)
