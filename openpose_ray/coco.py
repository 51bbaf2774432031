"""COCO keypoint format: conversion from a model's skeleton (COCO-18, BODY_25) and keypoint AP with pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .person import Person
from .skeleton import COCO17_PART_NAMES, SKELETONS, Skeleton, coco17_indices


def _skeleton_for(num_parts: int, skeleton: Skeleton | None = None) -> Skeleton:
    """``skeleton`` if given (checked to have ``num_parts`` parts), else the known skeleton with
    ``num_parts`` parts (18: COCO-18, 25: BODY_25)."""
    if skeleton is None:
        matching = [s for s in SKELETONS.values() if s.num_parts == num_parts]
        if len(matching) != 1:
            known = ", ".join(f"{s.name} ({s.num_parts})" for s in SKELETONS.values())
            raise ValueError(f"no single known skeleton has {num_parts} parts (known: {known}); pass the skeleton")
        return matching[0]
    if skeleton.num_parts != num_parts:
        raise ValueError(f"keypoints have {num_parts} parts, skeleton {skeleton.name!r} has {skeleton.num_parts}")
    return skeleton


def to_coco17(person: Person, skeleton: Skeleton | None = None) -> np.ndarray:
    """float32[17, 3] keypoints in COCO-17 order (x, y, confidence), from ``person.keypoints`` [K, 3].

    skeleton: the keypoints' skeleton; None: the known one with K parts (COCO-18
    for 18, BODY_25 for 25). Parts COCO does not label (the neck, BODY_25's
    mid-hip and feet) are dropped (:func:`~openpose_ray.skeleton.coco17_indices`).
    """
    keypoints = np.asarray(person.keypoints)
    if keypoints.ndim != 2 or keypoints.shape[1] != 3:
        raise ValueError(f"to_coco17 needs keypoints [K, 3], got {keypoints.shape}")
    skeleton = _skeleton_for(keypoints.shape[0], skeleton)
    return keypoints[list(coco17_indices(skeleton))].copy()


def coco_detections(image_id: int, persons: Sequence[Person], skeleton: Skeleton | None = None) -> list[dict]:
    """COCO results entries for one image (visibility 2 for found parts, 0 otherwise); skeleton: as
    :func:`to_coco17`'s."""
    entries = []
    for person in persons:
        kp = to_coco17(person, skeleton)
        flat = np.zeros((len(COCO17_PART_NAMES), 3), np.float64)
        found = kp[:, 2] > 0
        flat[found, :2] = kp[found, :2]
        flat[found, 2] = 2
        entries.append({"image_id": int(image_id), "category_id": 1, "keypoints": flat.ravel().tolist(), "score": float(person.score)})
    return entries


def evaluate_keypoints(annotation_file: str | Path, estimate: Callable[[str], Sequence[Person]], image_dir: str | Path,
                       skeleton: Skeleton | None = None) -> dict[str, float]:
    """COCO keypoint AP of ``estimate(image path) -> people`` on every image of an annotation file.

    skeleton: of the people's keypoints (the estimator's ``skeleton``); None: as :func:`to_coco17`'s.

    Returns {"AP", "AP50", "AP75", "APm", "APl", "AR"} as pycocotools computes them.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
    detections = []
    for image_id in sorted(gt.getImgIds()):
        info = gt.loadImgs(image_id)[0]
        detections.extend(coco_detections(image_id, estimate(str(Path(image_dir) / info["file_name"])), skeleton))
    if not detections:
        return {k: 0.0 for k in ("AP", "AP50", "AP75", "APm", "APl", "AR")}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(json.loads(json.dumps(detections)))
        evaluator = COCOeval(gt, dt, "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    s = evaluator.stats
    return {"AP": s[0], "AP50": s[1], "AP75": s[2], "APm": s[3], "APl": s[4], "AR": s[5]}
