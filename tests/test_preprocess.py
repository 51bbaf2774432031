"""Pre-processing geometry, checked with the single-bright-pixel trick.

Convention (openpose_ray.preprocess): pixel centres at integer coordinates, x
right, y down; every step between source pixels and (upsampled) field pixels
is one half-pixel-aligned scaling per axis, composed by ResizeTransform.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from openpose_ray.config import PostprocessConfig
from openpose_ray.inference import normalize
from openpose_ray.models.registry import get_entry
from openpose_ray.postprocess import find_peaks, upsample
from openpose_ray.preprocess import (ASPECT_BUCKETS, FIT_MAX_ASPECT, ResizeTransform, input_size_for,
                                     pad_batch, resize_to_input, resolve_input_spec, transform_for)

MOBILENET = get_entry("mobilenet_thin").input_spec  # the reference: stretch to 432x368
MOBILENET_FIT = resolve_input_spec(MOBILENET)  # the default: fit at height 368
CMU = get_entry("cmu_body").input_spec  # fit height 368
SPECS = {"mobilenet_thin stretch": MOBILENET, "mobilenet_thin fit": MOBILENET_FIT,
         "mobilenet_thin fit, aspect buckets": resolve_input_spec(MOBILENET, aspect_buckets=True), "cmu_body": CMU}
# (width, height): landscape, portrait, 16:9, odd, a tall strip, 21:9, and a panorama wider than 4:1
SOURCE_SIZES = [(640, 480), (480, 640), (1280, 720), (333, 517), (100, 2000), (2560, 1080), (3001, 500)]
# Points as fractions of the source size (then rounded to a pixel).
POINT_FRACTIONS = [(0.5, 0.5), (0.23, 0.71), (0.81, 0.17), (0.37, 0.93)]
STRIDE = 8
CONFIG = PostprocessConfig()


def _points(source_size: tuple[int, int]) -> list[tuple[int, int]]:
    width, height = source_size
    return [(int(round(fx * (width - 1))), int(round(fy * (height - 1)))) for fx, fy in POINT_FRACTIONS]


def _transform(spec, source_size: tuple[int, int]) -> ResizeTransform:
    width, height = source_size
    return resize_to_input(np.zeros((height, width, 3), np.uint8), spec)[1]


def _bright_spot_image(source_size: tuple[int, int], point: tuple[int, int], sigma: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Black BGR image with a spot of value 200 at ``point``.

    sigma: (x, y) standard deviations in source pixels of a separable Gaussian
    spot; 0 on an axis makes the spot one pixel wide along it.
    """
    width, height = source_size

    def profile(size: int, centre: int, s: float) -> np.ndarray:
        if s == 0:
            return (np.arange(size) == centre).astype(np.float64)
        return np.exp(-((np.arange(size) - centre) ** 2) / (2 * s**2))

    spot = 200 * np.outer(profile(height, point[1], sigma[1]), profile(width, point[0], sigma[0]))
    return np.repeat(np.rint(spot).astype(np.uint8)[..., None], 3, axis=2)


ALL_CASES = [(name, size) for name in SPECS for size in SOURCE_SIZES]


# --- the transform itself -----------------------------------------------------------


@pytest.mark.parametrize("spec_name,source_size", ALL_CASES)
@pytest.mark.parametrize("field_stride", [1.0, 2.0, 8.0])
def test_to_source_inverts_to_field(spec_name, source_size, field_stride):
    transform = _transform(SPECS[spec_name], source_size)
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, size=(50, 2)) * source_size + rng.uniform(0, 1, size=(50, 2)) * source_size
    np.testing.assert_allclose(transform.to_source(transform.to_field(points, field_stride), field_stride), points, atol=1e-9)
    np.testing.assert_allclose(transform.to_field(transform.to_source(points, field_stride), field_stride), points, atol=1e-9)


