"""The inference actor pool's shape from the config and the cluster, and the wait for its actors.

plan_actors is a pure function of the pool config and a ClusterView; the
clusters here are hand-made views (a cold GPU cluster, a fixed one, an
unbounded autoscaler). The wait is tried on the session's in-process Ray with a
resource no node has: the job fails after its bound, says what never appeared,
and has written nothing.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import yaml

from openpose_ray.config_loader import load_config
from openpose_ray.jobconfig import InferencePoolConfig
from openpose_ray.pipeline.actor_pool import ClusterView, max_resources_from_launcher_config, plan_actors

REPO_ROOT = Path(__file__).resolve().parent.parent

COLD_GPU_CLUSTER = ClusterView(total={"CPU": 8.0}, nodes=({"CPU": 8.0},), autoscaler_max={"CPU": 72.0, "GPU": 8.0})
FIXED_CPU_CLUSTER = ClusterView(total={"CPU": 2.0}, nodes=({"CPU": 2.0},), autoscaler_max=None)
FIXED_GPU_CLUSTER = ClusterView(total={"CPU": 16.0, "GPU": 2.0}, nodes=({"CPU": 8.0, "GPU": 1.0},) * 2,
                                autoscaler_max=None)


def test_device_auto_waits_for_the_gpus_an_autoscaler_can_start():
    plan = plan_actors(InferencePoolConfig(device="auto", cpus_per_actor=1), COLD_GPU_CLUSTER)
    assert plan.device == "cuda" and plan.bundle == {"CPU": 1, "GPU": 1.0}
    assert plan.max_actors == 8  # the autoscaler's GPUs, not the 0 present
    assert plan.peaks_on_device and "autoscaler can start GPU nodes" in plan.why


def test_device_auto_is_cpu_where_no_gpu_can_ever_appear():
    plan = plan_actors(InferencePoolConfig(device="auto"), FIXED_CPU_CLUSTER)
    assert plan.device == "cpu" and plan.bundle == {"CPU": 0.5} and plan.max_actors == 1
    assert plan.torch_threads == 2 and not plan.peaks_on_device


def test_gpu_pool_size_on_a_fixed_cluster_and_explicit_limits():
    assert plan_actors(InferencePoolConfig(), FIXED_GPU_CLUSTER).max_actors == 2
    assert plan_actors(InferencePoolConfig(gpus_per_actor=0.5), FIXED_GPU_CLUSTER).max_actors == 4
    assert plan_actors(InferencePoolConfig(max_actors=3), COLD_GPU_CLUSTER).max_actors == 3
    # device cuda on a cluster that has no GPU and no autoscaler: no failure at start (GPU nodes
    # may join by hand); the wait for the actors decides.
    plan = plan_actors(InferencePoolConfig(device="cuda"), FIXED_CPU_CLUSTER)
    assert plan.device == "cuda" and plan.min_actors == 1


def test_custom_resources_pin_and_bound_the_pool():
    pool = InferencePoolConfig(device="cpu", actor_resources={"inference_node": 1.0})
    assert plan_actors(pool, FIXED_CPU_CLUSTER).bundle == {"CPU": 0.5, "inference_node": 1.0}
    three = ClusterView({"CPU": 8.0, "inference_node": 3.0}, ({"CPU": 8.0, "inference_node": 3.0},), None)
    assert plan_actors(InferencePoolConfig(device="cpu", actor_resources={"inference_node": 1.0}), three).max_actors == 3
    gpu = InferencePoolConfig(actor_resources={"accelerator_type:A10G": 0.001})
    assert plan_actors(gpu, COLD_GPU_CLUSTER).bundle == {"CPU": 0.5, "GPU": 1.0, "accelerator_type:A10G": 0.001}


def test_an_unbounded_autoscaler_leaves_the_pool_size_to_it():
    unbounded = ClusterView({"CPU": 4.0}, ({"CPU": 4.0},), {"CPU": float(sys.maxsize), "GPU": float(sys.maxsize)})
    plan = plan_actors(InferencePoolConfig(min_actors=2), unbounded)
    assert plan.device == "cuda" and plan.max_actors is None and plan.min_actors == 2


def test_the_shipped_cluster_definition_offers_eight_gpus():
    config = yaml.safe_load((REPO_ROOT / "infra" / "ray-cluster.yaml").read_text())
    assert max_resources_from_launcher_config(config)["GPU"] == 8
    # max_workers of the whole cluster caps what the node types add up to
    config["max_workers"] = 3
    assert max_resources_from_launcher_config(config)["GPU"] == 3


def test_new_inference_keys_are_checked():
    for bad, message in [("inference.actor_resources={GPU: 1}", "gpus_per_actor"),
                         ("inference.actor_resources={node_a: 0}", "must be > 0"),
                         ("inference.wait_for_actors_s=0", "wait_for_actors_s"),
                         ("inference.precision=fp8", "precision"),
                         ("inference.device=cpu", None)]:
        overrides = ["input=/x", "output=/y", bad] + (["inference.precision=fp16"] if message is None else [])
        with pytest.raises(ValueError, match=message or "fp16 needs a CUDA device"):
            load_config(None, overrides)


def test_job_fails_naming_the_resources_that_never_appeared(ray_session, ray_data_context, labelled_photos, tmp_path,
                                                            caplog, capsys):
    from openpose_ray.run_command import main

    output = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="openpose_ray")
    code = main(["--config", str(REPO_ROOT / "configs" / "local.yaml"),
                 "--set", f"input={json.dumps([str(labelled_photos[0].parent)])}", "--set", f"output={output}",
                 "--set", "inference.device=cpu", "--set", "inference.actor_resources={never_there: 1}",
                 "--set", "inference.wait_for_actors_s=5"])
    assert code == 3
    error = capsys.readouterr().err
    assert "no inference actor could be placed within 5 s (inference.wait_for_actors_s): 1 actor(s) need " \
           "{CPU: 0.5, never_there: 1} each (cpu); no node of the cluster has never_there: 1." in error
    assert "waiting for 1 inference actor(s) needing {CPU: 0.5, never_there: 1}; the autoscaler has been asked" \
        in caplog.text
    assert not output.exists() or not any(output.rglob("*")), sorted(output.rglob("*"))
    left = [pg for pg in ray_session.util.placement_group_table().values() if pg["state"] != "REMOVED"]
    assert not left, f"the request for the actors' resources was left behind: {left}"
