"""PAF line-integral scoring of candidate limbs and greedy bipartite matching.

For one limb type with candidate parts A (n_a peaks) and B (n_b peaks), every
pair (a, b) is scored at once: ``paf_samples`` points are sampled on the
segment a->b (both ends included), the PAF there is dotted with the segment's
unit vector, and the pair is kept when enough samples are aligned and the mean
alignment, penalised for limbs longer than the length prior, is positive.
Matching then takes pairs in decreasing score, each peak at most once (the
OpenPose greedy matching; optimal enough for a bipartite graph whose good
edges rarely conflict, and what the reference results are measured with).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import PostprocessConfig


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
    height, width = paf_x.shape
    delta = xy_b[None, :, :] - xy_a[:, None, :]  # [n_a, n_b, 2]
    length = np.sqrt((delta**2).sum(-1))
    unit = delta / np.maximum(length, 1e-12)[..., None]
    t = np.linspace(0.0, 1.0, config.paf_samples)
    samples = xy_a[:, None, None, :] + t[None, None, :, None] * delta[:, :, None, :]  # [n_a, n_b, S, 2]
    sx = np.clip(np.rint(samples[..., 0]).astype(np.int64), 0, width - 1)
    sy = np.clip(np.rint(samples[..., 1]).astype(np.int64), 0, height - 1)
    alignment = paf_x[sy, sx] * unit[:, :, None, 0] + paf_y[sy, sx] * unit[:, :, None, 1]
    aligned = (alignment > config.paf_sample_threshold).sum(-1)
    prior = np.minimum(0.0, config.limb_length_prior * height / np.maximum(length, 1e-12) - 1.0)
    score = alignment.mean(-1) + prior
    valid = (aligned > config.min_aligned_samples) & (score > 0) & (length > 1e-12)
    return score.astype(np.float32), valid


def match_greedy(score: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy maximum-score matching: (rows int64[M], cols int64[M], score float32[M]).

    Pairs are taken in decreasing score (ties by row, then column, so the result
    does not depend on anything but the scores); a row or column is used once.
    """
    rows, cols = np.nonzero(valid)
    order = np.lexsort((cols, rows, -score[rows, cols]))
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    keep = []
    for i in order:
        r, c = int(rows[i]), int(cols[i])
        if r in used_rows or c in used_cols:
            continue
        used_rows.add(r)
        used_cols.add(c)
        keep.append(i)
    keep_idx = np.asarray(keep, dtype=np.int64)
    return rows[keep_idx].astype(np.int64), cols[keep_idx].astype(np.int64), score[rows[keep_idx], cols[keep_idx]].astype(np.float32)


def match_limb(idx_a: np.ndarray, idx_b: np.ndarray, xy: np.ndarray, paf_x: np.ndarray, paf_y: np.ndarray, config: PostprocessConfig) -> LimbMatches:
    """Score and match one limb type between the peaks ``idx_a`` and ``idx_b`` (indices into ``xy``)."""
    if idx_a.size == 0 or idx_b.size == 0:
        empty = np.zeros(0, np.int64)
        return LimbMatches(empty, empty, np.zeros(0, np.float32))
    score, valid = score_candidates(xy[idx_a].astype(np.float64), xy[idx_b].astype(np.float64), paf_x, paf_y, config)
    rows, cols, kept = match_greedy(score, valid)
    return LimbMatches(idx_a[rows], idx_b[cols], kept)
