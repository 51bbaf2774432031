"""Load test: the annotation job over 2,000+ video frames, with bounded memory and no spilling.

Builds an input folder in a temporary directory with the shared videos hard-linked
(copied when linking fails) ``copies`` times under different names, runs the job as
a user would (``openpose-ray run``, in a fresh process with its own in-process Ray
and its own Ray temp dir) and samples, every second:

* memory: PSS (RSS where PSS is unavailable) summed over the driver and every
  process of its Ray (raylet, GCS, agents, workers, the inference actor); PSS
  counts the object store's shared memory once, split among the processes mapping it;
* the object store: bytes in use, capacity, fallback (filesystem) allocations and
  the raylet's counters of spilled and restored bytes, asked from a thread in the
  job's driver (the raylet only answers authenticated clients, and the driver is one);
* spill files under the session's ``ray_spilled_objects*`` directories (Ray
  deletes them at shutdown, so they are looked for while the job runs).

Afterwards the raylet's logs (its periodic state dumps count spill requests) and
the job's stderr are searched for spilling and for the memory monitor killing
workers. Each size gets a JSON report and a Markdown table row; run two sizes (the
default: 1 copy and enough copies for ``--min-frames``) to see whether peak memory
grows with the input. The job runs the code of the checkout that holds this script.

    .venv/bin/python benchmarks/bench_load.py --data ../shared/data [--copies 1 5] [--set key=value ...]

Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
_VIDEOS = ("street_720p_h264.avi", "sports_994p_vp9.mp4")
_SAMPLE_EVERY_S = 1.0
# Lines of Ray's logs that mean objects went to disk, or that the memory monitor stepped in.
_SPILL_LOG = re.compile(r"Spilled \d+ MiB|Spilling object|fallback allocating")
_OOM_LOG = re.compile(r"low on memory|OutOfMemory|Killing worker", re.IGNORECASE)
# A worker or actor that died without being asked to (crash, kill -9, OOM killer); Ray Data retries its work.
_WORKER_DEATH_LOG = re.compile(r"Disconnecting worker, graceful=false")
_STATE_DUMP_SPILLS = re.compile(r"cumulative spill requests: (\d+)|num bytes currently spilled: (\d+)")

# `openpose-ray ARGS...` plus a thread that writes the raylet's object store counters (what
# `ray memory --stats-only` prints) to the file argv[1], one JSON line a second.
_CHILD = r"""
import json, sys, threading, time

def watch_store(path):
    import ray
    from ray._private import internal_api, state, worker
    while not ray.is_initialized():
        time.sleep(0.2)
    with open(path, "a") as out:
        out.write(json.dumps({"session_dir": worker._global_node.get_session_dir_path()}) + "\n")
        while ray.is_initialized():
            try:
                stats = internal_api.get_memory_info_reply(state.state, timeout_seconds=5).store_stats
                record = {"t": time.time(), "used": stats.object_store_bytes_used,
                          "capacity": stats.object_store_bytes_avail, "fallback": stats.object_store_bytes_fallback,
                          "objects": stats.num_local_objects, "spilled_bytes": stats.spilled_bytes_total,
                          "spilled_objects": stats.spilled_objects_total, "restored_bytes": stats.restored_bytes_total}
            except Exception as error:  # Ray still starting, or shutting down
                record = {"t": time.time(), "error": f"{type(error).__name__}: {error}"[:300]}
            out.write(json.dumps(record) + "\n")
            out.flush()
            time.sleep(1.0)

threading.Thread(target=watch_store, args=(sys.argv[1],), daemon=True).start()
from openpose_ray.cli import main
sys.exit(main(sys.argv[2:]))
"""


# --- input ----------------------------------------------------------------------------------


def count_frames(path: Path) -> int:
    """Video frames of the first video stream, by demuxing (nothing decoded)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def build_input(videos: list[Path], copies: int, folder: Path) -> None:
    """``copies`` hard links (or copies) of each video in ``folder``, each under its own name.

    Not symbolic links: the listing skips links that lead out of the input root."""
    folder.mkdir(parents=True)
    for copy in range(copies):
        for video in videos:
            target = folder / f"copy{copy:03d}_{video.name}"
            try:
                os.link(video, target)
            except OSError:  # another filesystem, or no links allowed
                shutil.copyfile(video, target)


