"""Ray clusters of a test's own: starting them, finding and stopping only their processes (never `ray stop`)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


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


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path} unreadable: {exc})"


class LocalRayCluster:
    """A Ray cluster of a test's own on this machine: a head node, and more nodes on request.

    Each node is a `ray start --block` in a session of its own, with a random
    auth token shared by every process of the cluster (so nothing depends on or
    writes ~/.ray/auth_token). ``stop`` stops only this cluster's processes.

    ready: ready(cluster) -> bool, polled until true (default: the GCS port answers).
    multi_node: let other raylets join. Ray refuses a second node when
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its switch for single-machine
    clusters, which also keeps every service on 127.0.0.1); with 1 the head
    binds to the machine's address.
    """

    def __init__(self, *, num_cpus: int = 2, multi_node: bool = False, head_args: tuple[str, ...] = (),
                 ready=None, timeout_s: float = 120):
        # Short and in /tmp: Ray's unix sockets live under it (107-byte path limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="opray-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.token = secrets.token_hex(32)
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS etc. of the caller
        env.update({
            # The `python` of jobs and workers (resolved from the raylet's PATH) is the venv's.
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1" if multi_node else "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "NO_PROXY": ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1,localhost"])),
            "no_proxy": ",".join(filter(None, [env.get("no_proxy"), "127.0.0.1,localhost"])),
        })
        self.env = env  # for drivers and `ray job` commands against this cluster
        self.nodes: list[subprocess.Popen] = []
        self._start([
            "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}", f"--num-cpus={num_cpus}",
            f"--temp-dir={self.temp_dir}", "--dashboard-agent-listen-port=0", *head_args,
        ], env, "head")
        deadline = time.monotonic() + timeout_s
        ready = ready or (lambda cluster: port_open(cluster.port))
        while not ready(self):
            head = self.nodes[0]
            if head.poll() is not None or time.monotonic() > deadline:
                log = self.temp_dir / "start-head.log"
                self.stop()
                raise RuntimeError(f"the test's Ray head did not come up (exit code {head.poll()}); "
                                   f"`ray start` output ends:\n{tail(log)}")
            time.sleep(0.5)

    def _start(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        command = [str(VENV_BIN / "ray"), "start", "--block", "--disable-usage-stats",
                   "--min-worker-port=0", "--max-worker-port=0", *args]
        with open(self.temp_dir / f"start-{name}.log", "wb") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.temp_dir)
        self.nodes.append(process)
        return process

    def add_node(self, *, num_cpus: int, resources: dict[str, float], env: dict[str, str] | None = None) -> None:
        """Start another raylet that joins the cluster; ``env``: extra environment of it and its workers."""
        self._start([f"--address={self.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                     f"--resources={json.dumps(resources)}", "--dashboard-agent-listen-port=0"],
                    {**self.env, **(env or {})}, f"node-{len(self.nodes)}")

    def stop(self) -> dict[int, str]:
        """Stop every process of this cluster and no other; return those still alive (should be none)."""
        for node in reversed(self.nodes):  # `ray start --block` on SIGTERM stops the processes it started
            if node.poll() is None:
                node.terminate()
        for node in self.nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        left = self._left(5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not left:
                break
            signal_all(left, sig)
            left = self._left(10)
        for node in self.nodes:
            if node.poll() is None:
                node.kill()
            node.wait(timeout=10)
        if not left:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left

    def _left(self, timeout: float) -> dict[int, str]:
        left: dict[int, str] = {}
        for node in self.nodes:
            left.update(wait_gone(self.temp_dir, node.pid, timeout))
        return left
