"""What pose shards cost: the job over WebDataset tars with write.pose_shards off, on, and on with pose maps.

Builds ``--tars`` WebDataset tars of the shared photos (``<key>.jpg`` + ``<key>.txt``), then, in one
in-process Ray session, runs the job over them with each setting (round robin, ``--rounds`` times, the
fastest of each counted) and prints one JSON line starting ``POSE_SHARDS``: per setting, frames/s over
the pipeline's span, the post-processing stage's CPU ms per frame (where the pose shard is built) and
the pose shards' bytes per frame.

    python benchmarks/bench_pose_shards.py [--tars 4] [--rounds 2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from openpose_ray.config_loader import load_config  # noqa: E402
from openpose_ray.pipeline import runner  # noqa: E402

PHOTOS = [REPO.parent / "shared" / "data" / d for d in ("coco_val2017_mini", "coco_val2014_samples")]
SETTINGS = {"off": [], "json": ["write.pose_shards=true"],
            "json+maps": ["write.pose_shards=true", "write.pose_shard_maps=true"]}


def make_tars(folder: Path, count: int) -> list[Path]:
    photos = sorted(p for d in PHOTOS for p in d.glob("*.jpg"))
    tars = []
    for t in range(count):
        path = folder / f"shard-{t:04d}.tar"
        with tarfile.open(path, "w") as archive:
            for i, photo in enumerate(photos):
                archive.add(photo, arcname=f"{t:04d}{i:04d}.jpg")
                caption = folder / "caption.txt"
                caption.write_text(f"photo {i} of shard {t}")
                archive.add(caption, arcname=f"{t:04d}{i:04d}.txt")
        tars.append(path)
    return tars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tars", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="pose-shards-"))
    tars = make_tars(scratch, args.tars)
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for round_ in range(args.rounds):
        for name, extra in SETTINGS.items():
            output = scratch / f"out-{name}-{round_}"
            config = load_config(REPO / "configs" / "local.yaml", [
                f"input={json.dumps([str(t) for t in tars])}", f"output={output}", "write.render_images=false",
                "write.render_videos=false", *extra, *args.overrides])
            runner.init_ray(config)
            summary = runner.run_job(config)
            span = summary["wall_seconds"]["first_result"] + summary["wall_seconds"]["pipeline"]
            shards = list((output / "media" / "webdataset").glob("*.pose.tar"))
            runs[name].append({"frames_per_s": round(summary["frames"] / span, 2),
                               "post_ms_per_frame": round(1000 * summary["stage_seconds"]["post"] / summary["frames"], 2),
                               "pose_shard_bytes_per_frame": round(sum(p.stat().st_size for p in shards)
                                                                   / summary["frames"]),
                               "frames": summary["frames"]})
    best = {name: max(results, key=lambda r: r["frames_per_s"]) for name, results in runs.items()}
    print("POSE_SHARDS " + json.dumps({"tars": args.tars, "best": best, "runs": runs}))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
