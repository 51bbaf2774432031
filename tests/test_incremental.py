"""Incremental runs: the manifest decides what is left to do, and the tables hold every input once.

One output folder goes through a sequence of runs (module-scoped, in order):
first run; the same again (no model work); two files added (only those);
a file modified (only that one, its old rows replaced); the settings changed
(everything again, old rows replaced); --force (everything again); the output
locked by another run (refused at once; --break-lock); a broken input (not tried
again, one row).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest

from openpose_ray.config_loader import load_config
from openpose_ray.pipeline.runner import run_job
from openpose_ray.tables import read_table

from output_content import assert_exactly_once, content, glob_table
from synthetic_media import video_clip

REPO_ROOT = Path(__file__).resolve().parent.parent
NET_SIZE = (216, 184)  # small: this module runs the job seven times


def config_for(inputs: Path, output: Path, *extra: str):
    return load_config(REPO_ROOT / "configs" / "local.yaml", [
        f"input={json.dumps([str(inputs)])}", f"output={output}", f"model.net_size={list(NET_SIZE)}", "model.resize_mode=stretch",
        "write.render_images=false", "write.render_videos=false", "sources.images_per_shard=2", *extra])


@pytest.fixture(scope="module")
def folder(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("incremental")
    photos = sorted((data_dir / "coco_val2014_samples").glob("*.jpg"))
    (root / "in").mkdir()
    for photo in photos[:3]:
        shutil.copy(photo, root / "in" / photo.name)
    return {"root": root, "in": root / "in", "out": root / "out", "spare": photos[3:5]}


def sources(output: Path) -> list[str]:
    return sorted({Path(s).name for s in read_table(str(output), "frames")["source"].to_pylist()})


@pytest.fixture(scope="module")
def first(ray_session, folder):
    summary = run_job(config_for(folder["in"], folder["out"]))
    return summary, content(folder["out"])


def test_first_run_annotates_everything(first, folder):
    summary, tables = first
    assert summary["frames_inferred"] == 3 and summary["inputs"]["already_done"] == 0
    assert summary["manifest"]["inputs_current"] == 3
    assert len(tables["frames"]) == 3 and len(tables["people"]) == summary["people"] > 0
    assert_exactly_once(folder["out"])


def test_the_same_run_again_does_no_model_work(first, folder):
    files_before = sorted(p for p in (folder["out"]).rglob("*.parquet") if "_manifest" not in p.parts)
    summary = run_job(config_for(folder["in"], folder["out"]))
    assert summary["frames_inferred"] == 0 and summary["shards"] == 0 and summary["frames"] == 0
    assert summary["inputs"]["already_done"] == 3
    assert content(folder["out"]) == first[1]
    assert sorted(p for p in folder["out"].rglob("*.parquet") if "_manifest" not in p.parts) == files_before


def test_two_added_files_are_the_only_ones_processed(first, folder, tmp_path):
    for photo in folder["spare"]:
        shutil.copy(photo, folder["in"] / photo.name)
    summary = run_job(config_for(folder["in"], folder["out"]))
    assert summary["frames_inferred"] == 2 and summary["inputs"]["images"] == 2
    assert summary["inputs"]["already_done"] == 3
    assert sources(folder["out"]) == sorted(p.name for p in folder["in"].iterdir())
    assert_exactly_once(folder["out"])
    # The same five inputs annotated in one go give the same rows.
    fresh = tmp_path / "fresh"
    run_job(config_for(folder["in"], fresh))
    assert content(folder["out"]) == content(fresh)
    # After a finished run the files hold nothing else: a plain glob reads the same rows.
    assert glob_table(folder["out"], "frames").num_rows == 5


def test_a_modified_input_is_processed_again_and_replaces_its_rows(first, folder):
    target = folder["in"] / sorted(os.listdir(folder["in"]))[0]
    before = read_table(str(folder["out"]), "frames").to_pylist()
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new version (mtime)
    summary = run_job(config_for(folder["in"], folder["out"]))
    assert summary["frames_inferred"] == 1 and summary["inputs"]["already_done"] == 4
    after = read_table(str(folder["out"]), "frames").to_pylist()
    assert len(after) == 5
    changed = [f for f in after if f["source"] == str(target)]
    assert changed[0]["run_id"] == summary["run_id"]
    assert {f["run_id"] for f in before if f["source"] == str(target)} != {summary["run_id"]}
    assert glob_table(folder["out"], "frames").num_rows == 5  # the replaced file is gone
    assert_exactly_once(folder["out"])


def test_changed_settings_reprocess_everything_and_replace_the_old_rows(first, folder):
    summary = run_job(config_for(folder["in"], folder["out"], "postprocess.min_parts=5"))
    assert summary["frames_inferred"] == 5 and summary["inputs"]["already_done"] == 0
    frames = read_table(str(folder["out"]), "frames")
    assert set(frames["config_fingerprint"].to_pylist()) == {summary["provenance"]["config_fingerprint"]}
    assert glob_table(folder["out"], "frames").num_rows == 5
    assert_exactly_once(folder["out"])
    # Back to the first settings: a new generation again, everything redone, same rows as the fresh run.
    summary = run_job(config_for(folder["in"], folder["out"]))
    assert summary["frames_inferred"] == 5


def test_force_recomputes_everything_without_duplicates(first, folder):
    expected = content(folder["out"])
    summary = run_job(config_for(folder["in"], folder["out"]), force=True)
    assert summary["frames_inferred"] == 5 and summary["forced"] is True
    assert content(folder["out"]) == expected
    assert set(read_table(str(folder["out"]), "frames")["run_id"].to_pylist()) == {summary["run_id"]}
    assert glob_table(folder["out"], "people").num_rows == len(expected["people"])


def test_a_run_on_a_locked_output_stops_at_once_naming_the_holder_and_break_lock_takes_it(first, folder, capsys):
    import socket
    import subprocess
    import sys
    import time
    from datetime import datetime, timezone

    import psutil

    from openpose_ray.outputs.lock import LOCK, LockInfo
    from openpose_ray.run_command import main

    argv = ["--config", str(REPO_ROOT / "configs" / "local.yaml"), "--set", f"input={json.dumps([str(folder['in'])])}",
            "--set", f"output={folder['out']}", "--set", f"model.net_size={list(NET_SIZE)}",
            "--set", "model.resize_mode=stretch", "--set", "write.render_images=false",
            "--set", "write.render_videos=false", "--set", "sources.images_per_shard=2"]
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # a run still going
    try:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        info = LockInfo("20261130T000000Z-held", socket.gethostname(), holder.pid,
                        psutil.Process(holder.pid).create_time(), now, now, "h" * 32)
        (folder["out"] / LOCK).write_bytes(info.to_bytes())
        files = sorted((p, p.stat().st_mtime_ns) for p in folder["out"].rglob("*") if p.is_file())
        started = time.monotonic()
        assert main(argv) == 4
        assert time.monotonic() - started < 60
        message = capsys.readouterr().err
        assert "20261130T000000Z-held" in message and f"pid {holder.pid}" in message and "--break-lock" in message
        assert sorted((p, p.stat().st_mtime_ns) for p in folder["out"].rglob("*") if p.is_file()) == files
        assert main(argv + ["--break-lock"]) == 0
        assert json.loads(capsys.readouterr().out)["inputs"]["already_done"] == 5
        assert not (folder["out"] / LOCK).exists()  # released at the end of the run
    finally:
        holder.kill()
        holder.wait()


def test_an_input_that_failed_for_good_is_not_tried_again_and_keeps_one_row(first, folder):
    """An empty file is corrupt: a fact about the input, so the next run leaves it (a passing failure,
    e.g. an outage, is tried again: tests/test_s3_outage.py)."""
    (folder["in"] / "zz_empty.jpg").write_bytes(b"")
    failed = run_job(config_for(folder["in"], folder["out"]))
    assert failed["frames_failed"] == 1 and failed["frames_inferred"] == 0
    assert failed["inputs"]["already_done"] == 5
    again = run_job(config_for(folder["in"], folder["out"]))
    assert again["frames_failed"] == 0 and again["frames"] == 0 and again["inputs"]["already_done"] == 6
    rows = [f for f in read_table(str(folder["out"]), "frames").to_pylist() if f["source"].endswith("zz_empty.jpg")]
    assert [(r["status"], r["error_kind"], r["run_id"]) for r in rows] == [("error", "corrupt", failed["run_id"])]
    assert_exactly_once(folder["out"])


def street_clip(data_dir: Path, tmp_path: Path) -> Path:
    """A folder holding the first 48 frames of the street video at 320 px (3 segments of 16)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    video_clip(data_dir / "videos" / "street_720p_h264.avi", inputs / "street.mp4", 48, width=320)
    return inputs


