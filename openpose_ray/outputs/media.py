"""Rendered media: annotated images and browser-playable H.264 MP4s, written under ``<output>/media/``.

Images are numpy arrays in OpenCV layout (uint8 BGR ``[H, W, 3]``). A video is
annotated in parallel segments: each segment is encoded on its own with
:func:`encode_segment`, and :func:`concat_segments` joins them, in order and
without re-encoding, into one MP4.
"""

from __future__ import annotations

import fractions
import hashlib
import io
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

from ..storage import text_form
from .writer import write_bytes

__all__ = ["concat_segments", "encode_image", "encode_segment", "media_path_for", "write_bytes"]

MEDIA_KINDS = ("images", "videos", "webdataset")  # webdataset: pose shards (outputs.pose_shards)
# 1/90000 s: the MPEG clock; fine enough for any frame rate and for variable-rate sources.
TIME_BASE = fractions.Fraction(1, 90000)
_FASTSTART = {"movflags": "+faststart"}  # moov before mdat: browsers start playing before the download ends
_MAX_COMPONENT_BYTES = 100
_MAX_MEMBER_DEPTH = 8
_UNSAFE_CHARS = re.compile(r'[<>:"/\\|?*%\s]')
_SCHEME_AND_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\\]*")


def encode_image(image_bgr: np.ndarray, ext: str = ".jpg", *, jpeg_quality: int = 90) -> bytes:
    """The encoded bytes of a uint8 BGR ``[H, W, 3]`` image; ``ext`` picks the format (".jpg", ".png", ...)."""
    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 \
            or image_bgr.shape[2] != 3:
        raise ValueError(f"encode_image expects a uint8 [H, W, 3] BGR array, got {_describe(image_bgr)}")
    import cv2  # here, not at import: the manifest imports this module's paths on workers that never encode

    ext = ext if ext.startswith(".") else f".{ext}"
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(ext, image_bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image as {ext!r}; use .jpg or .png")
    return encoded.tobytes()


def media_folder(kind: str) -> str:
    """The folder, relative to the output root, of one kind of media: ``media/<kind>``."""
    if kind not in MEDIA_KINDS:
        raise ValueError(f"media kind must be one of {MEDIA_KINDS}, got {kind!r}")
    return f"media/{kind}"


def media_path_for(source: str, member: str | None = None, *, kind: str = "images",
                   ext: str | None = None) -> str:
    """A deterministic path, relative to the output root, for the rendering of an input.

    ``media/<kind>/<name>-<hash>.<ext>`` for a file or object, and
    ``media/<kind>/<tar name>/<member folders>/<member name>-<hash>.<ext>`` for a
    tar member. Names keep their readable letters (any script); scheme, bucket and
    folders of the source are dropped, "." / ".." / empty components removed, and
    characters unsafe in paths or URLs (control characters, ``<>:"/\\|?*%``,
    whitespace) become "_". The hash (10 hex of sha256 of the full source URI and
    member) keeps inputs with the same name in different folders apart. The
    result never starts with "/", never contains "..", and always starts with
    "media/<kind>/".

    kind: "images", "videos" or "webdataset" (pose shards). ext: file extension; default ".jpg"
        for images, ".mp4" for videos.
    """
    folder = media_folder(kind)
    ext = ext or (".jpg" if kind == "images" else ".mp4")
    ext = "." + (_safe_component(ext.lstrip(".")) or "bin")
    source, member = text_form(source), None if member is None else text_form(member)
    identity = source if member is None else f"{source}\n{member}"
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    source_parts = _components(_SCHEME_AND_AUTHORITY.sub("", source))
    source_name = source_parts[-1] if source_parts else "_"
    if member is None:
        folders, name = [], source_name
    else:
        member_parts = _components(member)[-_MAX_MEMBER_DEPTH:] or ["_"]
        folders, name = [_stem(source_name), *member_parts[:-1]], member_parts[-1]
    return "/".join([folder, *folders, f"{_stem(name)}-{digest}{ext}"])


def encode_segment(frames: Iterable[np.ndarray], timestamps: Sequence[float], fps: float, *,
                   crf: int = 20, preset: str = "veryfast", threads: int | None = None) -> bytes:
    """An H.264 MP4 (yuv420p, High profile, faststart) of ``frames`` shown at ``timestamps``.

    frames: uint8 BGR ``[H, W, 3]`` arrays, all of one size. H.264 in 4:2:0 needs
        even sizes: an odd width or height is padded by one column / row,
        repeating the last one, at the right / bottom, so that pixel coordinates
        (and drawn keypoints) stay where they are in the source.
    timestamps: seconds of each frame (from the source's pts), strictly
        increasing; kept as the MP4's pts in 1/90000 s (rounded; a tie after
        rounding is moved on by one tick). A segment that does not start at 0
        keeps its start time, so :func:`concat_segments` can place it.
    fps: nominal frame rate: rate-control hint and duration of the last frame.
    crf, preset, threads: libx264 quality (lower is better), speed preset, and
        encoder threads (None: libx264 picks from the CPU count).
    """
    import av

    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    ticks = _ticks(timestamps)
    durations = np.diff(ticks, append=ticks[-1] + max(1, round(1 / (fps * TIME_BASE)))) if len(ticks) else ticks
    options = {"crf": str(crf), "preset": preset, "profile": "high"}
    if threads is not None:
        options["threads"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="openpose_ray_segment_") as tmp:
        path = os.path.join(tmp, "segment.mp4")
        count = 0
        with av.open(path, mode="w", format="mp4", container_options=_FASTSTART) as container:
            stream = None
            for count, image in enumerate(frames, start=1):
                if count > len(ticks):
                    raise ValueError(f"encode_segment: more frames than the {len(ticks)} timestamps")
                image = _even_sized(image)
                if stream is None:
                    stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001),
                                                  options=options)
                    stream.height, stream.width = image.shape[:2]
                    stream.pix_fmt = "yuv420p"
                    stream.time_base = stream.codec_context.time_base = TIME_BASE
                elif image.shape[:2] != (stream.height, stream.width):
                    raise ValueError(f"encode_segment: frame {count - 1} is {image.shape[1]}x{image.shape[0]}, "
                                     f"the first frame (after padding) was {stream.width}x{stream.height}")
                frame = av.VideoFrame.from_ndarray(image, format="bgr24")
                frame.pts, frame.duration, frame.time_base = int(ticks[count - 1]), int(durations[count - 1]), TIME_BASE
                container.mux(stream.encode(frame))
            if count != len(ticks) or stream is None:
                raise ValueError(f"encode_segment: got {count} frames for {len(ticks)} timestamps; "
                                 "give one timestamp per frame, and at least one frame")
            container.mux(stream.encode(None))
        with open(path, "rb") as file:
            return file.read()


