"""`ray job submit` of jobs/annotate.py on a real Ray cluster.

The cluster is a head node that `ray start --block` runs in a subprocess of
its own (not the in-process Ray of the other tests), on loopback, with 2 CPUs.
The job is submitted the way README and jobs/annotate.py tell a user to
(`--working-dir` the repository, `python jobs/annotate.py --config ...`) on the
4 labelled photos, and its tables, summary and rendered images are checked.

Things this module takes care of, each measured with Ray 2.60:
- Ray maps `--node-ip-address=127.0.0.1` to the machine's network address
  (services.resolve_ip_for_localhost) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
  Ray's switch for single-machine clusters (what it does on macOS by default).
  With it the GCS, the dashboard and every agent listen on 127.0.0.1 only.
- Token authentication: the cluster and the `ray job` CLI must agree. Both get
  RAY_AUTH_MODE=token and the same RAY_AUTH_TOKEN, a random one per test run,
  so nothing depends on (or writes) ~/.ray/auth_token.
- `ray stop` would stop every Ray of the machine, other tests' included: the
  head runs in a session of its own and teardown stops only the processes of
  this cluster (its process group, and the workers, which Ray puts in sessions
  of their own but whose logs live in the cluster's temp dir), then checks that
  none is left. RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 spares the 30 s drain.
- Ports: the dashboard's and the Ray client server's are picked free; the
  others are left to Ray's random choice (0), so another Ray on the machine
  cannot collide with this one on a default port.
"""

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
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from ray_processes import signal_all, wait_gone

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 400
STOP_TIMEOUT_S = 30
MAX_UPLOAD_BYTES = 20 * 2**20  # the repository without .venv is ~1 MB; more means something big is uploaded

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="finds the cluster's processes through /proc")


@dataclass(frozen=True)
class RayHead:
    dashboard_url: str
    token: str
    env: dict[str, str]  # environment for `ray job ...` commands against this cluster
    temp_dir: Path


def _dashboard_dependency_error() -> str | None:
    """Why this Ray cannot run a dashboard (the job API), or None when it can."""
    try:
        from ray._private.utils import get_dashboard_dependency_error  # private: the check `ray start` makes
    except ImportError:
        return None  # let `ray start` say what is missing
    error = get_dashboard_dependency_error()
    return None if error is None else str(error)


def _ray_client_available() -> bool:
    """`ray start` refuses --ray-client-server-port without grpcio, and starts no client server then."""
    import importlib.util

    return importlib.util.find_spec("grpc") is not None


def _free_ports(count: int) -> list[int]:
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


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path} unreadable: {exc})"


def _stop_cluster(head: subprocess.Popen, temp_dir: Path) -> dict[int, str]:
    """Stop every process of this cluster and no other; return those still alive (should be none)."""
    if head.poll() is None:
        head.terminate()  # `ray start --block` on SIGTERM stops the processes it started
        try:
            head.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    left = wait_gone(temp_dir, head.pid, 5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not left:
            break
        signal_all(left, sig)
        left = wait_gone(temp_dir, head.pid, 10)
    if head.poll() is None:
        head.kill()
    head.wait(timeout=10)
    return left


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _get(url: str, token: str):
    """GET a JSON document of the dashboard's REST API."""
    # No proxy: a proxy set in the environment must not see loopback requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with opener.open(request, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster (2 CPUs) on 127.0.0.1, started with `ray start --head --block`."""
    missing = _dashboard_dependency_error()
    if missing:
        pytest.fail(f"`ray job submit` needs the dashboard of ray[default] ({missing}), a dependency of "
                    "openpose_ray: run scripts/setup.sh", pytrace=False)
    # Short and in /tmp: Ray's unix sockets live under it (107-byte path limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="opray-", dir="/tmp" if os.path.isdir("/tmp") else None))
    dashboard_port, client_port = _free_ports(2)
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS etc. of the caller
    env.update({
        # The job's `python` (resolved by the job supervisor from the raylet's PATH) is the venv's.
        "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "NO_PROXY": ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1,localhost"])),
        "no_proxy": ",".join(filter(None, [env.get("no_proxy"), "127.0.0.1,localhost"])),
    })
    # OPENPOSE_RAY_CACHE (and XDG_CACHE_HOME, HOME) pass through: the job finds the weights
    # in the same cache as this process.
    command = [
        str(RAY), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", "--port=0", "--num-cpus=2", f"--temp-dir={temp_dir}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        "--dashboard-agent-listen-port=0", "--min-worker-port=0", "--max-worker-port=0",
    ]
    if _ray_client_available():
        command.append(f"--ray-client-server-port={client_port}")  # its default, 10001, may be taken
    log = temp_dir / "ray-start.log"
    with open(log, "wb") as out:
        head = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=temp_dir)
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error = None
        while True:
            if head.poll() is not None:
                pytest.fail(f"`ray start` exited with {head.returncode}; its output ends:\n{_tail(log)}", pytrace=False)
            try:
                _get(f"{url}/api/jobs/", token)  # served by the job module, the last part to come up
                break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last_error = exc
            if time.monotonic() > deadline:
                pytest.fail(f"the job API at {url} did not answer within {START_TIMEOUT_S} s ({last_error}); "
                            f"`ray start` output ends:\n{_tail(log)}", pytrace=False)
            time.sleep(0.5)
        yield RayHead(dashboard_url=url, token=token, env=env, temp_dir=temp_dir)
    finally:
        left = _stop_cluster(head, temp_dir)
        dashboard_still_listening = _port_open(dashboard_port)
        if not left:
            shutil.rmtree(temp_dir, ignore_errors=True)
    # Not reached when starting failed: that error is the one to see.
    assert not left, f"processes of the test cluster still alive after teardown: {left}"
    assert not dashboard_still_listening, f"port {dashboard_port} of the test cluster's dashboard still listens"


