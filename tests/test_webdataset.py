"""WebDataset shards as input (issue 27, part 1): samples grouped by key, one frame per image member.

A tar built here from the shared photos in WebDataset's layout (``<key>.jpg`` beside ``<key>.txt``
captions and ``<key>.json`` metadata, one sample's image broken) is annotated by the job: every image
member is a frame whose rows carry the member and its sample's key, the other members are read past
(neither frames nor skipped inputs), the broken sample is an error row and its neighbours are
annotated. Files written before a column existed read it as NULL.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openpose_ray.config_loader import load_config
from openpose_ray.pipeline.runner import run_job
from openpose_ray.sources.webdataset import sample_key
from openpose_ray.tables import read_table

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("member, key", [
    ("0001.jpg", "0001"), ("shard-3/0001.jpg", "shard-3/0001"), ("images/0001.seg.png", "images/0001"),
    ("a.b/c.d.jpg", "a.b/c"), ("noext", None), (".hidden.jpg", None), (None, None)])
def test_sample_keys_follow_webdatasets_convention(member, key):
    assert sample_key(member) == key


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def webdataset_run(ray_session, data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("wds")
    photos = sorted((data_dir / "coco_val2017_mini").glob("*.jpg"))
    shard = folder / "train-000000.tar"
    with tarfile.open(shard, "w") as archive:
        for i, photo in enumerate(photos):
            key = f"sample{i:04d}"
            if i == 2:
                _add(archive, f"{key}.jpg", b"\xff\xd8 not really a jpeg")  # a broken sample among good ones
            else:
                _add(archive, f"{key}.jpg", photo.read_bytes())
            _add(archive, f"{key}.txt", f"a photo of people, number {i}".encode())
            _add(archive, f"{key}.json", json.dumps({"source": photo.name}).encode())
        ok, blank = cv2.imencode(".jpg", np.full((240, 320, 3), 127, np.uint8))  # a sample with nobody in it
        _add(archive, "sample0004.jpg", blank.tobytes())
        _add(archive, "sample0004.txt", b"a photo of people, number 4")
    output = folder / "out"
    summary = run_job(load_config(REPO_ROOT / "configs" / "local.yaml", [
        f"input=[{shard}]", f"output={output}", "write.render_images=false", "write.render_videos=false"]))
    return shard, photos, output, summary


def test_each_image_member_is_a_frame_keyed_by_its_sample(webdataset_run, estimator):
    shard, photos, output, summary = webdataset_run
    assert summary["frames"] == 5 and summary["inputs"]["skipped"] == 0  # captions and metadata are no inputs
    frames = read_table(str(output), "frames").sort_by("frame_index").to_pylist()
    assert [(f["member"], f["sample_key"], f["frame_index"]) for f in frames] == \
        [(f"sample{i:04d}.jpg", f"sample{i:04d}", i) for i in range(5)]
    assert [f["status"] for f in frames] == ["ok", "ok", "error", "ok", "ok"] and frames[2]["error_kind"] == "corrupt"
    assert frames[4]["num_people"] == 0
    people = read_table(str(output), "people")
    keys = people.column("sample_key").to_pylist()
    for i in (0, 1, 3):
        expected = estimator.estimate([cv2.imread(str(photos[i]))])[0]
        assert keys.count(f"sample{i:04d}") == len(expected) > 0
    assert set(people.column("member").to_pylist()) == {f"sample{i:04d}.jpg" for i in (0, 1, 3)}


def test_files_without_newer_columns_read_them_as_null(webdataset_run, tmp_path):
    """An output older versions wrote: its people files lack sample_key, track_id and bbox, its frames files
    sample_key; each reads back as NULL of today's type, the other columns as written."""
    import shutil

    _, _, output, _ = webdataset_run
    old = tmp_path / "old"
    shutil.copytree(output, old)
    dropped = {"people": ["sample_key", "track_id", "bbox"], "frames": ["sample_key"]}
    for name, columns in dropped.items():
        for path in (old / name).rglob("*.parquet"):
            pq.write_table(pq.read_table(path).drop_columns(columns), path)
    for name, columns in dropped.items():
        rows, today = read_table(str(old), name), read_table(str(output), name)
        assert set(rows.column_names) == set(today.column_names) and rows.num_rows == today.num_rows > 0
        for column in columns:
            assert rows.column(column).null_count == rows.num_rows
            assert rows.schema.field(column).type == today.schema.field(column).type
        kept = [c for c in today.column_names if c not in columns]
        order = [("source", "ascending"), ("member", "ascending"), ("frame_index", "ascending")]
        order += [("person_index", "ascending")] if name == "people" else []
        assert rows.select(kept).sort_by(order).equals(today.select(kept).sort_by(order))


def _python_recipes() -> dict[str, str]:
    import re

    text = (REPO_ROOT / "docs" / "analytics.md").read_text()
    return {block.partition("\n")[0].removeprefix("#").strip(): block
            for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)}