def test_transform_is_half_pixel_aligned():
    # 640x480 -> 320x240: source pixels 0 and 1 average into network pixel 0, whose
    # centre is source x = 0.5; the source image's outer edges (-0.5, 639.5) map to
    # the network input's edges (-0.5, 319.5).
    transform = ResizeTransform(source_size=(640, 480), valid_size=(320, 240), input_size=(320, 240))
    np.testing.assert_allclose(transform.to_source(np.array([0.0, 0.0])), [0.5, 0.5])
    np.testing.assert_allclose(transform.to_source(np.array([[-0.5, -0.5], [319.5, 239.5]])), [[-0.5, -0.5], [639.5, 479.5]])
    # Stride-8 field pixel 0 covers network pixels 0..7, centre 3.5, i.e. source 7.5.
    np.testing.assert_allclose(transform.to_source(np.array([0.0, 0.0]), field_stride=8), [7.5, 7.5])
    np.testing.assert_allclose(transform.to_field(np.array([7.5, 7.5]), field_stride=8), [0.0, 0.0])
    # Shapes are kept: float[..., 2] in, float64[..., 2] out.
    assert transform.to_source(np.zeros((3, 4, 2), np.float32), 2.0).shape == (3, 4, 2)
    assert transform.to_source(np.zeros((3, 4, 2), np.float32), 2.0).dtype == np.float64


# --- the single bright pixel through the resize ------------------------------------------


@pytest.mark.parametrize("spec_name,source_size", ALL_CASES)
def test_bright_spot_lands_where_to_field_says(spec_name, source_size):
    """The resized image's brightest pixel is the one nearest to transform.to_field(point, 1).

    Along an axis the resize keeps at least half the resolution of, the spot is one
    pixel wide; along one it shrinks more (cubic, no anti-aliasing can drop a single
    pixel between two samples) it is a Gaussian one network pixel wide.
    """
    spec = SPECS[spec_name]
    transform = _transform(spec, source_size)
    sigma = tuple(0.0 if s >= 0.5 else 1.0 / s for s in transform.scale)
    valid_w, valid_h = transform.valid_size
    width, height = source_size
    # Two pixels in from the corners: the cubic kernel reaches two pixels, and a spot
    # right on the edge rings against OpenCV's replicated border when upscaled.
    near_corners = [(2, 2), (width - 3, 2), (2, height - 3), (width - 3, height - 3)]
    for point in _points(source_size) + near_corners:
        resized, same = resize_to_input(_bright_spot_image(source_size, point, sigma), spec)
        assert same == transform
        valid = resized[:valid_h, :valid_w, 0].astype(np.int64)
        # Near the edge of a strongly downscaled axis the mapped point may lie outside
        # the first / last pixel centre.
        ex, ey = np.clip(transform.to_field(np.array(point, np.float64), 1.0), 0, [valid_w - 1, valid_h - 1])
        ys, xs = np.mgrid[0:valid_h, 0:valid_w]
        nearest = (np.abs(xs - ex) <= 0.5 + 1e-6) & (np.abs(ys - ey) <= 0.5 + 1e-6)
        brightest = np.unravel_index(np.argmax(valid), valid.shape)
        assert valid[nearest].max() == valid.max() > 0, (point, (ex, ey), brightest[::-1])
        # The three channels move together (colour order is per pixel, not spatial).
        assert np.array_equal(resized[..., 0], resized[..., 1]) and np.array_equal(resized[..., 0], resized[..., 2])


@pytest.mark.parametrize("spec_name,source_size", ALL_CASES)
def test_source_point_survives_field_upsampling_and_peak_finding(spec_name, source_size):
    """source -> stride-8 field -> x4 upsampled field -> peak -> source again.

    A sharp Gaussian is put on the stride-8 field where to_field(point, 8) says, the
    field is upsampled and its peak found exactly as decode() does, and the peak is
    mapped back with field_stride = 8 / upsample. The peak sits on an upsampled pixel,
    so the round trip is exact up to half an upsampled pixel in source pixels.
    """
    transform = _transform(SPECS[spec_name], source_size)
    field_w, field_h = transform.valid_field_size(STRIDE)
    up_stride = STRIDE / CONFIG.upsample
    source_per_up_pixel = np.array([up_stride / s for s in transform.scale])
    ys, xs = np.mgrid[0:field_h, 0:field_w]
    for point in _points(source_size):
        fx, fy = transform.to_field(np.array(point, np.float64), STRIDE)
        heatmap = np.exp(-((xs - fx) ** 2 + (ys - fy) ** 2) / 2.0).astype(np.float32)[None] * 0.9
        peaks = find_peaks(upsample(heatmap, CONFIG.upsample, CONFIG.upsample_interpolation), CONFIG, 1)
        # A point mapping exactly between upsampled pixels (the image centre often does)
        # gives a tied 2x1 or 2x2 plateau; find_peaks currently reports every pixel of it
        # (see test_postprocess.py::test_a_blob_centred_between_upsampled_pixels_gives_one_peak),
        # so take the plateau's centre. All reported peaks must be that one plateau.
        assert len(peaks.part) >= 1 and np.ptp(peaks.xy, axis=0).max() <= 1.0, (point, peaks.xy)
        back = transform.to_source(peaks.xy.mean(axis=0), up_stride)
        # Half an upsampled pixel of rounding (measured: at most 0.5 in every case here),
        # plus a little for the pull of cubic upsampling and smoothing on an off-grid Gaussian.
        tolerance = 0.55 * source_per_up_pixel
        # Fields only a few pixels wide (a 100x2000 image at fit-height is 3 field pixels
        # wide) pull the peak towards the middle: the smoothing sees zeros outside.
        if field_w < 8:
            tolerance[0] = max(tolerance[0], 0.6 * STRIDE / transform.scale[0])
        assert np.all(np.abs(back - point) <= tolerance), (point, back, tolerance)