# --- processes and memory -------------------------------------------------------------------


@dataclass
class Process:
    pid: int
    parent: int
    name: str
    cmdline: list[str]


def _processes() -> dict[int, Process]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
        except (OSError, IndexError, ValueError):
            continue
        found[int(entry)] = Process(int(entry), parent, _process_name(cmdline), cmdline)
    return found


def _process_name(cmdline: list[str]) -> str:
    """A short name to group processes by: a Ray worker's title, the executable, or a Python script."""
    if not cmdline:
        return "?"
    if cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0]
    name = os.path.basename(cmdline[0].split()[0])
    if name.startswith("python") and cmdline[1:2] == ["-c"]:
        return "python -c (the job's driver)"
    if name.startswith("python") and len(cmdline) > 1:
        script = next((arg for arg in cmdline[1:] if not arg.startswith("-")), "")
        return f"python {os.path.basename(script)}"
    return name


def _memory_bytes(pid: int) -> int:
    """PSS of a process (RSS when the kernel has no smaps_rollup), bytes; 0 if it is gone."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except OSError:
            continue
    return 0


def run_processes(root: int, ray_tmp: str) -> dict[int, Process]:
    """The driver, its descendants, and any other process started with this run's Ray temp dir."""
    processes = _processes()
    children: dict[int, list[int]] = {}
    for process in processes.values():
        children.setdefault(process.parent, []).append(process.pid)
    members, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in processes and pid not in members:
            members.add(pid)
            stack.extend(children.get(pid, []))
    members.update(p.pid for p in processes.values() if any(ray_tmp in arg for arg in p.cmdline))
    return {pid: processes[pid] for pid in members}


# --- spilling ------------------------------------------------------------------------------


def spill_files(ray_tmp: str) -> tuple[int, int]:
    """(files, bytes) under the run's ``ray_spilled_objects*`` directories (Ray's default spill location)."""
    count = size = 0
    for folder in glob.glob(os.path.join(ray_tmp, "**", "ray_spilled_objects*"), recursive=True):
        for dirpath, _, names in os.walk(folder):
            for name in names:
                try:
                    size += os.path.getsize(os.path.join(dirpath, name))
                    count += 1
                except OSError:
                    pass
    return count, size


def log_lines(paths: list[str], pattern: re.Pattern) -> list[str]:
    """Lines of the files matching ``pattern``, prefixed with the file name."""
    found = []
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                found += [f"{os.path.basename(path)}: {line.strip()[:300]}" for line in f if pattern.search(line)]
        except OSError:
            continue
    return found


def state_dump_spills(raylet_logs: list[str]) -> dict:
    """Largest 'cumulative spill requests' and 'num bytes currently spilled' of the raylet's state dumps."""
    requests = spilled = 0
    for line in log_lines(raylet_logs, _STATE_DUMP_SPILLS):
        match = _STATE_DUMP_SPILLS.search(line)
        requests = max(requests, int(match.group(1) or 0))
        spilled = max(spilled, int(match.group(2) or 0))
    return {"cumulative_spill_requests": requests, "max_bytes_currently_spilled": spilled}


# --- one run --------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    memory: int
    by_process: dict[str, int]
    spill_files: int
    spill_file_bytes: int
    system_available: int  # MemAvailable of the whole machine (other people's processes included)


def _system_available() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def sample_run(child: subprocess.Popen, ray_tmp: str, samples: list[Sample]) -> None:
    while child.poll() is None:
        started = time.time()
        by_process: dict[str, int] = {}
        for process in run_processes(child.pid, ray_tmp).values():
            by_process[process.name] = by_process.get(process.name, 0) + _memory_bytes(process.pid)
        files, file_bytes = spill_files(ray_tmp)
        samples.append(Sample(started, sum(by_process.values()), by_process, files, file_bytes, _system_available()))
        time.sleep(max(0.0, _SAMPLE_EVERY_S - (time.time() - started)))


