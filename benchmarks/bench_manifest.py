"""The driver's manifest work at scale: a synthetic manifest of many records, resolved and indexed.

    .venv/bin/python benchmarks/bench_manifest.py [--images 1000000] [--segments 10000] [--new 1000]

Builds the records a long-lived output accumulates (one per image; video
segments, ``--segments`` of them, 10 per video), writes them as the manifest
snapshot of a scratch output, then times, each in a fresh process so peak
memory is the step's own:

1. ``load`` + ``resolve`` + ``done_index`` of that output: what the driver does
   before a run that has nothing to do;
2. the same with ``--new`` more image records in commit files (a run whose
   earlier attempt was killed before its end);
3. ``finalize`` of that output: what the driver does at the end of a run that
   added files (fold the commits, write the snapshot, tidy the tables).

Prints seconds and peak RSS (MiB) per step. Issue 12's goal on the 2-core
development machine: under 1 GiB and 30 s each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from openpose_ray.outputs import manifest  # noqa: E402

GENERATION = "g" * 16


def synthetic_records(images: int, segments: int, start: int = 0, run_id: str = "run-1") -> pa.Table:
    """RECORD_SCHEMA rows: ``images`` image records and ``segments`` video segments (10 per video)."""
    committed = datetime(2026, 11, 30, tzinfo=timezone.utc)
    n = images + segments
    index = list(range(start, start + n))
    video = [i - start >= images for i in index]
    segment = [(i - start - images) % 10 for i in index]
    source = [f"s3://bucket/videos/{(i - start - images) // 10:07d}.mp4" if v else f"s3://bucket/images/{i:08d}.jpg"
              for i, v in zip(index, video)]
    columns = {
        "source": source, "version": ["etag"] * n, "size": [1000] * n,
        "source_kind": ["video" if v else "image" for v in video],
        "start_frame": [128 * s if v else 0 for s, v in zip(segment, video)],
        "end_frame": [128 * (s + 1) if v else 1 for s, v in zip(segment, video)],
        "video_frames": [1280 if v else None for v in video], "frames_per_segment": [128 if v else None for v in video],
        "segment_cut": ["key_frames" if v else None for v in video],
        "frames": [128 if v else 1 for v in video], "frames_failed": [0] * n, "frames_to_retry": [0] * n,
        "people": [2] * n,
        "shard_id": [f"shard-{i // 64 if not v else i:08d}" for i, v in zip(index, video)], "run_id": [run_id] * n,
        "generation": [GENERATION] * n, "model": ["mobilenet_thin"] * n, "weights_sha256": ["0" * 64] * n,
        "config_fingerprint": ["f" * 16] * n,
        "people_file": [f"people/part-{i // 64:08d}.parquet" for i in index],
        "frames_file": [f"frames/part-{i // 64:08d}.parquet" for i in index],
        "committed_at": [committed + timedelta(microseconds=i) for i in index],
    }
    return pa.table(columns, schema=manifest.RECORD_SCHEMA)


def build(output: Path, images: int, segments: int, new: int) -> None:
    records = synthetic_records(images, segments)
    live = records.append_column("current", pa.array([True] * records.num_rows))
    (output / "_manifest").mkdir(parents=True, exist_ok=True)
    pq.write_table(live.cast(manifest.SNAPSHOT_SCHEMA), output / manifest.SNAPSHOT, compression="zstd")
    if new:
        commits = output / manifest.COMMITS_DIR / "run-2"
        commits.mkdir(parents=True, exist_ok=True)
        added = synthetic_records(new, 0, start=images + segments, run_id="run-2")
        for chunk in range(0, new, 64):
            pq.write_table(added.slice(chunk, 64), commits / f"shard-{chunk:08d}.parquet")


def step(output: str) -> dict:
    """Load, resolve and index the manifest of ``output``; seconds and peak RSS."""
    from openpose_ray.jobconfig import S3Config

    imported_mib = _rss_mib("VmRSS")
    started = time.perf_counter()
    loaded = manifest.load(output, S3Config(), columns=manifest.INDEX_COLUMNS)  # as run_job does
    loaded_s = time.perf_counter() - started
    records = loaded.records.num_rows
    live = manifest.resolve(loaded.records)
    del loaded  # as run_job does: the records are not needed once resolved
    resolved_s = time.perf_counter() - started
    index = manifest.done_index(live, GENERATION)
    total = time.perf_counter() - started
    return {"records": records, "inputs_indexed": len(index), "load_s": round(loaded_s, 1),
            "resolve_s": round(resolved_s - loaded_s, 1), "done_index_s": round(total - resolved_s, 1),
            "total_s": round(total, 1), "peak_rss_mib": _rss_mib("VmHWM"), "rss_after_imports_mib": imported_mib}


def finalize_step(output: str) -> dict:
    """The end of a run over ``output``: ``finalize`` (fold the commits, write the snapshot, tidy)."""
    from openpose_ray.jobconfig import S3Config

    imported_mib = _rss_mib("VmRSS")
    started = time.perf_counter()
    live, counts = manifest.finalize(output, S3Config())
    return {"live_records": live.num_rows, "finalize_s": round(time.perf_counter() - started, 1),
            "peak_rss_mib": _rss_mib("VmHWM"), "rss_after_imports_mib": imported_mib}


def _rss_mib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process in MiB. Not getrusage's ru_maxrss, which
    a child inherits from its parent across fork + exec (the parent built the synthetic tables)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--new", type=int, default=1_000)
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    parser.add_argument("--finalize", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(finalize_step(args.step) if args.finalize else step(args.step)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        for name, new in (("nothing to do", 0), (f"{args.new} new image records", args.new)):
            output = Path(scratch) / name.replace(" ", "_")
            build(output, args.images, args.segments, new)
            result = subprocess.run([sys.executable, __file__, "--step", str(output)], check=True,
                                    capture_output=True, text=True)
            print(f"{name}: {result.stdout.strip()}")
        result = subprocess.run([sys.executable, __file__, "--step", str(output), "--finalize"], check=True,
                                capture_output=True, text=True)
        print(f"finalize of the run that added {args.new}: {result.stdout.strip()}")


if __name__ == "__main__":
    main()