# --- fit-height and stretch sizes ----------------------------------------------------------


@pytest.mark.parametrize("source_size", SOURCE_SIZES)
@pytest.mark.parametrize("scale", [1.0, 0.5, 1.5])
def test_fit_keeps_the_aspect_ratio_and_pads(source_size, scale):
    width, height = source_size
    image = np.zeros((height, width, 3), np.uint8)
    resized, transform = resize_to_input(image, CMU, scale=scale)
    target_h = int(round(368 * scale / 8)) * 8

    def to_stride(value: float) -> int:
        return max(8, int(round(value / 8)) * 8)

    valid = (to_stride(width * target_h / height), target_h)
    if width / height > FIT_MAX_ASPECT:  # a panorama: scaled to the widest input instead
        valid = (FIT_MAX_ASPECT * target_h, to_stride(height * FIT_MAX_ASPECT * target_h / width))
    assert transform.source_size == source_size
    assert transform.valid_size == transform.input_size == valid  # nothing padded
    assert resized.shape == (valid[1], valid[0], 3) and resized.dtype == np.uint8
    assert np.all(resized == 0)  # black stays black under the cubic resize
    assert transform.valid_field_size(8) == (valid[0] // 8, valid[1] // 8)
    assert input_size_for(source_size, CMU, CMU.net_size, scale) == transform.valid_size
    # aspect buckets: the same image, padded right to the narrowest bucket at least as wide
    bucketed = dataclasses.replace(CMU, aspect_buckets=True)
    padded, same = resize_to_input(image, bucketed, scale=scale)
    widths = [math.ceil(valid[1] * a / 32) * 32 for a in ASPECT_BUCKETS]  # ceil32(height * aspect)
    wide_enough = [w for w in widths if w >= valid[0]]
    bucket = min(wide_enough) if wide_enough else math.ceil(valid[0] / 32) * 32  # wider than 4:1: to 32 px
    assert same.valid_size == valid and same.input_size == (bucket, valid[1])
    assert np.all(padded[:, : valid[0]] == 0) and np.all(padded[:, valid[0]:] == CMU.pad_value)


def test_fit_uses_only_the_height_of_net_size():
    resized, transform = resize_to_input(np.zeros((480, 640, 3), np.uint8), CMU, net_size=(999, 256))
    assert transform.valid_size == transform.input_size == (344, 256)  # 640 * 256 / 480 = 341.33, to the stride
    assert resized.shape == (256, 344, 3)


def test_aspect_buckets_of_common_shapes():
    """At height 368 a 4:3 photo (488 px) pads to the 4:3 bucket (512), 16:9 video (656) to 672, a
    3:4 portrait (272) to 288; a square-ish 1.1:1 photo (400) to the 5:4 bucket (460 -> 480)."""
    spec = dataclasses.replace(MOBILENET_FIT, aspect_buckets=True)
    for source, width in [((640, 480), 512), ((1280, 720), 672), ((480, 640), 288), ((440, 400), 480)]:
        assert transform_for(source, spec).input_size == (width, 368), source


def test_resize_mode_defaults():
    """No size: fit at the model's height; an explicit size: the model's reference mode, unless one is asked for."""
    assert (MOBILENET_FIT.resize_mode, MOBILENET_FIT.net_size) == ("fit", (432, 368))
    assert resolve_input_spec(MOBILENET, (656, 368)).resize_mode == "stretch"
    assert resolve_input_spec(MOBILENET, (656, 480), "fit").resize_mode == "fit"
    assert resolve_input_spec(MOBILENET, None, "stretch") == MOBILENET
    assert resolve_input_spec(CMU, (368, 368)).resize_mode == "fit"
    with pytest.raises(ValueError, match="fit or stretch|'fit' or 'stretch'"):
        resolve_input_spec(MOBILENET, None, "squash")


@pytest.mark.parametrize("source_size", SOURCE_SIZES)
def test_stretch_resizes_to_net_size_without_padding(source_size):
    width, height = source_size
    resized, transform = resize_to_input(np.full((height, width, 3), 7, np.uint8), MOBILENET)
    assert resized.shape == (368, 432, 3)
    assert transform.valid_size == transform.input_size == (432, 368)
    assert np.all(resized == 7)


def test_stretch_rounds_net_size_to_the_stride():
    image = np.zeros((480, 640, 3), np.uint8)
    assert resize_to_input(image, MOBILENET, net_size=(430, 370))[1].valid_size == (432, 368)
    assert resize_to_input(image, MOBILENET, net_size=(320, 240), scale=0.5)[0].shape == (120, 160, 3)


# --- colour order, input validation, batching, normalisation ---------------------------------


@pytest.mark.parametrize("spec_name", SPECS)
def test_bgr_specs_keep_bgr(spec_name):
    image = np.empty((50, 70, 3), np.uint8)
    image[:] = (10, 20, 30)  # B, G, R
    resized, transform = resize_to_input(image, SPECS[spec_name])
    valid = resized[: transform.valid_size[1], : transform.valid_size[0]]
    assert np.all(valid == np.array([10, 20, 30], np.uint8))


def test_rgb_spec_reverses_the_channels():
    spec = dataclasses.replace(MOBILENET, color_order="RGB")
    image = np.empty((50, 70, 3), np.uint8)
    image[:] = (10, 20, 30)
    resized, _ = resize_to_input(image, spec)
    assert resized.flags.c_contiguous
    assert np.all(resized == np.array([30, 20, 10], np.uint8))


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                                 np.zeros((10, 10, 3), np.float32)])
def test_resize_rejects_non_bgr_uint8(bad):
    with pytest.raises(ValueError, match="BGR uint8"):
        resize_to_input(bad, MOBILENET)


