"""COCO keypoint AP of input geometries (stretch / fit, net heights, multi-scale), with their CPU cost.

For every labelled set given (COCO-format keypoint annotations + the folder of
their images; default: coco_val2017_mini of ../shared/data), every setting
below is scored with pycocotools, and the same setting is timed on this CPU
(median ms per image of ``estimate([image])``, after a warm-up pass). Prints a
Markdown table for docs/benchmarks.md.

    python benchmarks/bench_accuracy.py [--set NAME=ANNOTATIONS.json:IMAGE_DIR ...] [--repeat 3]

Settings: stretch 432x368 and 656x368 (tf-pose's habit and the old GPU
config), fit at heights 296 / 368 / 480, and multi-scale sets at fit 368 and
480. A handful of photos cannot tell differences of a few AP points from
noise (one keypoint of one person moves AP by ~0.02 on 12 people): read the
table for large effects only, and give it larger sets.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from openpose_ray import PoseEstimator  # noqa: E402
from openpose_ray.coco import evaluate_keypoints  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# (label, net_size, resize_mode, scales)
SETTINGS = [
    ("stretch 432x368", (432, 368), "stretch", (1.0,)),
    ("stretch 656x368", (656, 368), "stretch", (1.0,)),
    ("fit h296", (432, 296), "fit", (1.0,)),
    ("fit h368 (default)", None, None, (1.0,)),
    ("fit h480", (432, 480), "fit", (1.0,)),
    ("fit h368 x(1, 0.5)", (432, 368), "fit", (1.0, 0.5)),
    ("fit h368 x(1, 0.75, 0.5)", (432, 368), "fit", (1.0, 0.75, 0.5)),
    ("fit h480 x(1, 0.5)", (432, 480), "fit", (1.0, 0.5)),
]


def parse_set(text: str) -> tuple[str, Path, Path]:
    name, _, rest = text.partition("=")
    annotations, _, images = rest.partition(":")
    if not (name and annotations and images):
        raise argparse.ArgumentTypeError(f"expected NAME=ANNOTATIONS.json:IMAGE_DIR, got {text!r}")
    return name, Path(annotations), Path(images)


def ms_per_image(estimator: PoseEstimator, images: list, repeat: int) -> float:
    for image in images:  # warm-up
        estimator.estimate([image])
    times = []
    for _ in range(repeat):
        for image in images:
            start = time.perf_counter()
            estimator.estimate([image])
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="sets", type=parse_set, action="append", metavar="NAME=ANNOTATIONS:IMAGES",
                        help="a labelled set (repeatable); default coco_val2017_mini of ../shared/data")
    parser.add_argument("--repeat", type=int, default=3, help="timing passes over the first set's images")
    args = parser.parse_args()
    mini = DEFAULT_DATA / "coco_val2017_mini"
    sets = args.sets or [("coco_val2017_mini", mini / "person_keypoints.json", mini)]
    base = PoseEstimator.from_pretrained()
    timing_images = [cv2.imread(str(p)) for p in sorted(sets[0][2].glob("*.jpg"))]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"timing on the {len(timing_images)} images of {sets[0][0]}, median of {args.repeat} passes\n")
    names = [name for name, _, _ in sets]
    print("| setting | " + " | ".join(f"AP {n}" for n in names) + " | people found | ms / image (CPU) | images/s |")
    print("|---|" + "---|" * len(names) + "---|---|---|")
    for label, net_size, mode, scales in SETTINGS:
        estimator = base.with_config(net_size=net_size, resize_mode=mode, scales=scales)
        aps, people = [], []
        for _, annotation_file, images in sets:
            def estimate(path: str, estimator=estimator):
                found = estimator.estimate([cv2.imread(path)])[0]
                people.append(len(found))
                return found

            aps.append(f"{evaluate_keypoints(annotation_file, estimate, images)['AP']:.3f}")
        ms = ms_per_image(estimator, timing_images, args.repeat)
        print(f"| {label} | " + " | ".join(aps) + f" | {sum(people)} | {ms:.0f} | {1000 / ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
