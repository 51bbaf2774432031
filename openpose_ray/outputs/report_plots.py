"""The run report's images: plots drawn with matplotlib (Agg, no display), and sample frames with their
skeletons drawn, decoded again from the inputs. Everything returns encoded bytes (PNG / JPEG) that
:mod:`openpose_ray.outputs.report` embeds as base64 data URIs.

Figures are made with ``matplotlib.figure.Figure`` and its Agg canvas directly, never with pyplot:
no global figure state, no GUI backend chosen at import, safe in a driver that runs other threads.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from ..jobconfig import S3Config, SourcesConfig
from ..person import Person
from ..drawing import render
from ..skeleton import Skeleton
from ..storage import redact, text_form
from .media import encode_image

log = logging.getLogger(__name__)

_DPI = 100
_SAMPLE_WIDTH = 480  # px: sample frames are drawn at full size, then shrunk to at most this wide
_SAMPLE_JPEG_QUALITY = 80
# Colours per stage (matplotlib's tab10 order), so the three lines keep their colour from report to report.
STAGE_COLOURS = {"decode": "#1f77b4", "infer": "#ff7f0e", "post": "#2ca02c"}


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="#555555")


def throughput_png(edges_s: np.ndarray, rates: Mapping[str, np.ndarray], labels: Mapping[str, str]) -> bytes:
    """frames/s of each stage over the run, as steps.

    edges_s: float[B + 1] bin edges, seconds since the run started; rates: stage -> float[B] frames/s in
    each bin; labels: stage -> legend text. No bins: an empty chart that says so.
    """
    figure = _figure(9.6, 3.6)
    ax = figure.subplots()
    minutes = len(edges_s) > 1 and edges_s[-1] > 1200  # long runs read better in minutes
    x = edges_s / 60.0 if minutes else edges_s
    for stage, rate in rates.items():
        if len(rate):
            ax.stairs(rate, x, label=labels.get(stage, stage), color=STAGE_COLOURS.get(stage), linewidth=1.8)
    if len(edges_s) < 2:
        _no_data(ax, "no shard went through the pipeline in this run")
    else:
        ax.legend(loc="upper right")
    ax.set_xlabel("minutes since the run started" if minutes else "seconds since the run started")
    ax.set_ylabel("frames/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    return _png(figure)


def people_histogram_png(frames_with: np.ndarray) -> bytes:
    """Bars: frames_with[n] = frames in which n people were found (n = 0, 1, ...)."""
    figure = _figure(6.4, 3.6)
    ax = figure.subplots()
    if frames_with.sum() == 0:
        _no_data(ax, "no frame was annotated")
    else:
        ax.bar(np.arange(len(frames_with)), frames_with, color="#4c72b0", width=0.8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("people in the frame")
    ax.set_ylabel("frames")
    ax.grid(axis="y", alpha=0.3)
    return _png(figure)


def joint_confidence_png(part_names: Sequence[str], mean_confidence: np.ndarray, found_share: np.ndarray) -> bytes:
    """Per part of the skeleton, two bars: mean confidence where the part was found, and the share of
    people in whom it was found (both 0..1). All zero (nobody found): an empty chart that says so."""
    figure = _figure(9.6, 3.8)
    ax = figure.subplots()
    x = np.arange(len(part_names))
    ax.bar(x - 0.2, mean_confidence, width=0.4, label="mean confidence where found", color="#dd8452")
    ax.bar(x + 0.2, found_share, width=0.4, label="share of people with the part", color="#55a868")
    if not np.any(found_share):
        _no_data(ax, "nobody was found in this run")
    else:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(x, part_names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    return _png(figure)


def sample_jpeg(image: np.ndarray, keypoints: np.ndarray, scores: Sequence[float], skeleton: Skeleton) -> bytes:
    """``image`` (uint8[H, W, 3] BGR, source pixels) with the people drawn (keypoints float32[P, K, 3] as x, y,
    confidence in the same pixels), shrunk to at most 480 px wide, as JPEG."""
    persons = [Person(keypoints=k, score=float(s)) for k, s in zip(keypoints, scores)]
    drawn = render(image, persons, skeleton)
    height, width = drawn.shape[:2]
    if width > _SAMPLE_WIDTH:
        drawn = cv2.resize(drawn, (_SAMPLE_WIDTH, max(1, round(height * _SAMPLE_WIDTH / width))),
                           interpolation=cv2.INTER_AREA)
    return encode_image(drawn, ".jpg", jpeg_quality=_SAMPLE_JPEG_QUALITY)


def decode_one_frame(source: str, kind: str, member: str | None, frame_index: int, sources: SourcesConfig,
                     s3: S3Config) -> np.ndarray | None:
    """One frame of an input as the job decoded it (uint8[H, W, 3] BGR, displayed orientation), or None
    when it cannot be read now (changed or deleted since the run; the report then goes without it).

    kind: "image", "video" or "tar". A video is decoded from its start up to ``frame_index`` (presentation
    order, as the job counts it) and a tar read up to the member: callers keep those indices small.
    """
    from ..sources.decoding import decode_frames
    from ..sources.planning import Shard

    try:
        if kind == "video":
            return _video_frame(source, frame_index, s3)
        shard_kind = "images" if kind == "image" else "tar"
        for frame in decode_frames(Shard(f"report-{kind}", shard_kind, (source,), ("",)), sources, s3):
            if (frame.member if frame.member is None else text_form(frame.member)) == member \
                    and frame.frame_index == frame_index:  # tables hold members in their text form
                return frame.image if frame.status == "ok" else None
    except Exception as exc:  # a sample is a nicety: never a reason to lose the report
        log.info("report: no sample frame from %s: %s", redact(source), exc)
    return None


def _video_frame(uri: str, frame_index: int, s3: S3Config) -> np.ndarray | None:
    import av

    from ..sources.decoding import displayed
    from ..sources.planning import video_stream
    from ..sources.s3io import open_uri

    with open_uri(uri, s3) as file, av.open(file, "r") as container:
        stream = video_stream(container, uri)
        if stream is None:
            return None
        for index, frame in enumerate(container.decode(stream)):  # the decoder outputs presentation order
            if index == frame_index:
                return displayed(frame.to_ndarray(format="bgr24"), frame.rotation)
    return None