def run_killed_at(step: str, config, monkeypatch) -> None:
    """Run the job with the driver killed when it reaches ``step`` (a dotted function name)."""

    def driver_dies(*args, **kwargs):
        raise KeyboardInterrupt("driver killed")

    with monkeypatch.context() as patch:
        patch.setattr(step, driver_dies)
        with pytest.raises(KeyboardInterrupt):
            run_job(config)


def test_a_video_whose_assembly_was_lost_is_joined_by_the_next_run(ray_session, data_dir, tmp_path, monkeypatch):
    """The driver dies after the last segment commits, before joining the rendered segments: the next
    run does no model work and joins the segments the earlier run left (all of them, in order)."""
    import av

    config = config_for(street_clip(data_dir, tmp_path), tmp_path / "out", "write.render_videos=true",
                        "sources.frames_per_segment=16")
    run_killed_at("openpose_ray.pipeline.rendering.assemble_pending_videos", config, monkeypatch)
    segments = sorted(p for p in (tmp_path / "out" / "media" / ".segments").rglob("*.mp4") if p.is_file())
    assert len(segments) == 3 and not (tmp_path / "out" / "media" / "videos").exists()

    summary = run_job(config)
    assert summary["frames_inferred"] == 0 and summary["inputs"]["already_done"] == 1
    (video,) = summary["rendered_videos"]
    with av.open(video) as container:
        assert sum(1 for _ in container.decode(video=0)) == 48
    assert not [p for p in (tmp_path / "out" / "media").rglob("*.mp4") if p.is_file() and ".segments" in p.parts]


