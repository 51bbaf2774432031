"""Per-stage timing of the estimator on real photos (no Ray).

Measures, per image: decode (cv2.imread), pre-processing (resize), network
forward, post-processing (peaks, limb scoring, matching, assembly: the default
way from the network's fields, and tf-pose's way, upsampling whole fields, for
comparison), and the total with the default; plus images/s and the process's
peak resident memory. Prints a Markdown table (paste it into docs/benchmarks.md).

    python benchmarks/bench_estimator.py --data ../shared/data --sizes 432x368,656x368 --repeat 3 [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from openpose_ray import PoseEstimator
import dataclasses

from openpose_ray.postprocess import group_fields
from openpose_ray.preprocess import resize_to_input


def _photos(data: Path) -> list[Path]:
    photos = sorted((data / "coco_val2017_mini").glob("*.jpg")) + sorted((data / "coco_val2014_samples").glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos under {data}")
    return photos


def bench(estimator: PoseEstimator, photos: list[Path], repeat: int) -> dict[str, list[float]]:
    spec, cfg, skeleton = estimator.input_spec, estimator.postprocess, estimator.skeleton
    whole = dataclasses.replace(cfg, upsample_whole_fields=True)
    times: dict[str, list[float]] = {k: [] for k in ("decode", "preprocess", "forward", "post", "post_whole", "total")}
    people = 0
    for run in range(repeat + 1):  # run 0 warms up caches and allocators
        for path in photos:
            t0 = time.perf_counter()
            image = cv2.imread(str(path))
            t1 = time.perf_counter()
            net_input, transform = resize_to_input(image, spec, estimator.net_size)
            t2 = time.perf_counter()
            heatmaps, pafs = estimator.run_network([net_input])
            t3 = time.perf_counter()
            found = group_fields(heatmaps[0], pafs[0], skeleton, cfg)
            t4 = time.perf_counter()
            group_fields(heatmaps[0], pafs[0], skeleton, whole)
            t5 = time.perf_counter()
            if run:
                for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t4 - t0)):
                    times[key].append(value * 1000)
                people += len(found)
    times["people"] = [people / repeat]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--sizes", default="432x368,656x368")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--precisions", default="fp32", help="network arithmetic(s) to measure, e.g. fp32,bf16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    photos = _photos(args.data)
    base = PoseEstimator.from_pretrained()
    print(f"{len(photos)} photos, repeat {args.repeat}, torch {torch.__version__} threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}\n")
    print("| net size | precision | decode | pre-process | forward | post-processing | (whole fields) | total | images/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        for precision in args.precisions.split(","):
            times = bench(base.with_config(net_size=(w, h), precision=precision), photos, args.repeat)
            stages = ("decode", "preprocess", "forward", "post", "post_whole", "total")
            cells = [f"{statistics.median(times[k]):.1f} ms" for k in stages]
            rate = 1000.0 / float(np.mean(times["total"]))
            print(f"| {w}x{h} | {precision} | " + " | ".join(cells) + f" | {rate:.1f} |")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nmedian ms per image per stage; peak resident memory of the process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