def test_the_ml_tool_recipes_load_the_outputs(webdataset_run, tmp_path, monkeypatch):
    """docs/analytics.md's Python recipes on a job's output: Hugging Face datasets (through the manifest and
    straight from the files) and webdataset joining each sample to its people by key."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # the datasets cache, and no hub: offline
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shard, photos, output, _ = webdataset_run
    recipes = _python_recipes()
    assert len(recipes) == 3
    expected = read_table(str(output), "people")
    found = {"output": str(output), "shard": str(shard)}
    for block in recipes.values():
        exec(compile(block, "docs/analytics.md", "exec"), found)  # noqa: S102 - the documented code, as a user runs it
    assert len(found["people"]) == expected.num_rows == len(found["files"])
    assert sorted(found["people"]["sample_key"]) == sorted(expected.column("sample_key").to_pylist())
    assert all(r["num_parts"] >= 10 and r["score"] >= 0.5 for r in found["confident"])
    keys = expected.column("sample_key").to_pylist()
    assert [(key, text, len(people)) for key, text, people in found["samples"]] == \
        [(f"sample{i:04d}", f"a photo of people, number {i}", keys.count(f"sample{i:04d}")) for i in range(5)]
    assert len(found["samples"][2][2]) == 0 and all(len(s[2]) > 0 for s in found["samples"][:2])


def test_pose_shards_hold_each_samples_people_and_pose_map_under_its_key(webdataset_run, tmp_path):
    """write.pose_shards (+ pose_shard_maps): beside the tables, media/webdataset/<tar>-<hash>.pose.tar with the
    input's keys in its order; each JSON's people are the job's rows, each PNG the pose map of them (PNG: equal
    to the pixel), the broken sample a JSON with its error and no map; webdataset reads it; a second run writes
    nothing."""
    import webdataset as wds

    from openpose_ray.drawing import pose_map
    from openpose_ray.outputs.people_table import read_keypoints
    from openpose_ray.person import Person
    from openpose_ray.skeleton import COCO18

    shard, photos, _, _ = webdataset_run
    output = tmp_path / "out"
    config = load_config(REPO_ROOT / "configs" / "local.yaml", [
        f"input=[{shard}]", f"output={output}", "write.render_images=false", "write.render_videos=false",
        "write.pose_shards=true", "write.pose_shard_maps=true"])
    run_job(config)
    (pose_tar,) = (output / "media" / "webdataset").glob("*.pose.tar")
    assert pose_tar.name.startswith("train-000000-")
    with tarfile.open(pose_tar) as archive:
        names = archive.getnames()
        contents = {name: archive.extractfile(name).read() for name in names}
    assert names == ["sample0000.pose.json", "sample0000.pose.png", "sample0001.pose.json", "sample0001.pose.png",
                     "sample0002.pose.json", "sample0003.pose.json", "sample0003.pose.png", "sample0004.pose.json",
                     "sample0004.pose.png"]
    people = read_table(str(output), "people")
    keypoints = read_keypoints(people)
    for i in (0, 1, 3):
        key = f"sample{i:04d}"
        rows = sorted((r for r, k in enumerate(people.column("sample_key").to_pylist()) if k == key),
                      key=lambda r: people.column("person_index")[r].as_py())
        document = json.loads(contents[f"{key}.pose.json"])
        assert document["status"] == "ok" and document["member"] == f"{key}.jpg" and len(document["people"]) == len(rows) > 0
        for person, row in zip(document["people"], rows):
            np.testing.assert_array_equal(np.float32(person["pose_keypoints_2d"]), keypoints[row].ravel())
        image = cv2.imread(str(photos[i]))
        drawn = cv2.imdecode(np.frombuffer(contents[f"{key}.pose.png"], np.uint8), cv2.IMREAD_COLOR)
        expected = pose_map(*image.shape[:2], [Person(keypoints=keypoints[r], score=1.0) for r in rows], COCO18)
        assert (document["width"], document["height"]) == (image.shape[1], image.shape[0])
        assert np.array_equal(drawn, expected) and drawn.any()
    nobody = cv2.imdecode(np.frombuffer(contents["sample0004.pose.png"], np.uint8), cv2.IMREAD_COLOR)
    assert nobody.shape == (240, 320, 3) and not nobody.any()  # all black where no one was found
    assert json.loads(contents["sample0004.pose.json"])["people"] == []
    broken = json.loads(contents["sample0002.pose.json"])
    assert broken["status"] == "error" and broken["error_kind"] == "corrupt" and broken["people"] == []
    read_back = [sample["__key__"] for sample in wds.WebDataset(str(pose_tar), shardshuffle=False)]
    assert read_back == [f"sample{i:04d}" for i in range(5)]  # the input's samples, in its order
    before = pose_tar.stat().st_mtime_ns, pose_tar.read_bytes()
    # what a run killed while publishing a pose shard leaves: a hidden temporary beside it, never the shard
    half = pose_tar.parent / f".{pose_tar.name}.x1y2.tmp"
    half.write_bytes(before[1][:1000])
    assert sorted(p.name for p in pose_tar.parent.glob("*.tar")) == [pose_tar.name]
    assert run_job(config)["frames"] == 0  # done: not annotated, not written again
    assert (pose_tar.stat().st_mtime_ns, pose_tar.read_bytes()) == before
    assert not half.exists()  # the next run's finalize removes it


def test_pose_shard_names_keep_every_member_in_its_sample():
    from openpose_ray.outputs.pose_shards import _name

    used: set[str] = set()
    names = [_name(member, i, used) for i, member in enumerate(["0001.jpg", "0001.png", "a/0002.jpg", "README", None])]
    assert names == ["0001", "0001.png", "a/0002", "README", "000004"]  # "0001.png.pose.json" is still sample 0001
