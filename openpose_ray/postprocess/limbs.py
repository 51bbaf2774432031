"""PAF line-integral scoring of candidate limbs and greedy bipartite matching.

For one limb type with candidate parts A (n_a peaks) and B (n_b peaks), every
pair (a, b) is scored at once: ``paf_samples`` points are sampled on the
segment a->b (both ends included), the PAF there is dotted with the segment's
unit vector, and the pair is kept when enough samples are aligned and the mean
alignment, penalised for limbs longer than the length prior, is positive.
Matching then takes pairs in decreasing score, each peak at most once (the
OpenPose greedy matching; optimal enough for a bipartite graph whose good
edges rarely conflict, and what the reference results are measured with).

Scoring and matching meet in :class:`LimbCandidates` (the scored pairs of one
image), which the numpy scorer here and the batched torch scorer of
:mod:`openpose_ray.postprocess.device` both produce, so matching and assembly
are one code path whichever device scored the limbs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import PostprocessConfig
from ..skeleton import Skeleton
from .peaks import Peaks


@dataclass(frozen=True, eq=False)
class LimbMatches:
    """Accepted connections of one limb type.

    a, b: int64[M] indices into the Peaks arrays of the two ends; score: float32[M].
    """

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray


def score_candidates(xy_a: np.ndarray, xy_b: np.ndarray, paf_x: np.ndarray, paf_y: np.ndarray, config: PostprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Score every pair of end points.

    xy_a: float[n_a, 2], xy_b: float[n_b, 2] in field pixels; paf_x, paf_y:
    float32[H, W] PAF components of this limb. Returns (score float32[n_a, n_b],
    valid bool[n_a, n_b]).
    """
    a = np.repeat(xy_a, len(xy_b), axis=0)
    b = np.tile(xy_b, (len(xy_a), 1))
    score, valid = score_pairs(a, b, lambda pairs, sy, sx: (paf_x[sy, sx], paf_y[sy, sx]), paf_x.shape, config)
    return score.reshape(len(xy_a), len(xy_b)), valid.reshape(len(xy_a), len(xy_b))


def screening_samples(config: PostprocessConfig) -> np.ndarray | None:
    """Indices of the samples a pair is screened on before the rest, or None when screening cannot reject.

    A pair needs more than ``min_aligned_samples`` of ``paf_samples`` aligned,
    so it may fail at most ``paf_samples - min_aligned_samples - 1`` samples;
    one more spread along the limb, all failing, reject it whatever the others
    hold. Pairs joining different people fail nearly every sample, so most
    pairs cost those few samples instead of all of them, with the same result.
    """
    count = config.paf_samples - config.min_aligned_samples  # allowed failures + 1
    if count < 1 or count >= config.paf_samples:
        return None
    return np.unique(np.rint(np.linspace(0, config.paf_samples - 1, count + 2)[1:-1]).astype(np.int64))


