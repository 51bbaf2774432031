"""Finding and stopping the processes of one Ray cluster started by a test (never `ray stop`)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def cluster_processes(temp_dir: Path, group: int) -> dict[int, str]:
    """Live processes of the cluster, {pid: command line}.

    The head's daemons are in the process group of `ray start`; workers and
    actors run in sessions of their own, but their stdout/stderr are log files
    under the cluster's temp dir, so they are found by their open files.
    """
    root = str(temp_dir)
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state, _ppid, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            if state in ("Z", "X"):
                continue
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            ours = int(pgrp) == group or any(a == root or root + "/" in a or a.endswith("=" + root) for a in args)
            if not ours:
                ours = any(os.readlink(fd) == root or os.readlink(fd).startswith(root + "/")
                           for fd in (entry / "fd").iterdir())
        except (OSError, ValueError):  # gone meanwhile, or not ours to inspect
            continue
        if ours:
            found[int(entry.name)] = " ".join(args).strip()[:160]
    return found


def signal_all(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(temp_dir: Path, group: int, timeout: float) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (left := cluster_processes(temp_dir, group)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
