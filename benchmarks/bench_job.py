"""Throughput and memory of the whole annotation job on this machine.

Runs the job in a fresh process (so Ray's start-up is counted) and reports:
wall time including start-up, frames/s over the whole run, steady-state
frames/s (between the first and the last finished shard), per-stage seconds,
and the peak memory (PSS) of all processes of the run (driver + Ray
workers + object store), sampled every 0.5 s.

    python benchmarks/bench_job.py --config configs/local.yaml --set output=/tmp/bench-out [--set ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import os

_CHILD = r"""
import json, logging, sys, time
t0 = time.time()
logging.basicConfig(level=logging.WARNING)
from openpose_ray.config_loader import load_config
from openpose_ray.pipeline import runner
from openpose_ray.pipeline.records import WrittenShard, from_row
finished = []
_iter_rows = runner.ray.data.Dataset.iter_rows
def timed_iter_rows(self, *a, **k):
    for row in _iter_rows(self, *a, **k):
        record = from_row(row)
        if isinstance(record, WrittenShard):
            finished.append((time.time(), "shard", record.stats.frames))
        yield row
runner.ray.data.Dataset.iter_rows = timed_iter_rows
summary = runner.run_job(load_config(sys.argv[1], sys.argv[2:]))
shards = [(t, n) for t, kind, n in finished if kind == "shard"]
print("BENCH " + json.dumps({"summary": summary, "start": t0, "end": time.time(), "shard_times": shards}))
"""


def _tree_pss(root_pid: int) -> int:
    """Proportional set size (bytes) of a process and all its descendants (Linux /proc).

    PSS, not RSS: the object store's shared memory is mapped by many Ray
    processes and RSS would count it once per process. Ray's raylet, GCS and
    workers descend from the driver when Ray runs in-process."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            with open(f"/proc/{entry}/smaps_rollup") as f:
                pss = next(line for line in f if line.startswith("Pss:"))
            rss[int(entry)] = int(pss.split()[1]) * 1024
        except (OSError, IndexError, ValueError, StopIteration):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(child for child, parent in parents.items() if parent == pid)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    started = time.time()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, args.config, *args.overrides],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], _tree_pss(child.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    sampler.join()
    wall = time.time() - started
    line = next((l for l in out.splitlines() if l.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"job failed (exit {child.returncode}):\n{out[-3000:]}")
    result = json.loads(line[6:])
    summary, shards = result["summary"], result["shard_times"]
    frames = summary["frames"]
    steady = None
    if len(shards) > 2:
        # Frames of the shards finished after the first one, over the time they took:
        # excludes start-up, model loading and the pipeline filling up.
        steady = sum(n for _, n in shards[1:]) / (shards[-1][0] - shards[0][0])
    print(json.dumps({
        "frames": frames, "people": summary["people"], "shards": summary["shards"],
        "wall_time_including_startup_s": round(wall, 1),
        "frames_per_s_overall": round(frames / wall, 2),
        "frames_per_s_steady_state": round(steady, 2) if steady else None,
        "stage_seconds": summary["stage_seconds"],
        "peak_memory_pss_mib_all_processes": round(peak[0] / 2**20),
    }, indent=2))


if __name__ == "__main__":
    main()
