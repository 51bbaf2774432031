"""COCO keypoint format: conversion from COCO-18 and keypoint AP with pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .person import Person
from .skeleton import COCO18_TO_COCO17


def to_coco17(person: Person) -> np.ndarray:
    """float32[17, 3] keypoints in COCO-17 order (x, y, confidence); the neck is dropped."""
    if person.keypoints.shape[0] != 18:
        raise ValueError(f"to_coco17 needs COCO-18 keypoints [18, 3], got {person.keypoints.shape}")
    return person.keypoints[list(COCO18_TO_COCO17)].copy()


def coco_detections(image_id: int, persons: Sequence[Person]) -> list[dict]:
    """COCO results entries for one image (visibility 2 for found parts, 0 otherwise)."""
    entries = []
    for person in persons:
        kp = to_coco17(person)
        flat = np.zeros((17, 3), np.float64)
        found = kp[:, 2] > 0
        flat[found, :2] = kp[found, :2]
        flat[found, 2] = 2
        entries.append({"image_id": int(image_id), "category_id": 1, "keypoints": flat.ravel().tolist(), "score": float(person.score)})
    return entries


def evaluate_keypoints(annotation_file: str | Path, estimate: Callable[[str], Sequence[Person]], image_dir: str | Path) -> dict[str, float]:
    """COCO keypoint AP of ``estimate(image path) -> people`` on every image of an annotation file.

    Returns {"AP", "AP50", "AP75", "APm", "APl", "AR"} as pycocotools computes them.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
    detections = []
    for image_id in sorted(gt.getImgIds()):
        info = gt.loadImgs(image_id)[0]
        detections.extend(coco_detections(image_id, estimate(str(Path(image_dir) / info["file_name"]))))
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
