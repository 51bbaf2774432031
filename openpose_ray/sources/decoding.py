"""Decoding shards into frames: BGR uint8 pixels (or a video's YUV 4:2:0 planes) with where they came from.

:func:`decode_frames` never raises for bad input: an unreadable object, a corrupt image,
a broken tar member or an undecodable video frame each become a :class:`Frame` with
status "error" and a message saying what was wrong, so the job writes an error row and
goes on. Messages pass through :func:`~openpose_ray.storage.redact`.

What each kind yields:

* images: one Frame per URI, in shard order (frame_index 0, timestamp None);
* video: exactly one Frame per planned frame (per kept frame of a sampled video,
  ``Shard.sampled``), frame_index = start_frame + rank in presentation order (the
  frame's true index in the video), timestamp = pts * time_base in seconds; pixels in
  the displayed orientation (a display matrix's rotation applied, :func:`displayed`). An
  MP4 cut short gets one more error row, at the index after its last frame, saying so. Frames are yielded as the
  decoder outputs them (presentation order); frames that could not be decoded follow
  as error Frames, with their index and timestamp. After a corrupt packet, the frames up
  to the next key frame are errors too (the decoder would only guess their pixels), so
  a damaged video gives the same rows however it is cut into segments. Only damage the
  decoder detects is reported: VP9, for one, has no checksums, and noise inside a frame's
  data can decode to wrong pixels without an error;
* pixels: BGR, except video frames asked for as ``planes`` (the job's decode tasks under
  ``sources.decoder: yuv`` or ``gpu``, whose NVDEC decodes with ``nvdec``), which come as their decoded YUV 4:2:0 planes
  (:class:`~.yuv.Yuv420`, no colour conversion on the CPU), turned to the displayed
  orientation like BGR frames; a video whose frames are not 8-bit 4:2:0 (or are of odd size
  and turned) is converted to BGR as before;
* tar: one Frame per image member (by extension, regular files only), in archive order
  (the archive is read as a stream, one pass, so members cannot be sorted);
  frame_index = index among the image members. A corrupt member gives an error Frame
  and decoding goes on; a broken archive gives one error Frame and ends the shard.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..jobconfig import S3Config, SourcesConfig
from ..storage import redact
from .errors import SourceError, error_kind
from .images import ImageDecodeError, decode_image
from .listing import classify
from .planning import Shard
from .s3io import open_stream, open_uri, read_bytes
from .nvdec import frame_decoded_by_nvdec, nvdec_accel, open_video
from .yuv import Yuv420, rotated, yuv420_of

logger = logging.getLogger(__name__)

_MAX_BYTES_PER_PIXEL = 8  # uncompressed 16-bit RGBA: the largest an image file of N pixels needs


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded image or video frame, or the record of one that could not be decoded.

    source: URI of the image, video or tar. member: name of the tar member, else None.
    frame_index: video frame in presentation order / index of the image among a tar's
        image members / 0 for a loose image.
    timestamp: seconds (pts * time_base) for video frames, None for still images.
    image: uint8[H, W, 3] BGR, None when status is "error" or the frame comes as ``planes``.
    planes: the frame's YUV 4:2:0 planes (video frames asked for as planes), else None.
    decoded_by: "nvdec" for a video frame the GPU decoded (``nvdec=True``), else "cpu".
    not_nvdec: why a video asked to decode with NVDEC was decoded on the CPU, else None.
    width, height: pixels (0 when unknown).
    status: "ok" or "error". error: what went wrong, None when ok.
    error_kind: which kind of failure (:data:`~.errors.ERROR_KINDS`), None when ok.
    """

    source: str
    member: str | None
    frame_index: int
    timestamp: float | None
    image: np.ndarray | None
    width: int
    height: int
    status: str
    error: str | None
    error_kind: str | None = None
    planes: Yuv420 | None = None
    decoded_by: str = "cpu"
    not_nvdec: str | None = None


def _ok(source: str, member: str | None, index: int, timestamp: float | None, pixels: np.ndarray | Yuv420,
        decoded_by: str = "cpu", not_nvdec: str | None = None) -> Frame:
    if isinstance(pixels, Yuv420):
        return Frame(source, member, index, timestamp, None, *pixels.size, "ok", None, planes=pixels,
                     decoded_by=decoded_by, not_nvdec=not_nvdec)
    return Frame(source, member, index, timestamp, pixels, pixels.shape[1], pixels.shape[0], "ok", None,
                 decoded_by=decoded_by, not_nvdec=not_nvdec)


def _error(source, member, index, timestamp, message: str, kind: str, width: int = 0, height: int = 0) -> Frame:
    return Frame(source, member, index, timestamp, None, width, height, "error", redact(message), kind)


