"""The PyTorch mobilenet_thin against OpenCV 4's runtime of the original TensorFlow graph.

The reference runs in `.venv-cv4` (tests/opencv4.py), whatever OpenCV the project's venv has:
the project reads the graph with protobuf, OpenCV 4 with its own TensorFlow importer, so the
two are independent readers and runtimes of the same file.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from opencv4 import opencv4_forward

from openpose_ray.models.mobilenet_thin import MobilenetThin
from openpose_ray.models.registry import get_entry
from openpose_ray.models.weights import fetch_source

PARITY_TOLERANCE = 1e-3
ODD_AND_WIDE_SIZES = ((656, 368), (437, 371), (120, 96))  # (width, height)


def _network_input(resized_bgr: np.ndarray) -> np.ndarray:
    return resized_bgr.astype(np.float32).transpose(2, 0, 1)[None].copy()


def _parity_photos(data_dir):
    mini = sorted((data_dir / "coco_val2017_mini").glob("*.jpg"))
    samples = sorted((data_dir / "coco_val2014_samples").glob("*.jpg"))[:3]
    assert len(mini) == 4 and len(samples) == 3, f"test photos missing under {data_dir}"
    return mini + samples


@pytest.fixture(scope="module")
def reference(cv4_python, data_dir, tmp_path_factory):
    """OpenCV 4 running graph_opt.pb on every input of this module at once (one subprocess):
    {"photo<i>": the i-th parity photo stretched to 432x368, "<w>x<h>": one photo at each odd or wide size}
    -> (network input, OpenCV's output float32[1, 57, H/8, W/8])."""
    inputs = {}
    for i, path in enumerate(_parity_photos(data_dir)):
        inputs[f"photo{i}"] = _network_input(cv2.resize(cv2.imread(str(path)), (432, 368), interpolation=cv2.INTER_CUBIC))
    image = cv2.imread(str(data_dir / "coco_val2017_mini" / "000000196141.jpg"))
    for width, height in ODD_AND_WIDE_SIZES:
        inputs[f"{width}x{height}"] = _network_input(cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC))
    graph = fetch_source(get_entry("mobilenet_thin").source)
    outputs = opencv4_forward(cv4_python, tmp_path_factory.mktemp("opencv4"), "tensorflow", graph, inputs)
    return {key: (inputs[key], outputs[key]) for key in inputs}


def test_forward_fields_match_opencv_on_real_photos(estimator, reference, data_dir):
    photos = _parity_photos(data_dir)
    images = [cv2.imread(str(p)) for p in photos]
    heatmaps, pafs = estimator.with_config(net_size=(432, 368)).forward_fields(images)  # the reference: stretch
    assert heatmaps.shape == (len(images), 19, 46, 54) and pafs.shape == (len(images), 38, 46, 54)
    assert heatmaps.dtype == np.float32 and pafs.dtype == np.float32
    worst = 0.0
    for i in range(len(images)):
        theirs = reference[f"photo{i}"][1][0]
        ours = np.concatenate([heatmaps[i], pafs[i]], axis=0)
        assert theirs.shape == ours.shape
        diff = float(np.abs(ours - theirs).max())
        worst = max(worst, diff)
        assert diff <= PARITY_TOLERANCE, f"{photos[i].name}: max abs difference {diff}"
        # The fields carry signal: a person photo has confident parts.
        assert heatmaps[i, :18].max() > 0.5 and theirs[:18].max() > 0.5
    print(f"parity max abs difference over {len(images)} photos: {worst:.2e}")


@pytest.mark.parametrize("size", ODD_AND_WIDE_SIZES)
def test_tensorflow_same_padding_at_odd_and_wide_sizes(estimator, reference, size):
    """Stride-2 layers pad like TF 'SAME' (bottom/right) whether the size is even or odd."""
    network_input, theirs = reference[f"{size[0]}x{size[1]}"]
    with torch.inference_mode():
        heat, paf = estimator.network(torch.from_numpy(network_input))
    ours = torch.cat([heat, paf], 1)[0].numpy()
    assert ours.shape == theirs[0].shape == (57, -(-size[1] // 8), -(-size[0] // 8))
    assert np.abs(ours - theirs[0]).max() <= PARITY_TOLERANCE


def test_random_input_shapes_and_finite():
    torch.manual_seed(0)
    net = MobilenetThin().eval()
    with torch.inference_mode():
        heat, paf = net(torch.rand(2, 3, 75, 100) * 255)
    assert heat.shape == (2, 19, 10, 13) and paf.shape == (2, 38, 10, 13)
    assert torch.isfinite(heat).all() and torch.isfinite(paf).all()
