"""Batch fill of fit-mode inputs: how full the network's batches are when photos differ in aspect ratio.

The inference engine batches frames whose network inputs have equal shapes; in
fit mode the height is fixed and the width follows each photo, padded up to
one of a few common aspect ratios with ``model.aspect_buckets``. This script
computes, from the shapes alone (no network), with and without aspect buckets
and for several batch sizes:

- batch fill: frames / (network calls x batch size), with frames grouped the
  engine's way (by input shape, then chunks of the batch size, per shard);
- padding overhead: input pixels / image pixels - 1 (work spent on padding).

on the 24 shared photos (COCO crops: 15 different aspect ratios), on a mixed
folder (the same photos plus each rotated by 90 degrees) and on the shapes a
phone folder holds (4:3, 3:4, 16:9, 9:16, 1:1 at several resolutions).

    python benchmarks/bench_batch_fill.py [--data ../shared/data] [--shard 64]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from openpose_ray.models.registry import get_entry  # noqa: E402
from openpose_ray.preprocess import resolve_input_spec, transform_for  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def sizes_of(data: Path) -> list[tuple[int, int]]:
    paths = sorted((data / "coco_val2017_mini").glob("*.jpg")) + sorted((data / "coco_val2014_samples").glob("*.jpg"))
    sizes = []
    for path in paths:
        height, width = cv2.imread(str(path)).shape[:2]
        sizes.append((width, height))
    return sizes


def fill(sizes: list[tuple[int, int]], buckets: bool, batch: int, shard: int) -> tuple[float, float, int]:
    """(batch fill, padding overhead, distinct input widths) of ``sizes`` in shards of ``shard`` images."""
    spec = resolve_input_spec(get_entry("mobilenet_thin").input_spec, aspect_buckets=buckets)
    calls, input_px, image_px, widths = 0, 0, 0, set()
    for start in range(0, len(sizes), shard):
        shapes: dict[tuple[int, int], int] = {}
        for size in sizes[start : start + shard]:
            transform = transform_for(size, spec)
            shapes[transform.input_size] = shapes.get(transform.input_size, 0) + 1
            input_px += transform.input_size[0] * transform.input_size[1]
            image_px += transform.valid_size[0] * transform.valid_size[1]
            widths.add(transform.input_size[0])
        calls += sum(math.ceil(count / batch) for count in shapes.values())
    return len(sizes) / (calls * batch), input_px / image_px - 1, len(widths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--shard", type=int, default=64, help="images per shard (sources.images_per_shard)")
    args = parser.parse_args()
    photos = sizes_of(args.data)
    folders = {"24 photos": photos, "48 mixed (24 + rotated 90°)": photos + [(h, w) for w, h in photos]}
    folders["a phone's folder (4:3, 3:4, 16:9, 9:16, 1:1 at 8 sizes each)"] = [
        (w * k, h * k) for w, h in [(4, 3), (3, 4), (16, 9), (9, 16), (1, 1)] for k in (120, 160, 200, 240, 280, 320, 360, 400)]
    print(f"fit at height 368, shards of {args.shard} images\n")
    print("| folder | aspect buckets | distinct input widths | padding overhead | fill, batch 8 | batch 16 | batch 64 |")
    print("|---|---|---|---|---|---|---|")
    for name, sizes in folders.items():
        for buckets in (False, True):
            cells = [fill(sizes, buckets, batch, args.shard) for batch in (8, 16, 64)]
            print(f"| {name} | {'on' if buckets else 'off'} | {cells[0][2]} | {cells[0][1]:.1%} | "
                  + " | ".join(f"{c[0]:.0%}" for c in cells) + " |")


if __name__ == "__main__":
    main()
