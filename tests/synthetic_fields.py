"""Synthetic network fields: Gaussian blobs for parts and unit vectors along limbs, as OpenPose is trained to output.

Positions are stride-8 field pixels (project convention: pixel centres at
integer coordinates, x right, y down).
"""

from __future__ import annotations

import numpy as np

from openpose_ray.skeleton import COCO18, Skeleton

FIELD_SIZE = (60, 46)  # (width, height) of the stride-8 fields: a 480x368 input

# A standing figure facing the camera, in stride-8 field pixels relative to the
# neck. Every limb is shorter than the length prior (0.5 * field height).
STANDING_FIGURE: dict[str, tuple[float, float]] = {
    "nose": (0, -5), "neck": (0, 0),
    "r_shoulder": (-5, 0), "r_elbow": (-6, 7), "r_wrist": (-7, 13),
    "l_shoulder": (5, 0), "l_elbow": (6, 7), "l_wrist": (7, 13),
    "r_hip": (-3, 14), "r_knee": (-3, 22), "r_ankle": (-3, 30),
    "l_hip": (3, 14), "l_knee": (3, 22), "l_ankle": (3, 30),
    "r_eye": (-2, -7), "l_eye": (2, -7), "r_ear": (-4, -6), "l_ear": (4, -6),
}

# The same figure with BODY_25's extra parts: the mid-hip between the hips, and per foot the
# heel just below and inside the ankle, the big toe below it and the small toe outside the big toe.
STANDING_FIGURE_BODY25: dict[str, tuple[float, float]] = {
    **STANDING_FIGURE,
    "mid_hip": (0, 14),
    "l_big_toe": (4, 34), "l_small_toe": (7, 34), "l_heel": (2, 32),
    "r_big_toe": (-4, 34), "r_small_toe": (-7, 34), "r_heel": (-2, 32),
}

# Field x = k + 1/8 lands on the upsampled pixel centre 4k + 2 (and likewise for
# y), so a blob's upsampled maximum is one pixel, not a tie between two.
ON_UPSAMPLED_PIXEL = 1.0 / 8.0


def synthesize_fields(people: list[dict[str, tuple[float, float]]], size: tuple[int, int] = FIELD_SIZE,
                      skeleton: Skeleton = COCO18, *, sigma: float = 1.0, peak: float = 0.95,
                      paf_half_width: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Network-like fields for people given as {part name: (x, y)} in field pixels.

    Returns (heatmaps float32[K+1, h, w] with the background in the last channel,
    pafs float32[2L, h, w]). A blob of standard deviation ``sigma`` and height
    ``peak`` marks each part (overlapping blobs of one part keep the maximum); each
    limb whose two parts are given gets its unit vector on every pixel within
    ``paf_half_width`` of the segment (overlapping limbs of one type are averaged,
    as in the OpenPose ground truth).
    """
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    heatmaps = np.zeros((skeleton.num_parts + 1, height, width), np.float64)
    pafs = np.zeros((skeleton.num_paf_channels, height, width), np.float64)
    paf_count = np.zeros((skeleton.num_limbs, height, width), np.float64)
    for person in people:
        for name, (x, y) in person.items():
            part = skeleton.part_index(name)
            blob = peak * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
            heatmaps[part] = np.maximum(heatmaps[part], blob)
        for limb_id, limb in enumerate(skeleton.limbs):
            if limb.part_a not in person or limb.part_b not in person:
                continue
            a = np.asarray(person[limb.part_a], np.float64)
            b = np.asarray(person[limb.part_b], np.float64)
            length = np.linalg.norm(b - a)
            unit = (b - a) / length
            along = (xs - a[0]) * unit[0] + (ys - a[1]) * unit[1]
            across = np.abs((xs - a[0]) * unit[1] - (ys - a[1]) * unit[0])
            on_limb = (along >= 0) & (along <= length) & (across <= paf_half_width)
            pafs[limb.paf_x][on_limb] += unit[0]
            pafs[limb.paf_y][on_limb] += unit[1]
            paf_count[limb_id][on_limb] += 1
    for limb_id, limb in enumerate(skeleton.limbs):
        count = np.maximum(paf_count[limb_id], 1)
        pafs[limb.paf_x] /= count
        pafs[limb.paf_y] /= count
    heatmaps[-1] = 1.0 - heatmaps[:-1].max(axis=0)
    return heatmaps.astype(np.float32), pafs.astype(np.float32)


def figure_at(neck_x: float, neck_y: float, parts=None,
              figure: dict[str, tuple[float, float]] = STANDING_FIGURE) -> dict[str, tuple[float, float]]:
    """``figure`` (STANDING_FIGURE, or STANDING_FIGURE_BODY25) with its neck at (neck_x, neck_y) field
    pixels, optionally only some parts."""
    names = figure if parts is None else parts
    return {name: (neck_x + figure[name][0], neck_y + figure[name][1]) for name in names}
