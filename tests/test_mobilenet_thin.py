"""The PyTorch mobilenet_thin against OpenCV's runtime of the original TensorFlow graph."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from openpose_ray.models.mobilenet_thin import MobilenetThin
from openpose_ray.models.registry import get_entry
from openpose_ray.models.weights import fetch_source

PARITY_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def reference_net():
    """cv2.dnn running graph_opt.pb: an independent runtime of the same weights."""
    return cv2.dnn.readNetFromTensorflow(str(fetch_source(get_entry("mobilenet_thin").source)))


def _reference_fields(net, resized_bgr: np.ndarray) -> np.ndarray:
    net.setInput(resized_bgr.astype(np.float32).transpose(2, 0, 1)[None].copy())
    return net.forward()


def _parity_photos(data_dir):
    mini = sorted((data_dir / "coco_val2017_mini").glob("*.jpg"))
    samples = sorted((data_dir / "coco_val2014_samples").glob("*.jpg"))[:3]
    assert len(mini) == 4 and len(samples) == 3, f"test photos missing under {data_dir}"
    return mini + samples


def test_forward_fields_match_opencv_on_real_photos(estimator, reference_net, data_dir):
    photos = _parity_photos(data_dir)
    images = [cv2.imread(str(p)) for p in photos]
    heatmaps, pafs = estimator.with_config(net_size=(432, 368)).forward_fields(images)  # the reference: stretch
    assert heatmaps.shape == (len(images), 19, 46, 54) and pafs.shape == (len(images), 38, 46, 54)
    assert heatmaps.dtype == np.float32 and pafs.dtype == np.float32
    worst = 0.0
    for i, image in enumerate(images):
        resized = cv2.resize(image, (432, 368), interpolation=cv2.INTER_CUBIC)
        reference = _reference_fields(reference_net, resized)[0]
        ours = np.concatenate([heatmaps[i], pafs[i]], axis=0)
        diff = float(np.abs(ours - reference).max())
        worst = max(worst, diff)
        assert diff <= PARITY_TOLERANCE, f"{photos[i].name}: max abs difference {diff}"
        # The fields carry signal: a person photo has confident parts.
        assert heatmaps[i, :18].max() > 0.5
    print(f"parity max abs difference over {len(images)} photos: {worst:.2e}")


@pytest.mark.parametrize("size", [(656, 368), (437, 371), (120, 96)])
def test_tensorflow_same_padding_at_odd_and_wide_sizes(estimator, reference_net, data_dir, size):
    """Stride-2 layers pad like TF 'SAME' (bottom/right) whether the size is even or odd."""
    image = cv2.imread(str(data_dir / "coco_val2017_mini" / "000000196141.jpg"))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    with torch.inference_mode():
        x = torch.from_numpy(resized.astype(np.float32).transpose(2, 0, 1)[None].copy())
        heat, paf = estimator.network(x)
    reference = _reference_fields(reference_net, resized)[0]
    ours = torch.cat([heat, paf], 1)[0].numpy()
    assert ours.shape == reference.shape == (57, -(-size[1] // 8), -(-size[0] // 8))
    assert np.abs(ours - reference).max() <= PARITY_TOLERANCE


def test_random_input_shapes_and_finite():
    torch.manual_seed(0)
    net = MobilenetThin().eval()
    with torch.inference_mode():
        heat, paf = net(torch.rand(2, 3, 75, 100) * 255)
    assert heat.shape == (2, 19, 10, 13) and paf.shape == (2, 38, 10, 13)
    assert torch.isfinite(heat).all() and torch.isfinite(paf).all()