def _by_third(records: list, start: float, end: float, value) -> list[int]:
    """Largest ``value(record)`` in each third of [start, end], in MiB (records have a ``t``)."""
    thirds = [[] for _ in range(3)]
    for record in records:
        t = record.t if isinstance(record, Sample) else record["t"]
        thirds[min(2, max(0, int(3 * (t - start) / (end - start))))].append(value(record))
    return [round(max(part, default=0) / 2**20) for part in thirds]


def run_job(input_dir: Path, output_dir: Path, ray_tmp: Path, config: str, overrides: list[str]) -> dict:
    """Run ``openpose-ray run`` on ``input_dir`` in a fresh process and measure it; the report as a dict."""
    job_args = ["run", "--config", config, "--set", f"input={input_dir}", "--set", f"output={output_dir}",
                "--set", "write.render_images=false", "--set", "write.render_videos=false",
                *[arg for override in overrides for arg in ("--set", override)]]
    store_path = ray_tmp / "object_store.jsonl"
    # The code of the checkout holding this script, whatever the virtual environment has installed;
    # always a fresh in-process Ray (never someone else's cluster), with its files under ray_tmp.
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp),
               PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])))
    env.pop("RAY_ADDRESS", None)
    stderr_path = ray_tmp / "job.stderr"
    samples: list[Sample] = []
    started = time.time()
    with open(stderr_path, "w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(store_path), *job_args], cwd=_REPO,
                                 stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        sampler = threading.Thread(target=sample_run, args=(child, str(ray_tmp), samples), daemon=True)
        sampler.start()
        out, _ = child.communicate()
        sampler.join()
    ended = time.time()
    # The summary is the indented JSON object the command prints; Ray may print around it.
    summary = next((json.loads(m) for m in reversed(re.findall(r"^\{$.*?^\}$", out, re.M | re.S))), None)
    if summary is None or child.returncode != 0:
        tail = stderr_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"job failed (exit {child.returncode}); stdout:\n{out[-2000:]}\nstderr:\n{tail}")

    records = [json.loads(line) for line in store_path.read_text().splitlines()] if store_path.exists() else []
    session = next((r["session_dir"] for r in records if "session_dir" in r), None)
    stores = [r for r in records if "used" in r]
    errors = [r["error"] for r in records if "error" in r]
    logs = sorted(glob.glob(os.path.join(session or str(ray_tmp), "logs", "*")))
    raylet_logs = [p for p in logs if os.path.basename(p).startswith("raylet")]
    peak = max(samples, key=lambda s: s.memory)
    mib = 2**20
    return {
        "command": ["openpose-ray", *job_args],
        "frames": summary["frames"],
        "frames_failed": summary["frames_failed"],
        "shards": summary["shards"],
        "people": summary["people"],
        "wall_time_including_startup_s": round(ended - started, 1),
        "frames_per_s_overall": round(summary["frames"] / (ended - started), 2),
        "stage_seconds": summary["stage_seconds"],
        "memory_samples": len(samples),
        "peak_memory_mib": round(peak.memory / mib),
        "peak_memory_at_s": round(peak.t - started, 1),
        "peak_memory_by_process_mib": {k: round(v / mib) for k, v in sorted(peak.by_process.items(), key=lambda kv: -kv[1])},
        "peak_memory_mib_by_third_of_run": _by_third(samples, started, ended, lambda s: s.memory),
        "machine_memory_available_min_mib": round(min(s.system_available for s in samples) / mib),
        "object_store_samples": len(stores),
        "object_store_samples_failed": len(errors),
        "object_store_capacity_mib": round(max((r["capacity"] for r in stores), default=0) / mib),
        "object_store_peak_used_mib": round(max((r["used"] for r in stores), default=0) / mib),
        "object_store_peak_used_mib_by_third_of_run": _by_third(stores, started, ended, lambda r: r["used"]),
        "object_store_peak_objects": max((r["objects"] for r in stores), default=0),
        "object_store_fallback_peak_mib": round(max((r["fallback"] for r in stores), default=0) / mib),
        "spilled_bytes": max((r["spilled_bytes"] for r in stores), default=0),
        "spilled_objects": max((r["spilled_objects"] for r in stores), default=0),
        "restored_bytes": max((r["restored_bytes"] for r in stores), default=0),
        "raylet_state_dumps": state_dump_spills(raylet_logs),
        "spill_files_seen_max": max((s.spill_files for s in samples), default=0),
        "spill_file_bytes_seen_max": max((s.spill_file_bytes for s in samples), default=0),
        "spill_log_lines": log_lines(raylet_logs + [str(stderr_path)], _SPILL_LOG)[:10],
        "memory_monitor_log_lines": log_lines(raylet_logs + [str(stderr_path)], _OOM_LOG)[:10],
        "worker_deaths_log_lines": log_lines(raylet_logs, _WORKER_DEATH_LOG)[:10],
        "ray_session_dir": session,
        "timeline": {
            "memory": [[round(s.t - started, 1), round(s.memory / mib)] for s in samples],
            "object_store_used": [[round(r["t"] - started, 1), round(r["used"] / mib)] for r in stores],
        },
    }