def score_pairs(xy_a: np.ndarray, xy_b: np.ndarray, paf_at, field_shape: tuple[int, int],
                config: PostprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """The PAF line integral of M candidate limbs a -> b.

    xy_a, xy_b: float[M, 2] in field pixels; paf_at(pairs, sy, sx) -> (paf_x,
    paf_y), each float[m, s]: the PAF components of the limbs of pairs int64[m]
    (indices into the M) at their integer sample pixels sy, sx int64[m, s];
    field_shape: (H, W) of the field. Returns (score float32[M], valid bool[M]).
    Pairs rejected on the :func:`screening_samples` are invalid (their score is
    then that of the screening samples only).
    """
    height, width = field_shape
    delta = xy_b - xy_a  # [M, 2]
    length = np.sqrt((delta**2).sum(-1))
    unit = delta / np.maximum(length, 1e-12)[:, None]
    t = np.linspace(0.0, 1.0, config.paf_samples)

    def alignment(pairs: np.ndarray, samples: np.ndarray) -> np.ndarray:  # float[m, s]
        points = xy_a[pairs, None, :] + t[None, samples, None] * delta[pairs, None, :]
        sx = np.clip(np.rint(points[..., 0]).astype(np.int64), 0, width - 1)
        sy = np.clip(np.rint(points[..., 1]).astype(np.int64), 0, height - 1)
        paf_x, paf_y = paf_at(pairs, sy, sx)
        return paf_x * unit[pairs, None, 0] + paf_y * unit[pairs, None, 1]

    every_pair, every_sample = np.arange(len(xy_a)), np.arange(config.paf_samples)
    screen = screening_samples(config)
    if screen is None:
        samples = alignment(every_pair, every_sample)
        mean, aligned = samples.mean(-1), (samples > config.paf_sample_threshold).sum(-1)
    else:
        screened = alignment(every_pair, screen)
        mean, aligned = screened.mean(-1), (screened > config.paf_sample_threshold).sum(-1)
        passed = np.flatnonzero(aligned > 0)
        rest = alignment(passed, np.setdiff1d(every_sample, screen))
        mean[passed] = (screened[passed].sum(-1) + rest.sum(-1)) / config.paf_samples
        aligned[passed] += (rest > config.paf_sample_threshold).sum(-1)
    prior = np.minimum(0.0, config.limb_length_prior * height / np.maximum(length, 1e-12) - 1.0)
    score = mean + prior
    valid = (aligned > config.min_aligned_samples) & (score > 0) & (length > 1e-12)
    return score.astype(np.float32), valid


@dataclass(frozen=True, eq=False)
class LimbCandidates:
    """The scored candidate connections of one image, for every limb type.

    Only pairs that pass the PAF tests of :func:`score_candidates` are kept.
    limb: int64[M] limb index in skeleton order; a, b: int64[M] indices into the
    image's :class:`~openpose_ray.postprocess.peaks.Peaks` of the limb's two
    ends; score: float32[M]. Sorted by (limb, a, b).
    """

    limb: np.ndarray
    a: np.ndarray
    b: np.ndarray
    score: np.ndarray

    def of_limb(self, limb: int) -> slice:
        """The slice of the arrays holding one limb type's candidates."""
        start, stop = np.searchsorted(self.limb, [limb, limb + 1])
        return slice(int(start), int(stop))

    @staticmethod
    def empty() -> "LimbCandidates":
        empty = np.zeros(0, np.int64)
        return LimbCandidates(empty, empty, empty, np.zeros(0, np.float32))


def score_limbs(peaks: Peaks, pafs_up, skeleton: Skeleton, config: PostprocessConfig) -> LimbCandidates:
    """Score every candidate pair of every limb type (numpy), all limbs at once.

    peaks: sorted by (part, y, x); pafs_up: float32[2L, H, W] upsampled PAFs, or
    an :class:`~.upsampled.UpsampledField` of the network's PAFs (sampled at
    the limbs' points only). :func:`openpose_ray.postprocess.device.score_limbs_torch`
    does the same for a batch of images on a torch device.
    """
    limbs, a_ids, b_ids = [], [], []
    bounds = np.searchsorted(peaks.part, np.arange(skeleton.num_parts + 1))  # peaks are sorted by part
    for limb, (part_a, part_b) in enumerate(skeleton.limb_part_indices()):
        idx_a, idx_b = np.arange(bounds[part_a], bounds[part_a + 1]), np.arange(bounds[part_b], bounds[part_b + 1])
        limbs.append(np.full(idx_a.size * idx_b.size, limb, np.int64))
        a_ids.append(np.repeat(idx_a, idx_b.size))  # row-major pairs: sorted by (a, b)
        b_ids.append(np.tile(idx_b, idx_a.size))
    limb, a, b = np.concatenate(limbs), np.concatenate(a_ids).astype(np.int64), np.concatenate(b_ids).astype(np.int64)
    if limb.size == 0:
        return LimbCandidates.empty()
    channels = skeleton.limb_paf_channels()[limb]  # [M, 2]: x and y channel of each pair's limb

    def paf_at(pairs: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # x and y components in one call: channel [2, m, 1] against points [1, m, s] (broadcast, not copied)
        channel = channels[pairs].T[:, :, None]
        values = pafs_up[channel, sy[None], sx[None]] if isinstance(pafs_up, np.ndarray) else pafs_up.at(channel, sy[None], sx[None])
        return values[0], values[1]

    xy = peaks.xy.astype(np.float64)
    score, valid = score_pairs(xy[a], xy[b], paf_at, pafs_up.shape[1:], config)
    return LimbCandidates(limb[valid], a[valid], b[valid], score[valid])


def match_greedy(a: np.ndarray, b: np.ndarray, score: np.ndarray) -> LimbMatches:
    """Greedy maximum-score matching of one limb type's candidates.

    a, b: int64[M] peak indices of the candidate pairs; score: float32[M].
    Pairs are taken in decreasing score (ties by a, then b, so the result does
    not depend on anything but the scores); a peak is used at most once.
    """
    order = np.lexsort((b, a, -score))
    used_a: set[int] = set()
    used_b: set[int] = set()
    keep = []
    for i in order:
        pa, pb = int(a[i]), int(b[i])
        if pa in used_a or pb in used_b:
            continue
        used_a.add(pa)
        used_b.add(pb)
        keep.append(i)
    keep_idx = np.asarray(keep, dtype=np.int64)
    return LimbMatches(a[keep_idx].astype(np.int64), b[keep_idx].astype(np.int64), score[keep_idx].astype(np.float32))


def match_limbs(candidates: LimbCandidates, num_limbs: int) -> list[LimbMatches]:
    """Greedy matching of every limb type, in skeleton order."""
    matches = []
    for limb in range(num_limbs):
        part = candidates.of_limb(limb)
        matches.append(match_greedy(candidates.a[part], candidates.b[part], candidates.score[part]))
    return matches
