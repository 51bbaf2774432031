"""The result type of pose estimation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Person:
    """One detected person.

    keypoints: float32[K, 3] as x, y, confidence, in source-image pixels (pixel
        centres at integer coordinates, x right, y down). A part that was not
        found has all three values 0. K and the part order are those of the
        skeleton of the model (COCO-18 for the built-in models).
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
