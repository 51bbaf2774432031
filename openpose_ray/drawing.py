"""Drawing detected people, in the OpenPose colours: onto their image, or as a pose map.

Images are numpy arrays in OpenCV layout: uint8, BGR, ``[H, W, 3]``. Keypoints
follow the project convention of :mod:`openpose_ray.skeleton` (pixel centres at
integer coordinates, x right, y down) and are rounded to the nearest pixel for
drawing.

Two styles (``write.render_style``): :func:`render` draws on a copy of the image
(anti-aliased, sized by the image's short side: legible for people looking at it);
:func:`pose_map` draws on a black canvas of the image's size exactly as OpenPose's
renderer does with ``--disable_blending`` (per person, line and circle sizes from
the person's extent relative to the image, 8-connected lines): the conditioning
image of pose-guided generative models (ControlNet's OpenPose input).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from openpose_ray.person import Person
from openpose_ray.skeleton import COCO18, Skeleton

# The CMU demo draws 4-pixel limbs and 4-pixel circles on ~656-pixel frames;
# scaling by the short side keeps that look on small thumbnails and on 4K frames.
_SHORT_SIDE_PER_LINE_PIXEL = 160
_SHORT_SIDE_PER_RADIUS_PIXEL = 120


def render(
    image: np.ndarray,
    persons: Sequence[Person],
    skeleton: Skeleton = COCO18,
    *,
    thickness: int | None = None,
    radius: int | None = None,
) -> np.ndarray:
    """Return a copy of ``image`` with the limbs and keypoints of ``persons`` drawn on it.

    image: uint8 ``[H, W, 3]`` BGR. Also accepted, and converted to BGR first:
        grayscale ``[H, W]`` or ``[H, W, 1]``, and BGRA ``[H, W, 4]`` (the alpha
        channel is dropped). The input is never modified.
    persons: each with keypoints float32 ``[K, 3]`` as x, y, confidence in the
        pixels of ``image``, K = ``skeleton.num_parts``. Parts with confidence
        <= 0 (the "not found" convention) or non-finite coordinates are skipped.
    skeleton: part order and limbs of the keypoints (the model's: a BODY_25
        person needs ``skeleton.BODY25``). Limbs are drawn in
        ``skeleton.limb_colors_bgr()``: for COCO-18 limb ``i`` in the colour of
        part ``i``, as the CMU demo does; for BODY_25 each limb in the colour
        of its second part, as OpenPose does. Only limbs with ``drawn`` set,
        and only when both parts were found. Keypoints are drawn after the
        limbs, as filled circles in the colour of their part.
    thickness, radius: line thickness and circle radius in pixels; by default
        they grow with the short side of the image so large frames stay legible.

    Returns a new uint8 ``[H, W, 3]`` BGR image of the same height and width.
    """
    canvas = _to_bgr_copy(image)
    height, width = canvas.shape[:2]
    short_side = min(height, width)
    if thickness is None:
        thickness = max(1, round(short_side / _SHORT_SIDE_PER_LINE_PIXEL))
    if radius is None:
        radius = max(2, round(short_side / _SHORT_SIDE_PER_RADIUS_PIXEL))
    if thickness < 1 or radius < 1:
        raise ValueError(f"thickness and radius must be >= 1 pixel, got thickness={thickness}, radius={radius}")

    limbs = _limbs_to_draw(skeleton)
    for person_index, person in enumerate(persons):
        keypoints = _checked_keypoints(person, person_index, skeleton)
        found = _found(keypoints)
        pixels = np.rint(np.where(found[:, None], keypoints[:, :2], 0)).astype(np.int64)
        _draw_skeleton(canvas, pixels, found, limbs, skeleton, line=thickness, radius=radius, circle=cv2.FILLED,
                       line_type=cv2.LINE_AA)
    return canvas


# OpenPose's pose renderer (utilities/keypoint.cpp, renderKeypointsCpu with the pose's ratios): circle
# thickness sqrt(W * H) / 75 at a person as large as the image, lines 3/4 of it; the person's extent
# counts the parts above 0.1.
_CIRCLE_PER_SQRT_AREA = 1 / 75
_LINE_PER_CIRCLE = 0.75
_EXTENT_THRESHOLD = 0.1
STYLES = ("overlay", "pose_map")


def pose_map(height: int, width: int, persons: Sequence[Person], skeleton: Skeleton = COCO18) -> np.ndarray:
    """uint8 ``[height, width, 3]`` BGR: black, with each person's skeleton drawn as OpenPose draws it.

    persons: keypoints float32 ``[K, 3]`` in the pixels of a ``width`` x ``height`` image,
        K = ``skeleton.num_parts``; parts with confidence <= 0 or non-finite coordinates are
        not drawn (the project's "not found"), nor are limbs with ``drawn`` unset.
    Per person, as OpenPose: ``r = min(1, max(w / width, h / height))`` of the box of its parts with
    confidence > 0.1; ``t = max(round(sqrt(width * height) / 75 * r), 2)``; limbs ``round(0.75 t)``
    pixels wide, then parts as discs of radius ``t // 2`` (filled; an outline of thickness ``t``
    when r > 0.05, which covers the same disc); a person whose box has no area is not drawn.
    Coordinates round half up. Colours: ``skeleton.limb_colors_bgr()`` and ``part_colors_bgr``.
    """
    canvas = np.zeros((height, width, 3), np.uint8)
    limbs = _limbs_to_draw(skeleton)
    for person_index, person in enumerate(persons):
        keypoints = _checked_keypoints(person, person_index, skeleton)
        found = _found(keypoints)
        extent = keypoints[found & (keypoints[:, 2] > _EXTENT_THRESHOLD), :2]
        if len(extent) == 0:
            continue
        box_w, box_h = extent.max(0) - extent.min(0)
        if box_w * box_h <= 0:
            continue
        ratio = min(1.0, max(box_w / width, box_h / height))
        thickness = max(int(np.sqrt(width * height) * _CIRCLE_PER_SQRT_AREA * ratio + 0.5), 2)
        pixels = np.floor(np.where(found[:, None], keypoints[:, :2], 0) + 0.5).astype(np.int64)
        _draw_skeleton(canvas, pixels, found, limbs, skeleton, line=int(thickness * _LINE_PER_CIRCLE + 0.5),
                       radius=thickness // 2, circle=thickness if ratio > 0.05 else cv2.FILLED, line_type=cv2.LINE_8)
    return canvas


def draw(image: np.ndarray, persons: Sequence[Person], skeleton: Skeleton = COCO18,
         style: str = "overlay") -> np.ndarray:
    """``render(image, ...)`` (style "overlay") or ``pose_map`` of the image's size (style "pose_map")."""
    if style == "overlay":
        return render(image, persons, skeleton)
    if style == "pose_map":
        return pose_map(image.shape[0], image.shape[1], persons, skeleton)
    raise ValueError(f"render style must be one of {', '.join(STYLES)}, got {style!r}")


