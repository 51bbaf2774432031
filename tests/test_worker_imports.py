"""The job's CPU stages never import torch: listing, planning, decoding, grouping, writing and rendering.

A Ray worker that runs a CPU stage imports the stage's module; with torch
among its imports every decode and post-processing worker paid ~1 s of
start-up and ~180 MiB of memory for a library it never used (on a 2-core
machine about 4 workers start per job; on a 192-vCPU node, up to 192). Here
the stages run, on real photos and a real video segment, in a fresh Python in
which importing torch or OpenVINO raises; only the network runs in this
process (as in the inference actor). The people written by the torch-free
worker must equal, to the last bit, those of ``PoseEstimator.estimate``.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import pyarrow.dataset as pads

from openpose_ray.config_loader import load_config
from openpose_ray.jobconfig import S3Config, SourcesConfig
from openpose_ray.models.registry import get_entry
from openpose_ray.models.weights import resolve_weights
from openpose_ray.outputs.people_table import read_keypoints
from openpose_ray.pipeline.inference_actor import InferenceActor
from openpose_ray.pipeline.records import from_row
from openpose_ray.pipeline.runner import make_provenance
from openpose_ray.sources.decoding import decode_frames
from openpose_ray.sources.listing import SourceObject
from openpose_ray.sources.planning import plan_video

from people_match import assert_same_person, job_estimator
from refused_imports import env_refusing

REPO = Path(__file__).resolve().parent.parent
PHOTOS = ["000000000785.jpg", "000000040083.jpg"]  # of coco_val2017_mini
FRAMES = 3  # of the video's first segment
REFUSED = ("torch", "openvino")

# Runs in a fresh interpreter: argv[1] = JSON {"config", "overrides", "step", "rows"}; torch and
# OpenVINO refused (refused_imports). prepare: list, plan, decode (rows out); write: rows in (provenance, InferredShard
# rows) -> group, write, render, commit (rows out).
_WORKER = r"""
import json, pickle, sys

job = json.loads(sys.argv[1])
from openpose_ray.config_loader import load_config
from openpose_ray.pipeline import stages
from openpose_ray.pipeline.listing_source import iter_work_items
from openpose_ray.pipeline.records import from_row

config = load_config(job["config"], job["overrides"])
if job["step"] == "prepare":
    listed = [row for uri in config.input for row in iter_work_items(uri, config)]
    planned = [row for item in listed for row in stages.plan_shards(item, config)]
    segments = [row for row in planned if type(from_row(row)).__name__ == "Shard"]
    rows = [stages.prepare_shard(row, config) for row in segments[:2]]  # the photos, the first segment
else:
    with open(job["rows"], "rb") as f:
        provenance, inferred = pickle.load(f)  # as Ray hands them to the stage: made on the driver
    rows = [stages.render_shard(stages.postprocess_and_write(row, config, provenance), config, provenance)
            for row in inferred]
with open(job["rows"], "wb") as f:
    pickle.dump(rows, f)
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "openvino"))))
"""


def _run_worker(step: str, config_path: str, overrides: list[str], rows: Path) -> None:
    job = {"config": config_path, "overrides": overrides, "step": step, "rows": str(rows)}
    env = env_refusing(rows.parent / "refused", REFUSED, "imported by a CPU stage")
    done = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(job)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_cpu_stages_run_without_torch_and_write_what_estimate_finds(tmp_path, data_dir, estimator):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in PHOTOS:
        (photos / name).write_bytes((data_dir / "coco_val2017_mini" / name).read_bytes())
    video = data_dir / "videos" / "street_720p_h264.avi"
    output = tmp_path / "out"
    overrides = [f"input={json.dumps([str(photos), str(video)])}", f"output={output}",
                 f"sources.frames_per_segment={FRAMES}",
                 "write.render_images=true", "write.render_videos=false"]
    config = load_config("configs/local.yaml", overrides)
    rows = tmp_path / "rows.pickle"

    _run_worker("prepare", "configs/local.yaml", overrides, rows)
    prepared = pickle.loads(rows.read_bytes())
    assert [type(from_row(row)).__name__ for row in prepared] == ["PreparedShard", "PreparedShard"]

    weights = resolve_weights(get_entry(config.model.name))
    actor = InferenceActor(config, weights, "cpu", 2, peaks_on_device=False)
    rows.write_bytes(pickle.dumps((make_provenance(config, weights.file_sha256), [actor(row) for row in prepared])))
    _run_worker("write", "configs/local.yaml", overrides, rows)
    written = [from_row(row) for row in pickle.loads(rows.read_bytes())]
    assert [shard.stats.frames for shard in written] == [len(PHOTOS), FRAMES]
    assert written[0].stats.media == {"images": len(PHOTOS)}
    rendered = sorted(p.name for p in (output / "media" / "images").rglob("*.jpg"))  # name-<hash of the uri>.jpg
    assert [name.split("-")[0] for name in rendered] == [name.removesuffix(".jpg") for name in sorted(PHOTOS)]

    people = pads.dataset(str(output / "people"), format="parquet", partitioning="hive").to_table()
    keypoints, rows_at = read_keypoints(people), {}
    for i, key in enumerate(zip(people.column("source").to_pylist(), people.column("frame_index").to_pylist(),
                                people.column("person_index").to_pylist())):
        rows_at[key] = i
    scores = people.column("score").to_numpy()
    expected = job_estimator(estimator, config)
    found = 0
    for source, index, image in _frames(photos, video):
        persons = expected.estimate([image])[0]
        assert sum(key[:2] == (source, index) for key in rows_at) == len(persons), f"{source} frame {index}"
        for person_index, person in enumerate(persons):
            row = rows_at[(source, index, person_index)]
            assert_same_person(keypoints[row], scores[row], person, exact=True, where=f"{source} frame {index}")
        found += len(persons)
    assert found >= 5  # the photos and the street scene have people


def _frames(photos: Path, video: Path):
    """(source, frame index, BGR image) of the inputs, decoded as the job does."""
    for name in sorted(PHOTOS):
        yield str(photos / name), 0, cv2.imread(str(photos / name))
    obj = SourceObject(str(video), "video", video.stat().st_size, str(video.stat().st_mtime_ns))
    first = plan_video(obj, FRAMES, S3Config())[0]
    for frame in decode_frames(first, SourcesConfig(), S3Config()):
        yield frame.source, frame.frame_index, frame.image