def test_resize_does_not_modify_the_image():
    image = np.random.default_rng(0).integers(0, 256, size=(120, 90, 3), dtype=np.uint8)
    before = image.copy()
    resize_to_input(image, CMU)
    np.testing.assert_array_equal(image, before)


def test_pad_batch_pads_right_and_bottom():
    a = np.full((4, 6, 3), 1, np.uint8)
    b = np.full((5, 3, 3), 2, np.uint8)
    batch = pad_batch([a, b], 128)
    assert batch.shape == (2, 5, 6, 3) and batch.dtype == np.uint8
    assert np.all(batch[0, :4, :6] == 1) and np.all(batch[0, 4:] == 128)
    assert np.all(batch[1, :5, :3] == 2) and np.all(batch[1, :, 3:] == 128)


def test_normalize_cmu_is_pixel_over_256_minus_half_channel_first():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    batch[0, 0, 0] = (0, 128, 255)
    out = normalize(torch.from_numpy(batch), CMU)
    assert out.shape == (2, 3, 5, 7) and out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert out[0, :, 0, 0].tolist() == [-0.5, 0.0, 255 / 256 - 0.5]
    for n, y, x, c in [(0, 1, 2, 0), (1, 4, 6, 2), (1, 0, 3, 1)]:
        assert out[n, c, y, x].item() == pytest.approx(batch[n, y, x, c] / 256 - 0.5, abs=1e-7)
    np.testing.assert_allclose(out.numpy(), batch.transpose(0, 3, 1, 2) / 256.0 - 0.5, atol=1e-7)


def test_normalize_mobilenet_is_the_raw_pixel_values():
    batch = np.random.default_rng(1).integers(0, 256, size=(1, 3, 4, 3), dtype=np.uint8)
    out = normalize(torch.from_numpy(batch), MOBILENET)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), batch.transpose(0, 3, 1, 2).astype(np.float32))