def _found(keypoints: np.ndarray) -> np.ndarray:
    """bool[K]: the parts drawn: confidence > 0 (the "not found" convention) and finite coordinates."""
    return (keypoints[:, 2] > 0) & np.isfinite(keypoints[:, :2]).all(axis=1)


def _limbs_to_draw(skeleton: Skeleton) -> list[tuple[tuple[int, int, int], int, int]]:
    """(colour, part a, part b) of each limb with ``drawn`` set, in the skeleton's order."""
    return [(color, int(a), int(b)) for limb, color, (a, b)
            in zip(skeleton.limbs, skeleton.limb_colors_bgr(), skeleton.limb_part_indices()) if limb.drawn]


def _draw_skeleton(canvas: np.ndarray, pixels: np.ndarray, found: np.ndarray, limbs: list, skeleton: Skeleton, *,
                   line: int, radius: int, circle: int, line_type: int) -> None:
    """One person onto ``canvas`` (in place): the ``limbs`` (:func:`_limbs_to_draw`) whose parts were both found,
    ``line`` pixels wide, then the found parts as circles of ``radius`` and thickness ``circle`` (cv2.FILLED:
    discs) in their part's colour. pixels: int64[K, 2] (x, y)."""
    for color, a, b in limbs:
        if found[a] and found[b]:
            cv2.line(canvas, _point(pixels[a]), _point(pixels[b]), color, line, line_type)
    for part_index in np.flatnonzero(found):
        cv2.circle(canvas, _point(pixels[part_index]), radius, skeleton.part_colors_bgr[part_index], circle, line_type)


def _checked_keypoints(person: Person, person_index: int, skeleton: Skeleton) -> np.ndarray:
    keypoints = np.asarray(person.keypoints)
    if keypoints.shape != (skeleton.num_parts, 3):
        raise ValueError(
            f"person {person_index}: keypoints have shape {keypoints.shape}, expected "
            f"({skeleton.num_parts}, 3) for skeleton {skeleton.name!r}; render with the model's skeleton"
        )
    return keypoints


def _point(xy: np.ndarray) -> tuple[int, int]:
    return int(xy[0]), int(xy[1])


def _to_bgr_copy(image: np.ndarray) -> np.ndarray:
    """A new contiguous uint8 [H, W, 3] BGR array made from a gray, BGR or BGRA image."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(
            f"render expects a uint8 numpy image, got {kind}; convert it (e.g. with cv2.convertScaleAbs) first"
        )
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()  # ndarray.copy is C-contiguous, as OpenCV wants
    raise ValueError(f"render expects an [H, W], [H, W, 3] or [H, W, 4] image, got shape {image.shape}")