def _describe(error: Exception) -> str:
    return str(error) if isinstance(error, (SourceError, ImageDecodeError)) else f"{type(error).__name__}: {error}"


def decode_frames(shard: Shard, sources: SourcesConfig, s3: S3Config, *, planes: bool = False,
                  nvdec: bool = False) -> Iterator[Frame]:
    """Frames of a shard (see module docstring); never raises for bad input.

    planes: yield video frames as their YUV 4:2:0 planes where they have them (``Frame.planes``), for the
    inference actor to convert; False: BGR ``Frame.image`` always (rendering, reports, predict).
    nvdec: decode video on the node's NVIDIA GPU where it can (sources.nvdec), else on the CPU, saying why
    (``Frame.not_nvdec``); the pixels are the same.
    """
    video = functools.partial(_decode_video, planes=planes, nvdec=nvdec)
    decoders = {"images": _decode_images, "video": video, "tar": _decode_tar}
    source = shard.uris[0] if shard.uris else shard.shard_id
    decoder = decoders.get(shard.kind)
    if decoder is None:
        yield _error(source, None, 0, None, f"unknown shard kind {shard.kind!r} (expected images, video or tar)",
                     "internal")
        return
    try:
        yield from decoder(shard, sources, s3)
    except Exception as error:  # a bug or an unforeseen failure: still one row, never a crashed task
        logger.exception("decoding shard %s failed", shard.shard_id)
        yield _error(source, None, shard.start_frame or 0, None, f"internal error while decoding: {_describe(error)}",
                     "internal")


# --- images -------------------------------------------------------------------------------


def _decode_images(shard: Shard, sources: SourcesConfig, s3: S3Config) -> Iterator[Frame]:
    for uri, version in zip(shard.uris, shard.versions):
        try:
            image = decode_image(read_bytes(uri, s3, expected_version=version or None), sources.max_image_pixels)
        except ImageDecodeError as error:
            yield _error(uri, None, 0, None, str(error), error.kind, error.width, error.height)
        except Exception as error:  # missing, changed, access denied, network
            yield _error(uri, None, 0, None, f"cannot read image: {_describe(error)}", error_kind(error))
        else:
            yield _ok(uri, None, 0, None, image)


# --- tar ----------------------------------------------------------------------------------


def _decode_tar(shard: Shard, sources: SourcesConfig, s3: S3Config) -> Iterator[Frame]:
    uri, version = shard.uris[0], shard.versions[0]
    max_member_bytes = _MAX_BYTES_PER_PIXEL * sources.max_image_pixels + (1 << 20)
    index, member_name = 0, None
    members_read = bytes_read = 0
    try:
        with contextlib.closing(open_stream(uri, s3, expected_version=version or None)) as file, tarfile.open(
            fileobj=file, mode="r|*", tarinfo=_StrictTarInfo
        ) as archive:
            while (member := archive.next()) is not None:
                archive.members.clear()  # tarfile keeps every header; a stream needs none of them
                members_read += 1
                bytes_read += max(member.size, 0)
                if members_read > sources.max_tar_members or bytes_read > sources.max_tar_bytes:
                    limit = (f"max_tar_members ({sources.max_tar_members})" if members_read > sources.max_tar_members
                             else f"max_tar_bytes ({sources.max_tar_bytes})")
                    yield _error(uri, member.name, index, None,
                                 f"tar archive exceeds {limit}: member {member.name!r} and the rest are not read",
                                 "too_large")
                    return
                if not member.isfile() or classify(member.name, sources) != "image":
                    continue
                member_name = member.name
                if member.size > max_member_bytes:  # skipped unread: the stream moves past it
                    message = (
                        f"tar member of {member.size} bytes exceeds what an image of max_image_pixels "
                        f"({sources.max_image_pixels}) can take"
                    )
                    frame = _error(uri, member.name, index, None, message, "too_large")
                else:
                    data = archive.extractfile(member).read()
                    try:
                        frame = _ok(uri, member.name, index, None, decode_image(data, sources.max_image_pixels))
                    except ImageDecodeError as error:
                        frame = _error(uri, member.name, index, None, str(error), error.kind, error.width,
                                       error.height)
                yield frame
                index, member_name = index + 1, None
    except Exception as error:  # not a tar, truncated, missing, network
        where = f" at member {member_name!r}" if member_name else ""
        yield _error(uri, member_name, index, None, f"cannot read tar archive{where}: {_describe(error)}",
                     error_kind(error))


class _TruncatedTar(SourceError):
    pass


