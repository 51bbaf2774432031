"""A job on a cluster that has no node for its inference actors yet: it waits, and runs when one joins.

The cluster is this module's own (``LocalRayCluster``, multi-node): a head with
2 CPUs and no "inference_node" resource, the way a cold autoscaling cluster has
no GPU node. The job (`openpose-ray run`, a driver process of its own) asks for
CPU inference actors that need {inference_node: 1}. It says in its log that it
waits, and 20 s later it still waits and has written nothing. Then a second raylet joins
with the resource, the way the autoscaler's node would. That node's workers
cannot reach the package index (its URL points at a closed port) and have an
empty weights cache, like GPU nodes in a private subnet: the actor takes the
weights the driver shipped through the object store. The job completes with
the tables of a normal run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openpose_ray.config_loader import load_config
from openpose_ray.pipeline.runner import run_job
from output_content import content
from ray_processes import VENV_BIN, LocalRayCluster, free_ports, tail

REPO_ROOT = Path(__file__).resolve().parent.parent
WAITING = "waiting for 1 inference actor(s) needing {CPU: 0.5, inference_node: 1}; the autoscaler has been asked"
STILL_WAITING_AFTER_S = 10  # after the first "waiting" line: the job would have gone on long before
JOB_TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the cluster's processes through /proc")


@pytest.fixture(scope="module")
def cluster():
    cluster = LocalRayCluster(num_cpus=2, multi_node=True)
    try:
        yield cluster
    finally:
        left = cluster.stop()
    assert not left, f"processes of the test cluster still alive after teardown: {left}"


def settings(photos: Path, output: Path) -> list[str]:
    return [f"input={json.dumps([str(photos)])}", f"output={json.dumps(str(output))}", "inference.device=cpu",
            "write.render_images=false", "write.render_videos=false"]


def _node_environment(cluster: LocalRayCluster, resource: str, names: list[str]) -> dict[str, str | None]:
    """The environment variables ``names`` as a task on the node with ``resource`` sees them."""
    probe = ("import json, os, ray\n"
             f"ray.init(address={cluster.address!r}, logging_level='ERROR')\n"
             f"@ray.remote(num_cpus=0, resources={{{resource!r}: 0.001}})\n"
             f"def env(): return {{n: os.environ.get(n) for n in {names!r}}}\n"
             "print(json.dumps(ray.get(env.remote(), timeout=60)))\n")
    done = subprocess.run([sys.executable, "-c", probe], env=cluster.env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_job_waits_for_its_inference_node_then_completes(cluster, ray_session, labelled_photos, tmp_path):
    photos = labelled_photos[0].parent
    output = tmp_path / "out"
    log = tmp_path / "driver.log"
    command = [str(VENV_BIN / "openpose-ray"), "run", "--config", str(REPO_ROOT / "configs" / "local.yaml")]
    for setting in [*settings(photos, output), "inference.actor_resources={inference_node: 1}",
                    f"ray.address={cluster.address}"]:
        command += ["--set", setting]
    # The driver's environment keeps OPENPOSE_RAY_CACHE: it resolves the weights from this session's cache.
    with open(log, "wb") as out:
        driver = subprocess.Popen(command, env=cluster.env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=tmp_path)
    node_cache = tmp_path / "node-cache"
    node_cache.mkdir()
    closed = f"http://127.0.0.1:{free_ports(1)[0]}/simple"
    try:
        deadline = time.monotonic() + 120  # the driver connects in seconds, or tens of them on a busy machine
        while WAITING not in log.read_text(errors="replace"):
            assert driver.poll() is None and time.monotonic() < deadline, f"no waiting message:\n{tail(log)}"
            time.sleep(0.5)
        time.sleep(STILL_WAITING_AFTER_S)
        assert driver.poll() is None, f"the job ended while it should wait:\n{tail(log)}"
        assert not output.exists() or not any(output.rglob("*")), sorted(output.rglob("*"))

        cluster.add_node(num_cpus=1, resources={"inference_node": 1},
                         env={"OPENPOSE_RAY_INDEX_URL": closed, "PIP_INDEX_URL": closed,
                              "OPENPOSE_RAY_CACHE": str(node_cache)})
        driver.wait(timeout=JOB_TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, tail(log, 80)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["frames"] == 4 and summary["frames_failed"] == 0 and summary["people"] == 12, summary
    assert summary["inference"]["actor"] == {"CPU": 0.5, "inference_node": 1.0}
    assert summary["inference"]["waited_for_actors_s"] >= STILL_WAITING_AFTER_S
    # The inference node's workers really had no index and no weights, and never fetched or cached weights
    # (only the OpenVINO model converted from the shipped weights, openpose_ray.backends, may be cached).
    assert _node_environment(cluster, "inference_node", ["OPENPOSE_RAY_INDEX_URL", "OPENPOSE_RAY_CACHE"]) == {
        "OPENPOSE_RAY_INDEX_URL": closed, "OPENPOSE_RAY_CACHE": str(node_cache)}
    assert {path.name for path in node_cache.iterdir()} <= {"openvino"}

    normal = tmp_path / "normal"
    run_job(load_config(REPO_ROOT / "configs" / "local.yaml", settings(photos, normal)))
    assert content(output) == content(normal)
