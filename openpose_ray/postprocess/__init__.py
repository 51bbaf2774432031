"""OpenPose post-processing: fields -> peaks -> scored, matched limbs -> people.

Pure numpy (OpenCV's array filters for resize/blur/dilate); no Ray, no files.
:mod:`openpose_ray.postprocess.device` does the field work (upsampling,
smoothing, peaks, limb scoring) for batches on a torch device, next to the
network, and hands back the same :class:`Peaks` and :class:`LimbCandidates`,
so matching and assembly are shared. Every threshold comes from a
:class:`~openpose_ray.config.PostprocessConfig`.
"""

from __future__ import annotations

import numpy as np

from ..config import PostprocessConfig
from ..skeleton import Skeleton
from .assembly import assemble
from .limbs import LimbCandidates, LimbMatches, match_limbs, score_limbs
from .peaks import Peaks, find_peaks, find_peaks_in_fields, upsample
from .upsampled import UpsampledField

__all__ = ["Peaks", "LimbCandidates", "LimbMatches", "UpsampledField", "group_fields", "group_peaks", "group_candidates",
           "find_peaks", "find_peaks_in_fields",
           "match_limbs", "score_limbs", "upsample"]


def group_candidates(peaks: Peaks, candidates: LimbCandidates, skeleton: Skeleton,
                      config: PostprocessConfig) -> list[tuple[np.ndarray, float]]:
    """Match scored limb candidates and assemble people.

    peaks: sorted by (part, y, x); candidates: index into ``peaks``. Returns
    [(keypoints float32[K, 3] as x, y in upsampled-field pixels and confidence,
    0 for missing parts; person score)].
    """
    people = []
    for peak_ids, score in assemble(peaks, match_limbs(candidates, skeleton.num_limbs), skeleton, config):
        keypoints = np.zeros((skeleton.num_parts, 3), np.float32)
        found = peak_ids >= 0
        keypoints[found, :2] = peaks.xy[peak_ids[found]]
        keypoints[found, 2] = peaks.score[peak_ids[found]]
        people.append((keypoints, score))
    return people


def group_peaks(peaks: Peaks, pafs_up, skeleton: Skeleton, config: PostprocessConfig) -> list[tuple[np.ndarray, float]]:
    """Group peaks into people using upsampled PAFs float32[2L, H, W] (or an UpsampledField).

    Returns what :func:`group_candidates` returns. The result does not depend
    on the order of the peaks: they are put in (part, y, x) order first, so
    every tie is broken by position.
    """
    order = np.lexsort((peaks.xy[:, 0], peaks.xy[:, 1], peaks.part))
    peaks = Peaks(peaks.part[order], peaks.xy[order], peaks.score[order])
    return group_candidates(peaks, score_limbs(peaks, pafs_up, skeleton, config), skeleton, config)


def group_fields(heatmaps: np.ndarray, pafs: np.ndarray, skeleton: Skeleton, config: PostprocessConfig) -> list[tuple[np.ndarray, float]]:
    """The people in one frame's raw fields (OpenPose's grouping: peaks, limbs, assembly).

    heatmaps: float32[K+1, h, w], pafs: float32[2L, h, w] at the network's
    stride. Returns [(keypoints float32[K, 3] in upsampled-field pixels, score)];
    map them to the source image with ``ResizeTransform.to_source(xy,
    field_stride=stride / config.upsample)``.
    """
    if config.upsample_whole_fields:
        heat_up = upsample(heatmaps[: skeleton.num_parts], config.upsample, config.upsample_interpolation)
        pafs_up = upsample(pafs, config.upsample, config.upsample_interpolation)
        return group_peaks(find_peaks(heat_up, config, skeleton.num_parts), pafs_up, skeleton, config)
    peaks = find_peaks_in_fields(heatmaps, config, skeleton.num_parts)
    return group_peaks(peaks, UpsampledField(pafs, config.upsample, config.upsample_interpolation), skeleton, config)
