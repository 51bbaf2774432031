"""What the network stage hands post-processing for one frame: its fields, or its peaks and limb candidates.

numpy only, on purpose: these records travel from the inference actor (which
holds torch) to the job's CPU workers, and a worker that decodes, groups or
writes never imports torch (~1 s and ~180 MiB per worker process; see
tests/test_worker_imports.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .postprocess import LimbCandidates, Peaks


@dataclass(frozen=True, eq=False)
class FrameFields:
    """One frame's fields on the host, averaged over the scales, valid region only, at the network's stride.

    heatmaps: float32[K+1, h, w] (background last); pafs: float32[2L, h, w].
    """

    heatmaps: np.ndarray
    pafs: np.ndarray


@dataclass(frozen=True, eq=False)
class FramePeaks:
    """One frame's peaks and scored limb candidates, found on the inference device.

    Coordinates in upsampled-field pixels (``PostprocessConfig.upsample`` times
    the network's field resolution); group them into people with ``postprocess.group_candidates``.
    """

    peaks: Peaks
    candidates: LimbCandidates