class _StrictTarInfo(tarfile.TarInfo):
    """Fails on a truncated or corrupt header; tarfile takes one after the first member for the end of the archive."""

    @classmethod
    def fromtarfile(cls, archive):
        try:
            return super().fromtarfile(archive)
        except (tarfile.TruncatedHeaderError, tarfile.EmptyHeaderError, tarfile.InvalidHeaderError) as error:
            if archive.offset == 0:
                raise  # tarfile says "empty file" / "not a tar" itself
            raise _TruncatedTar(f"truncated or corrupt after byte {archive.offset} ({error})") from error


# --- video --------------------------------------------------------------------------------


class _NoVideoStream(SourceError):
    """The planned stream is not a video stream (the shard does not belong to this file)."""


class _MissedSeek(Exception):
    """Seeking failed or landed after the key frame the segment needs; decode from the start instead."""


def _decode_video(shard: Shard, sources: SourcesConfig, s3: S3Config, planes: bool = False,
                  nvdec: bool = False) -> Iterator[Frame]:
    uri = shard.uris[0]
    time_base = Fraction(*shard.time_base)
    emitted: set[int] = set()  # ranks within the segment already yielded
    notes: list[str] = []  # decode errors of single packets / frames
    problem: Exception | None = None  # an error that ended decoding early
    seek_targets = list(shard.seek_targets())  # in turn, then from the start
    while True:
        try:
            target = seek_targets.pop(0) if seek_targets else None
            for rank, pixels, decoded_by, not_nvdec in _segment_images(shard, s3, target, emitted, notes, planes,
                                                                       nvdec):
                emitted.add(rank)
                timestamp = float(shard.frame_pts[rank] * time_base)
                yield _ok(uri, None, shard.start_frame + rank, timestamp, pixels, decoded_by, not_nvdec)
        except _MissedSeek:
            continue
        except Exception as error:
            problem = error
        break
    missing = [rank for rank in shard.output_ranks() if rank not in emitted]
    if isinstance(problem, _NoVideoStream):  # nothing planned applies: one row, not one per frame
        missing = missing[:1]
    kind = "corrupt" if problem is None else error_kind(problem)
    if isinstance(problem, _NoVideoStream):
        kind = "unsupported"
    if isinstance(problem, SourceError):
        message = str(problem)
    elif problem is not None:
        message = f"cannot decode video: {_describe(problem)}"
    else:
        detail = f" (last decoder error: {notes[-1]})" if notes else ""
        message = f"video frame not decoded: corrupt or missing data in it or in a frame it depends on{detail}"
    for rank in missing:
        yield _error(uri, None, shard.start_frame + rank, float(shard.frame_pts[rank] * time_base), message, kind)
    if shard.truncated:  # the frames the container lists past the end of the file: one row says so
        yield _error(uri, None, shard.end_frame, None, shard.truncated, "corrupt")


def displayed(image: np.ndarray, rotation: float) -> np.ndarray:
    """A decoded frame uint8[H, W, 3] as players show it.

    rotation: the frame's display-matrix rotation as FFmpeg reports it
    (``av_display_rotation_get``: degrees counter-clockwise, e.g. -90 for a
    phone's portrait video stored landscape); the frame is turned the other way,
    by a multiple of 90 degrees (the only turns containers use). Like EXIF on
    images, so keypoints, width and height are those of the displayed frame.
    """
    turn = _quarter_turns(rotation)
    if turn == 0:
        return image
    import cv2

    return cv2.rotate(image, (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)[turn - 1])


_logged: set[str] = set()  # reasons for not using NVDEC already logged by this process


def _log_once(message: str, reason: str) -> None:
    """Log why a video is not decoded by NVDEC, once per reason and process (every shard of a CPU node would)."""
    if reason not in _logged:
        _logged.add(reason)
        logger.warning(message)


def _quarter_turns(rotation: float) -> int:
    """Clockwise quarter turns that show a frame of display-matrix ``rotation`` upright (see :func:`displayed`)."""
    return int(round(-rotation / 90.0)) % 4


def _pixels(frame, yuv: bool) -> np.ndarray | Yuv420:
    """A decoded PyAV frame as displayed: its YUV 4:2:0 planes where ``yuv`` and the frame has them, else BGR."""
    turns = _quarter_turns(frame.rotation)
    planes = yuv420_of(frame) if yuv else None
    if planes is not None and not (turns and (frame.width % 2 or frame.height % 2)):
        return rotated(planes, turns)
    return displayed(frame.to_ndarray(format="bgr24"), frame.rotation)


def _landed_at_or_before(packet, shard: Shard) -> bool:
    """Whether the first packet after a seek is the key frame ``shard.seek_ts`` or an earlier one.

    Key frames' pts grow in decode order, so a key frame's pts at most that one's is it or
    an earlier one; without a pts, a dts at most the smaller of its pts and dts is.
    """
    if not packet.is_keyframe:
        return False
    if packet.pts is not None:
        return packet.pts <= shard.seek_ts
    return packet.dts is not None and packet.dts <= min(shard.seek_targets())


