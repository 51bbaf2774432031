"""kill -9 in the middle of a job: the driver (then a re-run), or a worker (the job goes on).

Inputs: 4 photos (one shard each), a 96-frame clip of a real street video in
segments of 24 frames, and a WebDataset tar of 2 photos with captions (one shard, with its pose
shard written), so a run commits 9 shards one after the other. Each case is compared with an
uninterrupted run over the same inputs: the frames and people tables hold the
same rows, each (source, frame, person) exactly once, no Parquet file or pose shard a
reader can see is partial, and the pose shard equals the uninterrupted run's byte for byte.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from openpose_ray.config_loader import load_config
from openpose_ray.pipeline.runner import run_job
from output_content import assert_exactly_once, content
from ray_processes import cluster_processes, signal_all, wait_gone
from synthetic_media import video_clip

REPO_ROOT = Path(__file__).resolve().parent.parent
NET_SIZE = (216, 184)
SETTINGS = [f"model.net_size={list(NET_SIZE)}", "model.resize_mode=stretch", "write.render_images=false", "write.render_videos=false",
            "sources.images_per_shard=1", "sources.frames_per_segment=24", "write.pose_shards=true",
            "write.pose_shard_maps=true"]
CLIP_FRAMES = 96
TAR_PHOTOS = 2
TOTAL_FRAMES = 4 + CLIP_FRAMES + TAR_PHOTOS
SHARDS = 4 + CLIP_FRAMES // 24 + 1
KILL_AFTER_COMMITS = 3

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc")


def overrides(inputs: Path, output: Path) -> list[str]:
    return [f"input={json.dumps([str(inputs)])}", f"output={output}", *SETTINGS]


def commits(output: Path) -> list[Path]:
    return sorted((output / "_manifest" / "commits").glob("*/*.parquet"))


def wait_for(condition, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def assert_every_visible_file_is_whole(output: Path) -> None:
    for path in output.rglob("*.parquet"):
        pq.read_metadata(path)  # raises on a truncated or partial file
    for path in output.rglob("*.pose.tar"):
        with tarfile.open(path) as archive:  # raises on a truncated tar
            assert len(archive.getnames()) == 2 * TAR_PHOTOS


def pose_shards(output: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in output.rglob("*.pose.tar")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("crash_inputs")
    for photo in sorted((data_dir / "coco_val2017_mini").glob("*.jpg")):
        shutil.copy(photo, root / photo.name)
    video_clip(data_dir / "videos" / "street_720p_h264.avi", root / "street.mp4", CLIP_FRAMES, width=640)
    with tarfile.open(root / "samples.tar", "w") as archive:
        for i, photo in enumerate(sorted((data_dir / "coco_val2014_samples").glob("*.jpg"))[:TAR_PHOTOS]):
            archive.add(photo, arcname=f"s{i:03d}.jpg")
            caption = f"caption {i}".encode()
            info = tarfile.TarInfo(f"s{i:03d}.txt")
            info.size = len(caption)
            archive.addfile(info, io.BytesIO(caption))
    return root


@pytest.fixture(scope="module")
def reference_output(ray_session, inputs, tmp_path_factory):
    output = tmp_path_factory.mktemp("crash_reference")
    summary = run_job(load_config(REPO_ROOT / "configs" / "local.yaml", overrides(inputs, output)))
    assert summary["frames"] == TOTAL_FRAMES and summary["frames_failed"] == 0
    assert len(pose_shards(output)) == 1
    return output


@pytest.fixture(scope="module")
def reference(reference_output):
    return content(reference_output)


def test_driver_killed_mid_run_then_rerun_gives_the_uninterrupted_tables(reference, reference_output, inputs, tmp_path):
    output = tmp_path / "out"
    ray_tmp = Path(tempfile.mkdtemp(prefix="opk", dir="/tmp"))  # short: Ray's socket paths have a length limit
    command = [str(Path(sys.executable).parent / "openpose-ray"), "run", "--config", str(REPO_ROOT / "configs/local.yaml"),
               *[arg for o in overrides(inputs, output) for arg in ("--set", o)]]
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_for(lambda: len(commits(output)) >= KILL_AFTER_COMMITS or driver.poll() is not None, 240,
                 f"{KILL_AFTER_COMMITS} committed shards")
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        # What the dead driver started (its in-process Ray) goes too, as when its machine is lost.
        left = cluster_processes(ray_tmp, driver.pid)
        signal_all(left, signal.SIGKILL)
        assert not wait_gone(ray_tmp, driver.pid, 20)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        log.close()

    committed_before = len(commits(output))
    assert KILL_AFTER_COMMITS <= committed_before < SHARDS
    assert not (output / "summary.json").exists()
    assert_every_visible_file_is_whole(output)
    for name, data in pose_shards(output).items():  # published before the kill: whole and final
        assert data == pose_shards(reference_output)[name]

    summary = run_job(load_config(REPO_ROOT / "configs" / "local.yaml", overrides(inputs, output)))
    assert summary["inputs"]["already_done"] + summary["frames_inferred"] > 0
    assert summary["frames_inferred"] < TOTAL_FRAMES  # the committed shards were not done again
    assert content(output) == reference
    assert pose_shards(output) == pose_shards(reference_output)
    assert_exactly_once(output)
    assert not commits(output)  # folded into the snapshot
    assert_every_visible_file_is_whole(output)


def _worker_pids(name: str) -> list[int]:
    """This session's Ray workers busy with ``name``: an actor class, or "task" for any map task (Ray
    titles a worker "ray::<task>" while it runs one, "ray::MapWorker(...)" for an actor). Only
    processes of the test session's own cluster (found by its session folder), never another Ray
    on the same machine."""
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    pids = []
    for pid, title in cluster_processes(session, group=-1).items():
        if not title.startswith("ray::"):
            continue
        busy_task = title.startswith("ray::MapBatches(")  # the stages run as map_batches (pipeline.records.per_row)
        if (name == "task" and busy_task) or (name != "task" and name in title):
            pids.append(pid)
    return pids


def test_workers_killed_mid_run_the_job_completes_with_the_uninterrupted_tables(reference, reference_output, inputs,
                                                                                tmp_path):
    output = tmp_path / "out"
    killed: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def killer():
        try:
            wait_for(lambda: len(commits(output)) >= 2, 240, "2 committed shards")
            for name in ("InferenceActor", "task"):  # a decode or post-process + write task
                pids = wait_for(lambda: _worker_pids(name), 60, f"a worker running {name}", poll=0.05)
                os.kill(pids[0], signal.SIGKILL)
                killed.append((name, pids[0]))
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = run_job(load_config(REPO_ROOT / "configs" / "local.yaml", overrides(inputs, output)))
    thread.join(timeout=60)
    assert not errors, errors
    assert [name for name, _ in killed] == ["InferenceActor", "task"]
    assert summary["frames"] == TOTAL_FRAMES and summary["frames_failed"] == 0
    assert content(output) == reference
    assert pose_shards(output) == pose_shards(reference_output)
    assert_exactly_once(output)
    again = run_job(load_config(REPO_ROOT / "configs" / "local.yaml", overrides(inputs, output)))
    assert again["frames_inferred"] == 0 and again["inputs"]["already_done"] == 6