def spilled(report: dict) -> bool:
    return bool(report["spilled_bytes"] or report["spill_files_seen_max"] or report["spill_log_lines"]
                or report["raylet_state_dumps"]["cumulative_spill_requests"] or report["object_store_fallback_peak_mib"])


def markdown_row(copies: int, report: dict) -> str:
    spill = f"{report['spilled_bytes'] / 2**20:.0f} MiB" if spilled(report) else "none"
    thirds = " / ".join(str(v) for v in report["peak_memory_mib_by_third_of_run"])
    outside_store = report["peak_memory_mib"] - report["object_store_peak_used_mib"]
    return (f"| {copies} | {report['frames']} | {report['shards']} | {report['wall_time_including_startup_s']} s"
            f" | {report['frames_per_s_overall']} | {report['peak_memory_mib']} MiB | {thirds}"
            f" | {report['object_store_peak_used_mib']} MiB | {outside_store} MiB | {spill} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("OPENPOSE_RAY_TEST_DATA", str(_REPO.parent / "shared" / "data")),
                        help="the shared test media (holds videos/)")
    parser.add_argument("--copies", type=int, nargs="+",
                        help="copies of the two videos per run, one run each (default: 1 and enough for --min-frames)")
    parser.add_argument("--min-frames", type=int, default=2000, help="frames of the largest default run")
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="more config overrides, passed on as --set")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (input links, output, Ray logs)")
    parser.add_argument("--timeline", metavar="FILE.json", help="write every sample of every run here")
    args = parser.parse_args()

    videos = [Path(args.data) / "videos" / name for name in _VIDEOS]
    frames_per_copy = sum(count_frames(video) for video in videos)
    copies_list = args.copies or [1, math.ceil(args.min_frames / frames_per_copy)]
    reports, rows = {}, []
    for copies in copies_list:
        # Short prefix: Ray's Unix socket paths under it must stay below 108 characters.
        work = Path(tempfile.mkdtemp(prefix="bl-"))
        try:
            build_input(videos, copies, work / "in")
            (work / "ray").mkdir()
            print(f"run: {copies} copies, {copies * frames_per_copy} frames, in {work}", file=sys.stderr, flush=True)
            report = run_job(work / "in", work / "out", work / "ray", args.config, args.overrides)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        reports[copies] = report
        rows.append(markdown_row(copies, report))
        print(json.dumps({k: v for k, v in report.items() if k != "timeline"} | {"copies": copies}, indent=2), flush=True)
    if args.timeline:
        Path(args.timeline).write_text(json.dumps({c: r["timeline"] for c, r in reports.items()}))
    if len(reports) > 1:
        peaks = {c: r["peak_memory_mib"] for c, r in reports.items()}
        print(json.dumps({"peak_memory_mib_by_copies": peaks,
                          "largest_over_smallest_peak": round(peaks[max(peaks)] / peaks[min(peaks)], 3)}))
    print("| copies | frames | shards | wall (incl. start-up) | frames/s | peak PSS, all processes "
          "| peak PSS by third of run | object store peak | PSS peak - store peak | spilled |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
