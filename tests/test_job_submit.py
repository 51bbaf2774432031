"""`ray job submit` of jobs/annotate.py on a real Ray cluster.

The cluster is a head node that `ray start --block` runs in a subprocess of
its own (not the in-process Ray of the other tests), on loopback, with 2 CPUs.
The job is submitted the way README, docs/clusters.md and jobs/annotate.py tell a user to
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
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from ray_processes import VENV_BIN, LocalRayCluster, free_ports, port_open

REPO_ROOT = Path(__file__).resolve().parent.parent
RAY = VENV_BIN / "ray"
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 400
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


def _get(url: str, token: str):
    """GET a JSON document of the dashboard's REST API."""
    # No proxy: a proxy set in the environment must not see loopback requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with opener.open(request, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster (2 CPUs) on 127.0.0.1 with its dashboard (the job API)."""
    missing = _dashboard_dependency_error()
    if missing:
        pytest.fail(f"`ray job submit` needs the dashboard of ray[default] ({missing}), a dependency of "
                    "openpose_ray: run scripts/setup.sh", pytrace=False)
    dashboard_port, client_port = free_ports(2)
    url = f"http://127.0.0.1:{dashboard_port}"
    head_args = ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    if _ray_client_available():
        head_args.append(f"--ray-client-server-port={client_port}")  # its default, 10001, may be taken

    def job_api_answers(cluster: LocalRayCluster) -> bool:  # served by the job module, the last part to come up
        try:
            _get(f"{url}/api/jobs/", cluster.token)
            return True
        except (urllib.error.URLError, OSError, ValueError):
            return False

    # OPENPOSE_RAY_CACHE (and XDG_CACHE_HOME, HOME) pass through: the job finds the weights
    # in the same cache as this process.
    cluster = LocalRayCluster(num_cpus=2, head_args=tuple(head_args), ready=job_api_answers,
                              timeout_s=START_TIMEOUT_S)
    try:
        yield RayHead(dashboard_url=url, token=cluster.token, env=cluster.env, temp_dir=cluster.temp_dir)
    finally:
        left = cluster.stop()
        dashboard_still_listening = port_open(dashboard_port)
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
