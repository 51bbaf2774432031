"""Where the network is fast (a GPU node), decoding gets the cores the other stages leave.

The job runs on the session's 2-CPU Ray with ``InstantActor`` in the inference
stage, which returns every frame at once and without people: what is left is
listing, decoding, resizing and writing. Ray Data sizes each operator's CPU
budget; the job shapes its stages (decode reserves 0.7 CPU, post-processing
runs a bounded number of tasks) so that two decode tasks fit beside
post-processing and the actor. One decode task at a time left a core idle
(docs/benchmarks-history.md "Decoding on every core").
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle

from openpose_ray.config_loader import load_config
from openpose_ray.pipeline import runner
from openpose_ray.pipeline.actor_pool import ClusterView
from openpose_ray.pipeline.records import InferredShard, PreparedShard, from_row, to_row

REPO_ROOT = Path(__file__).resolve().parent.parent

# Ray's workers cannot import this test module: InstantActor travels by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class InstantActor:
    """Stands where InferenceActor stands (same constructor); no network, no people in any frame."""

    def __init__(self, config, weights, device, torch_threads, peaks_on_device):
        pass

    def __call__(self, row: dict) -> dict:
        record = from_row(row)
        if not isinstance(record, PreparedShard):
            return row
        return to_row(InferredShard(record.frames, (None,) * len(record.inputs), 0, record.seconds,
                                    record.ended.plus(infer=time.time())), row["key"])


@pytest.mark.parametrize("cpus, autoscaler_cpus, tasks", [(2, None, 1), (8, None, 2), (2, 194, 48), (3, None, 1)])
def test_post_processing_tasks_follow_the_cpus_the_cluster_can_have(cpus, autoscaler_cpus, tasks):
    cluster = ClusterView({"CPU": float(cpus)}, ({"CPU": float(cpus)},),
                          None if autoscaler_cpus is None else {"CPU": float(autoscaler_cpus)})
    assert runner.post_tasks(cluster) == tasks


def test_two_decode_tasks_run_at_once_when_the_network_is_instant(ray_session, data_dir, tmp_path, monkeypatch):
    build = runner.build_dataset
    monkeypatch.setattr(runner, "build_dataset", lambda *args, **kwargs: build(*args, **kwargs, actor_class=InstantActor))
    config = load_config(REPO_ROOT / "configs" / "local.yaml", [
        f"input={json.dumps([str(data_dir / 'videos')])}", f"output={tmp_path / 'out'}",
        "write.render_images=false", "write.render_videos=false", "sources.frames_per_segment=64",
        "inference.cpus_per_actor=0.1", "inference.peaks_on=device",
    ])
    summary = runner.run_job(config)
    assert summary["frames"] == 205 + 230 and summary["frames_failed"] == 0 and summary["people"] == 0
    assert summary["shards"] == 3 + 4  # segments of 64, cut at key frames: street 0, 64, 150; sports 0, 60, 120, 180
    assert summary["tasks_at_once"]["decode"]["most"] == 2  # 0.7 CPU each, beside 0.5 + 0.1, on 2 CPUs
    assert summary["tasks_at_once"]["post"]["most"] == 1  # runner.post_tasks: one per 4 CPUs, at least one
