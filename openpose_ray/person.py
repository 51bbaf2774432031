"""The result type of pose estimation, and people in source pixels from what the network found.

:func:`people_from_fields` (fields on the host) and :func:`people_from_peaks`
(peaks and limb candidates found on the inference device) are the last step
of every path: PoseEstimator.estimate and the job's post-processing stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .config import PostprocessConfig
from .postprocess import group_candidates, group_fields

if TYPE_CHECKING:
    from .frame_outputs import FramePeaks
    from .models.registry import ModelEntry
    from .preprocess import ResizeTransform


@dataclass(frozen=True, eq=False)
class Person:
    """One detected person.

    keypoints: float32[K, 3] as x, y, confidence, in source-image pixels (pixel
        centres at integer coordinates, x right, y down). A part that was not
        found has all three values 0. K and the part order are those of the
        skeleton of the model (``entry.skeleton``: COCO-18, or BODY_25).
    score: the OpenPose person score, the mean over the person's parts and
        limbs of the part confidences and limb PAF scores.
    """

    keypoints: np.ndarray
    score: float

    @property
    def num_parts(self) -> int:
        """How many parts were found."""
        return int(np.count_nonzero(self.keypoints[:, 2] > 0))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Person):
            return NotImplemented
        return self.score == other.score and np.array_equal(self.keypoints, other.keypoints)

    def __repr__(self) -> str:
        return f"Person(score={self.score:.3f}, parts={self.num_parts})"


def keypoints_bbox(keypoints: np.ndarray) -> np.ndarray:
    """float32[R, 4] as x, y, width, height: the tightest box around the found parts
    (confidence > 0) of float32[R, K, 3] keypoints; zeros for a person without parts."""
    found = keypoints[:, :, 2] > 0
    xy = keypoints[:, :, :2]
    low = np.where(found[..., None], xy, np.inf).min(1)
    high = np.where(found[..., None], xy, -np.inf).max(1)
    box = np.concatenate([low, high - low], axis=1)
    box[~found.any(1)] = 0.0
    return box.astype(np.float32)


def people_from_fields(heatmaps: np.ndarray, pafs: np.ndarray, transform: "ResizeTransform", entry: "ModelEntry",
                       config: PostprocessConfig) -> list[Person]:
    """People in source pixels from one frame's fields (valid region, at the model's stride)."""
    return to_source_people(group_fields(heatmaps, pafs, entry.skeleton, config), transform, entry, config)


def people_from_peaks(found: "FramePeaks", transform: "ResizeTransform", entry: "ModelEntry",
                      config: PostprocessConfig) -> list[Person]:
    """People in source pixels from one frame's device peaks and limb candidates."""
    return to_source_people(group_candidates(found.peaks, found.candidates, entry.skeleton, config), transform,
                            entry, config)


def to_source_people(grouped: list[tuple[np.ndarray, float]], transform: "ResizeTransform", entry: "ModelEntry",
                     config: PostprocessConfig) -> list[Person]:
    """Map grouped people (keypoints in upsampled-field pixels, see postprocess.group_fields) to source pixels."""
    field_stride = entry.input_spec.stride / config.upsample
    people = []
    for keypoints, score in grouped:
        out = keypoints.copy()
        found = out[:, 2] > 0
        out[found, :2] = transform.to_source(keypoints[found, :2], field_stride)
        people.append(Person(keypoints=out, score=float(score)))
    return people
