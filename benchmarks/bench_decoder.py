"""sources.decoder cpu against yuv on the CPU side: decode-task cost, bytes shipped, pixels and people.

For each video (default: the two shared videos), every frame, in one process:

1. the job's decode task (pipeline.stages.prepare_shard) per frame: cpu = decode, swscale to BGR,
   resize to the network input (cv2); yuv = decode, copy the YUV 4:2:0 planes (no conversion, no
   resize); both pack the record. CPU ms per frame (process time: FFmpeg's threads included) and wall
   frames/s;
2. the bytes a frame's record carries to the actor (the packed PreparedShard);
3. the network inputs the actor makes from the planes (device_pixels, here on the CPU) against the
   CPU path's: largest and mean difference in levels;
4. with ``--people``: people found both ways (PoseEstimator, peaks on the device path, CPU):
   counts, frames whose counts differ, and how far the parts of matched people lie apart, in
   network-input pixels.

    python benchmarks/bench_decoder.py [--video PATH ...] [--people] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from openpose_ray.jobconfig import JobConfig, S3Config, SourcesConfig  # noqa: E402
from openpose_ray.models.registry import get_entry  # noqa: E402
from openpose_ray.pipeline.records import from_row, to_row  # noqa: E402
from openpose_ray.pipeline.stages import prepare_shard  # noqa: E402
from openpose_ray.preprocess import resolve_input_spec  # noqa: E402
from openpose_ray.sources.listing import iter_objects  # noqa: E402
from openpose_ray.sources.planning import plan_video  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "videos"
LOCAL = S3Config()


def decode_task(video: Path, decoder: str) -> tuple[list, dict]:
    """The job's decode task (pipeline.stages.prepare_shard) on the whole video as one shard under ``decoder``:
    (its frames' PreparedImage / PlanarImage, cost). Like the job's, it runs the process at idle priority."""
    config = JobConfig(input=(str(video),), output="unused", sources=SourcesConfig(decoder=decoder,
                                                                                 frames_per_segment=100_000))
    (obj,) = iter_objects(str(video), config.sources, LOCAL)
    (shard,) = plan_video(obj, config.sources.frames_per_segment, LOCAL)
    wall, cpu = time.perf_counter(), time.process_time()
    row = prepare_shard(to_row(shard), config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    items = list(from_row(row).inputs)
    return items, {"frames": len(items), "cpu_ms_per_frame": round(1000 * cpu / len(items), 2),
                   "frames_per_s": round(len(items) / wall, 1),
                   "record_bytes_per_frame": len(row["record"]) // len(items)}


def input_difference(cpu_items, yuv_items, spec) -> dict:
    """Network inputs made from the planes (device_pixels on the CPU) against the CPU path's, in levels."""
    import torch

    from openpose_ray.device_pixels import network_inputs

    largest, total, count, seconds = 0, 0.0, 0, 0.0
    for cpu, yuv in zip(cpu_items, yuv_items):
        planes = yuv.planes
        start = time.perf_counter()
        made = network_inputs(torch.tensor(planes.y)[None], torch.tensor(np.stack([planes.u, planes.v]))[None],
                              planes.matrix, planes.full_range, yuv.transforms, spec)[0][0].numpy()
        seconds += time.perf_counter() - start
        difference = np.abs(made.astype(np.int16) - cpu.inputs[0].astype(np.int16))
        largest = max(largest, int(difference.max()))
        total, count = total + float(difference.sum()), count + difference.size
    return {"largest_levels": largest, "mean_levels": round(total / count, 3),
            "torch_cpu_ms_per_frame": round(1000 * seconds / len(cpu_items), 1)}


def people_difference(cpu_items, yuv_items) -> dict:
    """People of both paths (CPU estimator) and how far matched people's parts lie apart (network pixels)."""
    from openpose_ray import PoseEstimator

    estimator = PoseEstimator.from_pretrained()
    found = {}
    for name, items in (("cpu", cpu_items), ("yuv", yuv_items)):
        peaks = estimator.infer_peaks(items, 2)
        found[name] = [estimator.people_from_peaks(p, item.base_transform) for p, item in zip(peaks, items)]
    scale = cpu_items[0].base_transform.scale[0]  # network pixels per source pixel
    distances, differ = [], 0
    for ours, theirs in zip(found["yuv"], found["cpu"]):
        differ += len(ours) != len(theirs)
        for person in theirs:
            shared = [(person.keypoints[:, 2] > 0) & (other.keypoints[:, 2] > 0) for other in ours]
            candidates = [np.linalg.norm(person.keypoints[m, :2] - other.keypoints[m, :2], axis=1) * scale
                          for m, other in zip(shared, ours) if m.sum() >= 3]
            if candidates:
                distances.append(min(candidates, key=np.median))
    d = np.concatenate(distances)
    return {"people_cpu": sum(map(len, found["cpu"])), "people_yuv": sum(map(len, found["yuv"])),
            "frames_with_other_count": differ, "parts_compared": int(d.size),
            "share_same_pixel": round(float((d == 0).mean()), 4),
            "share_within_2_5_px": round(float((d <= 2.5).mean()), 4),
            "share_within_4_px": round(float((d <= 4).mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, action="append", help="videos (default: the two shared ones)")
    parser.add_argument("--people", action="store_true", help="also compare the people found (a network run each)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    spec = resolve_input_spec(get_entry("mobilenet_thin").input_spec)
    results = {}
    for video in args.video or [DATA / "street_720p_h264.avi", DATA / "sports_994p_vp9.mp4"]:
        cpu_items, cpu_cost = decode_task(video, "cpu")
        yuv_items, yuv_cost = decode_task(video, "yuv")
        result = {"cpu": cpu_cost, "yuv": yuv_cost, "network_inputs": input_difference(cpu_items, yuv_items, spec)}
        if args.people:
            result["people"] = people_difference(cpu_items, yuv_items)
        results[video.name] = result
        print(video.name, json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
