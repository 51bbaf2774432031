"""Peak finding on the inference device (torch) agrees with the numpy path of PoseEstimator.estimate."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from openpose_ray.config_loader import load_config
from openpose_ray.outputs.people_table import read_keypoints
from openpose_ray.pipeline.runner import run_job
from openpose_ray.postprocess.peaks import upsample, upsample_torch

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("interpolation", ["cubic", "linear", "nearest"])
def test_torch_upsampling_matches_opencv(interpolation):
    fields = np.random.default_rng(0).random((19, 23, 31), dtype=np.float32)
    ours = upsample_torch(torch.from_numpy(fields)[None], 4, interpolation)[0].numpy()
    reference = upsample(fields, 4, interpolation)
    assert ours.shape == reference.shape == (19, 92, 124)
    np.testing.assert_allclose(ours, reference, atol=2e-6)


def test_job_with_device_peaks_finds_the_same_people(ray_session, data_dir, estimator, tmp_path):
    photos = data_dir / "coco_val2017_mini"
    summary = run_job(load_config(REPO_ROOT / "configs" / "local.yaml", [
        f"input={json.dumps([str(photos)])}", f"output={tmp_path}", "inference.peaks_on=device",
        "write.render_images=false", "write.render_videos=false",
    ]))
    assert summary["frames"] == 4
    people = pads.dataset(str(tmp_path / "people"), format="parquet", partitioning="hive").to_table()
    keypoints = read_keypoints(people)
    for photo in sorted(photos.glob("*.jpg")):
        expected = estimator.estimate([cv2.imread(str(photo))])[0]
        rows = sorted((i for i, s in enumerate(people.column("source").to_pylist()) if s == str(photo)),
                      key=lambda i: people.column("person_index")[i].as_py())
        assert len(rows) == len(expected), photo.name
        for row, person in zip(rows, expected):
            # Same parts at the same pixels; confidences and scores equal up to float rounding
            # of torch's and OpenCV's cubic kernels.
            np.testing.assert_array_equal(keypoints[row, :, 2] > 0, person.keypoints[:, 2] > 0)
            np.testing.assert_allclose(keypoints[row, :, :2], person.keypoints[:, :2], atol=1e-3)
            np.testing.assert_allclose(keypoints[row, :, 2], person.keypoints[:, 2], atol=1e-5)
            assert people.column("score")[row].as_py() == pytest.approx(person.score, abs=1e-5)