def _ray_job(head: RayHead, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), "job", *args], env=head.env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _job_logs(head: RayHead, submission_id: str) -> str:
    try:
        logs = _ray_job(head, "logs", "--address", head.dashboard_url, submission_id)
        return "\n".join((logs.stdout + logs.stderr).splitlines()[-60:])
    except subprocess.TimeoutExpired:
        return "(ray job logs timed out)"


def _table(output: Path, name: str):
    return pads.dataset(str(output / name), format="parquet", partitioning="hive").to_table()


def test_annotate_job_runs_with_ray_job_submit(ray_head, labelled_photos, tmp_path):
    from openpose_ray.models.registry import get_entry
    from openpose_ray.models.weights import default_state_dict

    default_state_dict(get_entry("mobilenet_thin"))  # in the cache now: the job does not fetch inside the cluster
    photos_dir = labelled_photos[0].parent.resolve()
    output = tmp_path / "out"
    submission_id = f"openpose-ray-test-{uuid.uuid4().hex[:12]}"
    submit = [
        "submit", "--address", ray_head.dashboard_url, "--working-dir", str(REPO_ROOT),
        "--submission-id", submission_id, "--",
        # --set values are YAML: JSON quoting keeps any path one string.
        "python", "jobs/annotate.py", "--config", "configs/local.yaml",
        "--set", f"input={json.dumps([str(photos_dir)])}", "--set", f"output={json.dumps(str(output))}",
        "--set", "write.render_videos=false", "--set", "write.render_images=true",
    ]
    try:
        submitted = _ray_job(ray_head, *submit, timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _ray_job(ray_head, "stop", "--address", ray_head.dashboard_url, submission_id)
        pytest.fail(f"job {submission_id} did not finish within {JOB_TIMEOUT_S} s; its logs end:\n"
                    f"{_job_logs(ray_head, submission_id)}", pytrace=False)
    # The CLI's words for it, and the REST API's status field (the stable, machine-readable one).
    status = _ray_job(ray_head, "status", "--log-color", "false", "--address", ray_head.dashboard_url, submission_id)
    status_text = (status.stdout + status.stderr).strip()
    info = _get(f"{ray_head.dashboard_url}/api/jobs/{submission_id}", ray_head.token)
    if (submitted.returncode != 0 or f"Job '{submission_id}' succeeded" not in status_text
            or info.get("status") != "SUCCEEDED"):
        pytest.fail(f"`ray job submit` exited with {submitted.returncode}; job status {info.get('status')}: "
                    f"{str(info.get('message'))[-3000:]}\n`ray job status` said: {status_text[-1000:]}\n"
                    f"submit output ends:\n{submitted.stderr[-3000:]}\n{submitted.stdout[-3000:]}\n"
                    f"job logs end:\n{_job_logs(ray_head, submission_id)}", pytrace=False)

    # What --working-dir uploaded (.gitignore'd paths such as .venv are left out by Ray).
    packages = list(ray_head.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"))
    uploaded = sum(f.stat().st_size for p in packages if p.is_dir() for f in p.rglob("*") if f.is_file())
    assert packages and uploaded < MAX_UPLOAD_BYTES, f"working dir upload: {packages}, {uploaded} bytes"

    people = _table(output, "people")
    per_photo = Counter(Path(source).name for source in people.column("source").to_pylist())
    assert people.num_rows == 12, per_photo
    assert set(per_photo) == {p.name for p in labelled_photos}
    assert sorted(per_photo.values()) == [1, 2, 4, 5]

    frames = _table(output, "frames").to_pylist()
    assert len(frames) == 4 and all(f["status"] == "ok" and f["error"] is None for f in frames), frames

    summary = json.loads((output / "summary.json").read_text())
    assert summary["frames"] == 4 and summary["frames_failed"] == 0 and summary["people"] == 12, summary

    rendered = sorted((output / "media" / "images").glob("*"))
    assert len(rendered) == 4 and all(f.stat().st_size > 0 for f in rendered), rendered