def test_track_ids_survive_an_interrupted_tracking_step_and_a_redone_segment(ray_session, data_dir, tmp_path,
                                                                              monkeypatch):
    """Tracks are filled in once a video is complete: a driver killed before that step leaves NULL ids
    that the next run fills without model work; a segment annotated again (its commit lost) gives
    the whole video the same ids again, every row once; a run with nothing new re-tracks nothing."""
    import pyarrow.parquet as pq

    output = tmp_path / "out"
    config = config_for(street_clip(data_dir, tmp_path), output, "sources.frames_per_segment=16")
    run_killed_at("openpose_ray.pipeline.runner.track_pending_videos", config, monkeypatch)
    people = read_table(str(output), "people")
    assert people.num_rows > 0 and people["track_id"].null_count == people.num_rows

    with monkeypatch.context() as patch:
        patch.setattr("openpose_ray.outputs.tracks._IN_DRIVER", 0)  # in a Ray task here, by the driver below
        summary = run_job(config)
    assert summary["frames_inferred"] == 0 and summary["tracking"]["videos_tracked"] == 1
    order = [("frame_index", "ascending"), ("person_index", "ascending")]
    tracked = read_table(str(output), "people").sort_by(order)
    assert tracked["track_id"].null_count == 0 and summary["tracking"]["tracks"] >= 1

    # the middle segment's commit is lost (as if its run had died before committing it)
    snapshot = output / "_manifest" / "inputs.parquet"
    records = pq.read_table(snapshot)
    pq.write_table(records.filter(pa.compute.not_equal(records["start_frame"], 16)), snapshot)
    summary = run_job(config)
    assert summary["frames_inferred"] == 16 and summary["tracking"]["videos_tracked"] == 1
    assert_exactly_once(output)
    again = read_table(str(output), "people").sort_by(order)
    assert again.drop_columns(["run_id", "shard_id"]).equals(tracked.drop_columns(["run_id", "shard_id"]))
    assert glob_table(output, "people").num_rows == again.num_rows  # plain readers see the same rows

    assert run_job(config)["tracking"] == {"enabled": True, "videos_tracked": 0, "tracks": 0}


def test_status_of_a_killed_run_and_of_an_empty_output(ray_session, data_dir, tmp_path, monkeypatch, capsys):
    """A run killed before its end leaves commit files only: status counts what they hold and says the
    run did not end; an empty folder has nothing annotated; a missing one is a usage error."""
    from openpose_ray.cli import main

    output = tmp_path / "out"
    config = config_for(street_clip(data_dir, tmp_path), output, "sources.frames_per_segment=16")
    run_killed_at("openpose_ray.outputs.manifest.finalize", config, monkeypatch)
    assert main(["status", str(output), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["inputs"]["videos_complete"] == 1 and status["frames"] == 48
    (run,) = status["runs"]
    assert not run["ended"] and run["shards"] == 3
    assert main(["status", str(output)]) == 0
    assert "still running or killed" in capsys.readouterr().out

    (tmp_path / "empty").mkdir()
    assert main(["status", str(tmp_path / "empty")]) == 0
    assert "nothing annotated yet" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
