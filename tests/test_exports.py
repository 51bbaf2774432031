"""Exports of a job's output (openpose_ray.exports, `openpose-ray export`): OpenPose JSON files and COCO results.

Runs the job once over the 4 labelled photos and two short clips of the street video (one stored
turned, with a display matrix), at the shipped defaults."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from openpose_ray.cli import main
from openpose_ray.coco import evaluate_keypoints
from openpose_ray.config_loader import load_config
from openpose_ray.exports import coco_results, openpose_json_names
from openpose_ray.outputs.people_table import read_keypoints
from openpose_ray.pipeline.runner import run_job
from openpose_ray.skeleton import COCO18
from openpose_ray.tables import read_table
from people_match import job_estimator
from synthetic_media import rotated_clip, video_clip

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def job_output(ray_session, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    (root / "clips").mkdir()
    upright = video_clip(data_dir / "videos" / "street_720p_h264.avi", root / "clips" / "upright.mp4", CLIP_FRAMES, width=640)
    rotated_clip(upright, root / "clips" / "portrait.mp4")
    output = root / "out"
    inputs = [str(data_dir / "coco_val2017_mini"), str(root / "clips")]
    config = load_config(REPO_ROOT / "configs" / "local.yaml", [
        f"input={json.dumps(inputs)}", f"output={output}", "sources.frames_per_segment=100"])
    run_job(config)
    return config, output


CLIP_FRAMES = 8


def test_a_video_with_a_display_matrix_is_annotated_as_shown(job_output):
    """portrait.mp4 stores upright.mp4's frames turned, with a display matrix turning them back: its
    frames rows have the displayed size and its people are upright.mp4's (within the 4:4:4 round trip)."""
    _, output = job_output
    frames = read_table(str(output), "frames").to_pylist()
    shown = {(f["source"].rsplit("/", 1)[-1], f["width"], f["height"]) for f in frames if "/clips/" in f["source"]}
    assert shown == {("upright.mp4", 640, 360), ("portrait.mp4", 640, 360)}
    people = read_table(str(output), "people")
    keypoints = read_keypoints(people, COCO18)
    by_clip = {}
    for row, (source, frame) in enumerate(zip(people["source"].to_pylist(), people["frame_index"].to_pylist())):
        by_clip.setdefault(source.rsplit("/", 1)[-1], {}).setdefault(frame, []).append(keypoints[row])
    upright, portrait = by_clip["upright.mp4"], by_clip["portrait.mp4"]
    assert sum(len(p) for p in upright.values()) >= CLIP_FRAMES  # people in most frames
    matched = 0
    for frame, persons in upright.items():
        for person in persons:  # the nearest person of the same frame of the portrait video, by neck
            other = min(portrait.get(frame, []), key=lambda k: np.abs(k[1, :2] - person[1, :2]).sum(), default=None)
            found = (person[:, 2] > 0) & (other is not None and other[:, 2] > 0)
            if other is not None and found.sum() >= 4 and np.abs(other[found, :2] - person[found, :2]).max() < 4.0:
                matched += 1
    assert matched >= 0.8 * sum(len(p) for p in upright.values())


def test_openpose_json_files_hold_every_frame_and_every_person(job_output, tmp_path, capsys):
    _, output = job_output
    dest = tmp_path / "json"
    assert main(["export", str(output), "--format", "openpose-json", "--to", str(dest)]) == 0
    counts = json.loads(capsys.readouterr().out)
    people = read_table(str(output), "people")
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.json"))
    assert counts["files"] == len(files) == 4 + 2 * CLIP_FRAMES and counts["people"] == people.num_rows
    assert "000000040083_keypoints.json" in files
    assert [f for f in files if f.startswith("upright/")] == [
        f"upright/upright_{i:012d}_keypoints.json" for i in range(CLIP_FRAMES)]
    keypoints = read_keypoints(people, COCO18)
    sources = people["source"].to_pylist()
    frames, persons, tracks = (people[c].to_pylist() for c in ("frame_index", "person_index", "track_id"))
    checked = 0
    for name in ("000000000785", "000000040083", "000000196141", "000000197388"):
        document = json.loads((dest / f"{name}_keypoints.json").read_text())
        rows = [i for i, s in enumerate(sources) if s.endswith(f"{name}.jpg")]
        assert document["version"] == 1.3 and len(document["people"]) == len(rows) > 0
        for row in rows:
            person = document["people"][persons[row]]
            assert person["person_id"] == [-1] and person["face_keypoints_2d"] == [] and person["pose_keypoints_3d"] == []
            np.testing.assert_array_equal(np.float32(person["pose_keypoints_2d"]), keypoints[row].ravel())
            checked += 1
    assert checked == 12  # the annotated people: 1 + 2 + 4 + 5
    row = next(i for i, s in enumerate(sources) if s.endswith("upright.mp4") and frames[i] == 5)
    document = json.loads((dest / f"upright/upright_{5:012d}_keypoints.json").read_text())
    assert document["people"][persons[row]]["person_id"] == [tracks[row]]
    assert len(document["people"][0]["pose_keypoints_2d"]) == 18 * 3