def concat_segments(segments: Sequence[bytes]) -> bytes:
    """Join the MP4s of one video's segments, in the given order, into one MP4 without re-encoding.

    Packets are copied. A segment that carries its source timestamps (as
    :func:`encode_segment` writes them) keeps them; one that would start before
    the end of the previous segment (e.g. every segment starting at 0) is
    shifted to start where the previous one ended. All segments must have the
    same codec, size and codec parameters (SPS/PPS), i.e. come from
    :func:`encode_segment` with the same settings for frames of one size.
    """
    import av

    if not segments:
        raise ValueError("concat_segments needs at least one segment")
    with tempfile.TemporaryDirectory(prefix="openpose_ray_concat_") as tmp:
        path = os.path.join(tmp, "video.mp4")
        with av.open(path, mode="w", format="mp4", container_options=_FASTSTART) as output:
            out_stream, reference, time_base = None, None, None
            end_pts = last_dts = None  # in time_base, over all segments so far
            for index, data in enumerate(segments):
                with av.open(io.BytesIO(data), mode="r") as source:
                    if not source.streams.video:
                        raise ValueError(f"concat_segments: segment {index} has no video stream")
                    stream = source.streams.video[0]
                    params = (stream.codec_context.name, stream.width, stream.height, stream.codec_context.extradata)
                    if out_stream is None:
                        out_stream = output.add_stream_from_template(stream)
                        reference, time_base = params, stream.time_base
                    elif params != reference:
                        raise ValueError(
                            f"concat_segments: segment {index} is {params[0]} {params[1]}x{params[2]}, segment 0 "
                            f"is {reference[0]} {reference[1]}x{reference[2]}"
                            + ("" if params[:3] != reference[:3] else " with other codec parameters (SPS/PPS)")
                            + "; encode all segments of a video with the same settings")
                    packets = [p for p in source.demux(stream) if p.dts is not None and p.size]
                    for packet in packets:
                        _rescale(packet, time_base)
                    if not packets:
                        continue
                    shift = 0 if end_pts is None else max(0, end_pts - min(p.pts for p in packets),
                                                          last_dts + 1 - min(p.dts for p in packets))
                    for packet in packets:
                        packet.pts += shift
                        packet.dts += shift
                        packet.stream = out_stream
                    end_pts = max(p.pts + (p.duration or 0) for p in packets)
                    last_dts = max(p.dts for p in packets)
                    output.mux(packets)
        with open(path, "rb") as file:
            return file.read()


def _ticks(timestamps: Sequence[float]) -> np.ndarray:
    """int64 pts in TIME_BASE units, strictly increasing (ties after rounding moved on by one tick)."""
    seconds = np.asarray(timestamps, dtype=np.float64)
    if seconds.ndim != 1 or not np.isfinite(seconds).all() or np.any(np.diff(seconds) <= 0):
        raise ValueError("timestamps must be finite seconds, strictly increasing, one per frame")
    ticks = np.rint(seconds / float(TIME_BASE)).astype(np.int64)
    return np.maximum.accumulate(ticks - np.arange(len(ticks))) + np.arange(len(ticks))


def _rescale(packet, time_base: fractions.Fraction) -> None:
    """Express the timestamps and duration of ``packet`` in ``time_base`` (segments may differ)."""
    if packet.time_base == time_base:
        return
    factor = packet.time_base / time_base
    packet.pts, packet.dts = round(packet.pts * factor), round(packet.dts * factor)
    packet.duration = round((packet.duration or 0) * factor)
    packet.time_base = time_base


def _even_sized(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"encode_segment expects uint8 [H, W, 3] BGR frames, got {_describe(image)}")
    pad_bottom, pad_right = image.shape[0] % 2, image.shape[1] % 2
    if not (pad_bottom or pad_right):
        return image
    import cv2

    return cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, cv2.BORDER_REPLICATE)


def _components(path: str) -> list[str]:
    """The safe, non-empty components of a path split at "/" and "\\" ("." and ".." dropped)."""
    return [safe for part in re.split(r"[/\\]", path) if (safe := _safe_component(part))]


def _safe_component(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = "".join("_" if unicodedata.category(ch)[0] in "CZ" and ch != " " else ch for ch in text)
    text = _UNSAFE_CHARS.sub("_", text).strip(". ")  # no hidden files, no "." or ".."
    encoded = text.encode("utf-8", "surrogatepass")[:_MAX_COMPONENT_BYTES]
    return encoded.decode("utf-8", "ignore").strip(". ")


def _stem(name: str) -> str:
    stem = os.path.splitext(name)[0].strip(". ")
    return stem or "_"


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