def _segment_images(shard: Shard, s3: S3Config, seek_ts, emitted: set[int], notes: list[str], yuv: bool = False,
                    nvdec: bool = False):
    """(rank, pixels, decoded_by, not_nvdec) of the segment's frames as the decoder outputs them: pixels
    uint8[H, W, 3] BGR, or :class:`Yuv420` planes where ``yuv`` and the video has them (:func:`_pixels`);
    decoded_by "nvdec" or "cpu"; not_nvdec why NVDEC (asked for by ``nvdec``) did not decode the frame.

    seek_ts: one of ``shard.seek_targets()``, or None to decode from the start. Raises
    _MissedSeek when the seek fails or lands after the key frame ``shard.seek_ts``.

    The caller adds each yielded rank to ``emitted`` before asking for the next one;
    decoding stops once every rank is there.
    """
    import av

    output = set(shard.output_ranks())  # a sampled video's other frames are decoded (later ones depend on
    wanted = len(output)                 # them) but never converted to pixels
    rank_of = {pts: rank for rank, pts in enumerate(shard.frame_pts)}
    last_pts = shard.frame_pts[max(output)]
    accel, not_nvdec = nvdec_accel(shard.shard_id) if nvdec else (None, None)
    file, container, why = open_video(lambda: open_uri(shard.uris[0], s3, expected_version=shard.versions[0] or None),
                                      accel)
    not_nvdec = not_nvdec or why
    with file, container:
        if shard.stream_index >= len(container.streams) or container.streams[shard.stream_index].type != "video":
            raise _NoVideoStream(f"video has no video stream at index {shard.stream_index}")
        stream = container.streams[shard.stream_index]
        codec = stream.codec_context
        if accel is not None and not_nvdec is None and not codec.is_hwaccel:
            not_nvdec = f"NVDEC has no decoder for {codec.name}"
        if not_nvdec is not None and nvdec:
            _log_once(f"{redact(shard.uris[0])}: {not_nvdec}; decoding it on the CPU", not_nvdec)
        # PyAV's default slice threading: frame threading ("AUTO") is barely faster here and,
        # after a corrupt packet, leaves frames stuck in the decoder (EAGAIN on every later packet).
        if seek_ts is not None:
            try:
                container.seek(seek_ts, stream=stream, backward=True, any_frame=False)
            except av.FFmpegError as error:
                raise _MissedSeek() from error
        first, output_rank = True, 0
        # After a packet failed to decode, the decoder conceals the damage: the frames it outputs
        # until the next key frame are predicted from missing or corrupt references, so their
        # pixels are not the video's. They are dropped (reported missing), conservatively: also a
        # frame decoded before the failure but output after it (B-frame reordering).
        references_broken = False
        for packet in container.demux(stream):
            if packet.size and first:
                first = False
                if seek_ts is not None and not _landed_at_or_before(packet, shard):
                    raise _MissedSeek()
            # A packet decoded after the segment's last pts means every packet of the segment
            # has been sent (dts <= pts): flush the decoder instead, and stop reading.
            past_end = bool(packet.size) and packet.dts is not None and packet.dts > last_pts
            past_end = past_end and not shard.order_by_output
            try:
                frames = stream.codec_context.decode(None) if past_end else packet.decode()
            except av.FFmpegError as error:  # a corrupt packet: skip it, its frame is reported missing
                notes.append(str(error))
                references_broken = True
                if isinstance(error, BlockingIOError):  # the decoder is stuck: reset it (until the next key frame)
                    stream.codec_context.flush_buffers()
                frames = []
            for frame in frames:
                if shard.order_by_output:
                    rank, output_rank = output_rank, output_rank + 1
                else:
                    rank = rank_of.get(frame.pts if frame.pts is not None else frame.dts)
                if references_broken:
                    if not frame.key_frame:
                        continue
                    references_broken = False
                if rank is None or rank not in output or rank in emitted:
                    continue
                try:
                    pixels = _pixels(frame, yuv)
                except (av.FFmpegError, ValueError) as error:
                    notes.append(str(error))
                    continue
                if accel is not None and frame_decoded_by_nvdec(codec, frame):
                    yield rank, pixels, "nvdec", None
                else:  # FFmpeg decodes a profile NVDEC lacks (4:4:4, 4:2:2) in software, within the same open
                    yield rank, pixels, "cpu", not_nvdec or (f"NVDEC does not decode this {codec.name} stream"
                                                             if accel is not None else None)
                if len(emitted) == wanted:
                    return
            if past_end:
                return