def test_same_stems_in_two_folders_get_apart():
    import pyarrow as pa

    frames = pa.table({"source": ["/a/x.jpg", "/b/x.jpg", "/b/y.jpg"], "member": [None, None, None],
                       "source_kind": ["image"] * 3, "frame_index": [0, 0, 0], "status": ["ok", "ok", "error"]})
    names = openpose_json_names(frames)
    assert len(set(names.values())) == 2 and all(n.startswith("x-") and n.endswith("_keypoints.json") for n in names.values())


def test_coco_export_scores_the_estimators_ap(job_output, estimator, data_dir, tmp_path, capsys):
    """The COCO results of the job evaluate with pycocotools to the AP of the estimator on the same photos."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    config, output = job_output
    mini = data_dir / "coco_val2017_mini"
    dest = tmp_path / "results.json"
    assert main(["export", str(output), "--format", "coco", "--to", str(dest),
                 "--annotations", str(mini / "person_keypoints.json")]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["left_out"] == {"video frames have no COCO image": counts["left_out"]["video frames have no COCO image"]}
    gt = COCO(str(mini / "person_keypoints.json"))
    evaluator = COCOeval(gt, gt.loadRes(str(dest)), "keypoints")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    sized = job_estimator(estimator, config)
    want = evaluate_keypoints(mini / "person_keypoints.json", lambda p: sized.estimate([cv2.imread(p)])[0], mini)
    assert evaluator.stats[0] == pytest.approx(want["AP"], abs=1e-3) and want["AP"] >= 0.60
    # without --annotations, COCO's file names give the ids
    results, _ = coco_results(read_table(str(output), "people"))
    assert json.loads(dest.read_text()) == results


def test_export_of_a_folder_without_a_job_output_is_a_usage_error(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "coco", "--to", str(tmp_path / "r.json")]) == 2
    assert "no job output" in capsys.readouterr().err


def test_predict_reads_what_the_job_reads_and_finds_the_same_people(job_output, data_dir, tmp_path, capsys):
    """`openpose-ray predict` on the job's photos and clips (a folder of videos, one stored turned) and a
    tar of two photos: the job's rows for the same frames, and the tar's members as the job names them."""
    import tarfile

    import pyarrow.parquet as pq

    config, output = job_output
    clips = Path(config.input[1])
    photos = sorted((data_dir / "coco_val2017_mini").glob("*.jpg"))
    archive = tmp_path / "two.tar"
    with tarfile.open(archive, "w") as tar:
        for photo in photos[:2]:
            tar.add(photo, arcname=f"inside/{photo.name}")
    out = tmp_path / "people.parquet"
    assert main(["predict", str(data_dir / "coco_val2017_mini"), str(clips), str(archive), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().startswith(f"4 images, {2 * CLIP_FRAMES + 2} video and tar frames")
    ours = pq.read_table(out)
    job = read_table(str(output), "people")

    def by_frame(table):
        keys = zip(table["source"].to_pylist(), table["frame_index"].to_pylist(), table["person_index"].to_pylist())
        return dict(zip(keys, read_keypoints(table, COCO18)))

    ours_rows, job_rows = by_frame(ours), by_frame(job)
    shared = [key for key in ours_rows if not key[0].endswith(".tar")]
    assert set(shared) == set(job_rows)
    for key in shared:
        np.testing.assert_allclose(ours_rows[key], job_rows[key], atol=0.05, err_msg=str(key))
    members = {m for m, s in zip(ours["member"].to_pylist(), ours["source"].to_pylist()) if s.endswith(".tar")}
    assert members == {f"inside/{photo.name}" for photo in photos[:2]}
    assert set(ours["source_kind"].to_pylist()) == {"image", "video", "tar"}


def test_status_of_a_finished_output(job_output, capsys):
    _, output = job_output
    assert main(["status", str(output), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    people = read_table(str(output), "people").num_rows
    assert status["inputs"] == {"images": 4, "tars": 0, "videos_complete": 2, "videos_partial": 0, "videos_unreadable": 0}
    assert (status["frames"], status["frames_failed"]) == (4 + 2 * CLIP_FRAMES, 0)
    assert status["rows_visible"] == {"people": people, "frames": 4 + 2 * CLIP_FRAMES}
    assert [g["current"] for g in status["generations"]] == [True] and status["generations"][0]["inputs"] == 6
    (run,) = status["runs"]
    assert run["ended"] and run["frames"] == 4 + 2 * CLIP_FRAMES and status["last_summary"]["run_id"] == run["run_id"]
    assert main(["status", str(output)]) == 0
    assert f"{people} people" in capsys.readouterr().out
