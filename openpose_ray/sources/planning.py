"""Cutting listed objects into shards: the units of work the decode stage reads.

A shard is a frozen, picklable value with a deterministic id: the same objects (same
URIs and versions) planned with the same settings give the same ids, so a re-run can
tell which shards it already wrote. The id is ``<kind>-`` + 16 hex digits of the SHA-1
of the fields that define the content (kind, URIs, versions and, for a video segment,
the stream and frame range).

* images: consecutive loose images, ``images_per_shard`` at a time (:func:`group_images`);
* video: one shard per segment of about ``frames_per_segment`` frames, cut at key
  frames where the video has them near enough (:func:`plan_video`, :func:`segment_bounds`);
* tar: one shard per archive (:func:`plan_tar`): its members are only known after
  reading every header, which for S3 means reading the whole archive, so the decode
  stage streams it in a single pass instead of planning inside it.

A container with several video streams gives its largest (:func:`video_stream`).
Video frames are numbered in presentation order: the packets' pts, sorted (a packet
without pts uses its dts). Timestamps are ``pts * time_base`` of the container, never
index / fps, so variable frame rates and gaps are kept.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..jobconfig import S3Config
from ..storage import redact
from .errors import SourceError, UnreadableVideo
from .listing import SourceObject
from .s3io import open_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """A unit of decoding work.

    shard_id: "<kind>-<16 hex digits>", deterministic (see module docstring).
    kind: "images" | "video" | "tar".
    uris, versions: the image URIs of an images shard, or the one video / tar URI; versions
        parallel to uris (S3 ETag or local mtime_ns, checked when reading).
    Video segments only (None / () otherwise):
    start_frame, end_frame: frame indices [start, end) in presentation order.
    stream_index: index of the video stream in the container.
    frame_pts: the sorted pts of the segment's frames (end - start values), in time_base units.
    time_base: (numerator, denominator) of the stream's time base; seconds = pts * num / den.
    seek_ts, seek_dts: pts and dts (time_base units) of the key frame the segment is decoded
        from; None to decode from the start of the file (see :meth:`seek_targets`).
    order_by_output: the container's pts are not trustworthy (B-frames in a container
        without pts, e.g. AVI): frames are numbered in the order the decoder outputs them
        and the video is a single segment decoded from the start.
    sizes: bytes of each of ``uris`` at listing (recorded in the manifest).
    video_frames: frames of the whole video (video segments only).
    frames_per_segment, segment_cut: the cut the video was planned with (video segments
        only; see :func:`segment_bounds`).
    sampled: ranks (0-based within the segment) of the frames to decode to pixels when the
        video is sampled (``sources.frame_step`` / ``target_fps``); () for every frame.
    truncated: on a video's last segment, why the file ends before the frames its container
        lists (an MP4 cut short); decoding then adds one error row after the last frame.
    """

    shard_id: str
    kind: str
    uris: tuple[str, ...]
    versions: tuple[str, ...]
    start_frame: int | None = None
    end_frame: int | None = None
    stream_index: int | None = None
    frame_pts: tuple[int, ...] = ()
    time_base: tuple[int, int] | None = None
    seek_ts: int | None = None
    seek_dts: int | None = None
    order_by_output: bool = False
    sizes: tuple[int, ...] = ()
    video_frames: int | None = None
    frames_per_segment: int | None = None
    segment_cut: str | None = None
    sampled: tuple[int, ...] = ()
    truncated: str | None = None

    def seek_targets(self) -> tuple[int, ...]:
        """Timestamps to seek backward from, in turn, to reach the key frame at ``seek_ts``
        (sources.decoding checks where each lands; after the last, it decodes from the start).

        Demuxers find key frames by pts in some files and by dts in others: the key frame's
        pts lands on it either way, unless a later key frame's dts is at most that pts (then
        the landing is refused); the smaller of pts and dts lands on it or an earlier one.
        The pts first: with B-frames (dts before pts), the smaller lands a whole GOP early
        where the index holds pts (Matroska, AVI and the MP4s of docs/benchmarks.md
        "Segments cut at key frames"), and that GOP is decoded for nothing.
        """
        if self.seek_ts is None:
            return ()
        if self.seek_dts is None or self.seek_dts >= self.seek_ts:
            return (self.seek_ts,)
        return (self.seek_ts, self.seek_dts)

    def output_ranks(self) -> tuple[int, ...] | range:
        """Ranks within a video segment of the frames it yields (all of them unless sampled)."""
        return self.sampled if self.sampled else range(len(self.frame_pts))


def shard_id(kind: str, *content) -> str:
    """Deterministic id of a shard from the JSON-serialisable values that define its content."""
    digest = hashlib.sha1(json.dumps([kind, *content], separators=(",", ":")).encode()).hexdigest()
    return f"{kind}-{digest[:16]}"


def group_images(objects: Iterable[SourceObject], images_per_shard: int) -> Iterator[Shard]:
    """Consecutive image objects, ``images_per_shard`` per shard (the last one may be smaller); others are ignored."""
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    batch: list[SourceObject] = []
    for obj in objects:
        if obj.kind != "image":
            continue
        batch.append(obj)
        if len(batch) == images_per_shard:
            yield _images_shard(batch)
            batch = []
    if batch:
        yield _images_shard(batch)


def _images_shard(batch: list[SourceObject]) -> Shard:
    uris = tuple(obj.uri for obj in batch)
    versions = tuple(obj.version for obj in batch)
    return Shard(shard_id("images", uris, versions), "images", uris, versions, sizes=tuple(obj.size for obj in batch))


def plan_tar(obj: SourceObject) -> list[Shard]:
    """One shard for the whole archive (see module docstring)."""
    return [Shard(shard_id("tar", obj.uri, obj.version), "tar", (obj.uri,), (obj.version,), sizes=(obj.size,))]


def sample_frames(seconds: list[float], frame_step: int = 1, target_fps: float | None = None) -> list[int]:
    """Indices of the frames kept out of frames at ``seconds`` (presentation order, increasing).

    frame_step: every Nth frame from the first (0, N, 2N, ...). target_fps: for each
    time ``first + k / target_fps`` up to the last frame, the frame nearest to it (the
    earlier on a tie), each frame at most once; at or above the video's own rate that is
    every frame. With both given, the step applies to the frames the rate keeps.
    """
    kept = list(range(len(seconds)))
    if target_fps is not None and seconds:
        times = np.asarray(seconds, dtype=np.float64)
        targets = times[0] + np.arange(int(np.floor((times[-1] - times[0]) * target_fps + 1e-9)) + 1) / target_fps
        after = np.clip(np.searchsorted(times, targets), 1, len(times) - 1) if len(times) > 1 else np.zeros(len(targets), int)
        before = np.maximum(after - 1, 0)
        nearest = np.where(np.abs(times[after] - targets) < np.abs(times[before] - targets), after, before)
        kept = sorted(set(nearest.tolist()))
    return kept[::frame_step]


SEGMENT_CUTS = ("key_frames", "frames")
DEFAULT_SEGMENT_CUT = "key_frames"  # new videos; a video partly annotated keeps the cut it was started with


def segment_bounds(kept: Sequence[int], frames: int, key_positions: Sequence[int], frames_per_segment: int,
                   segment_cut: str) -> list[int]:
    """Where a video's segments begin and end: [0, b1, ..., frames], frame indices in presentation order.

    kept: the sorted indices of the frames to annotate (every frame unless sampled); frames:
    the video's frame count; key_positions: sorted indices of its key frames.

    segment_cut "frames": a new segment every ``frames_per_segment`` kept frames (the next
    segment starts at its first kept frame). "key_frames": where a key frame lies between
    half and twice ``frames_per_segment`` kept frames into the segment, the next one starts
    there instead (the key frame nearest to the cut "frames" would make; the earlier of two
    as near), and is decoded from its own first frame; where none is and the rest of the
    video holds at most twice ``frames_per_segment`` kept frames, the rest is the last
    segment. Segments hold at most twice ``frames_per_segment`` kept frames.

    Why: a segment that starts elsewhere is decoded from the key frame before it, and every
    frame from there to its start is decoded by two tasks; with a key frame every 250
    frames (x264's default) and segments of 128, that is most segments, about as many
    frames again (docs/benchmarks-history.md "Segments cut at key frames").
    """
    if segment_cut not in SEGMENT_CUTS:
        raise ValueError(f"segment_cut must be one of {SEGMENT_CUTS}, got {segment_cut!r}")
    bounds, first = [0], 0  # first: rank in ``kept`` of the current segment's first kept frame
    while first + frames_per_segment < len(kept):
        nominal = first + frames_per_segment  # rank of the next segment's first kept frame, cut "frames"
        start, next_first = kept[nominal], nominal
        if segment_cut == "key_frames":
            lowest = first + (frames_per_segment + 1) // 2
            highest = min(first + 2 * frames_per_segment, len(kept) - 1)  # the next segment keeps a frame
            # the key frames after which the next kept frame has a rank in [lowest, highest]
            near = key_positions[bisect.bisect_right(key_positions, kept[lowest - 1]):
                                 bisect.bisect_right(key_positions, kept[highest])]
            if near:
                start = min(near, key=lambda position: abs(bisect.bisect_left(kept, position) - nominal))
                next_first = bisect.bisect_left(kept, start)
            elif len(kept) - first <= 2 * frames_per_segment:
                break  # the rest as one segment: a cut here would be decoded from the key frame before it
        bounds.append(start)
        first = next_first
    bounds.append(frames)
    return bounds


def plan_video(obj: SourceObject, frames_per_segment: int, s3: S3Config, frame_step: int = 1,
               target_fps: float | None = None, segment_cut: str = DEFAULT_SEGMENT_CUT) -> list[Shard]:
    """Segments of the video stream :func:`video_stream` picks, from its packets (nothing is decoded).

    Each segment holds about ``frames_per_segment`` frames to annotate, cut as
    ``segment_cut`` says (:func:`segment_bounds`; a video partly annotated by an
    earlier run is cut as it was then). Sampled
    (``frame_step`` > 1 or ``target_fps``, see :func:`sample_frames`), a segment
    spans the video's frames from its start (its first kept frame or the key frame
    it was cut at; the first segment from frame 0) to the next segment's start, so
    segments still tile the video, and
    ``Shard.sampled`` names the kept ones.

    Reads the whole file once (demuxing), through ranged GETs for S3. Raises
    UnreadableVideo (a SourceError) when the file is not a video PyAV can demux, has no
    video stream or no frames; ObjectMissing / ObjectChanged when the object vanished or
    changed since it was listed.
    """
    import av

    if frames_per_segment < 1:
        raise ValueError(f"frames_per_segment must be >= 1, got {frames_per_segment}")
    try:
        with open_uri(obj.uri, s3, expected_version=obj.version or None) as file, av.open(file, "r") as container:
            stream = video_stream(container, obj.uri)
            if stream is None:
                raise UnreadableVideo(f"video has no video stream: {redact(obj.uri)}")
            index, time_base = stream.index, stream.time_base
            if time_base is None:
                raise UnreadableVideo(f"video stream without a time base: {redact(obj.uri)}")
            unordered_pts = _has_b_frames(stream)
            # Packet timestamps in decode order, compactly: an hour at 60 fps is 216k packets.
            ts, dts, keys = array("q"), array("q"), array("q")
            # MP4 / MOV list every sample up front (moov), so a file cut short is known by its count.
            listed = stream.frames if any(n in container.format.name.split(",") for n in ("mp4", "mov")) else 0
            packets = 0
            for packet in container.demux(stream):
                packets += packet.size > 0
                if packet.size == 0 or packet.is_discard:  # flush markers; frames the decoder drops (edit lists)
                    continue
                value = packet.pts if packet.pts is not None else packet.dts
                if value is None:
                    raise UnreadableVideo(f"video packet without timestamps (pts and dts) in {redact(obj.uri)}")
                if packet.is_keyframe:
                    keys.append(len(ts))
                ts.append(value)
                dts.append(packet.dts if packet.dts is not None else value)
    except SourceError:
        raise
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise UnreadableVideo(f"not a readable video: {redact(obj.uri)}: {redact(str(error))}") from error
    if not ts:
        raise UnreadableVideo(f"video has no frames: {redact(obj.uri)}")
    presented = sorted(set(ts))  # a duplicated pts is one frame (the decoder outputs one of them)
    truncated = (f"video truncated: the file ends after {packets} of the {listed} frames its container lists"
                 if listed and packets < listed else None)
    sampling = frame_step != 1 or target_fps is not None
    kept = sample_frames([float(p * time_base) for p in presented], frame_step, target_fps) if sampling else None
    if unordered_pts and all(a < b for a, b in zip(ts, ts[1:])):
        # B-frames, yet pts increase in decode order: the container made them up from dts.
        return [_segment(obj, index, time_base, 0, presented, None, len(presented), len(presented), segment_cut,
                         order_by_output=True, sampled=tuple(kept) if sampling else (), truncated=truncated)]
    first_decoded = {}  # pts -> decode index of its packet
    for decode_index, value in enumerate(ts):
        first_decoded.setdefault(value, decode_index)
    if kept is None:
        kept = range(len(presented))
    key_positions = sorted({bisect.bisect_left(presented, ts[k]) for k in keys})
    bounds = segment_bounds(kept, len(presented), key_positions, frames_per_segment, segment_cut)
    shards = []
    for number, (start, end) in enumerate(zip(bounds, bounds[1:])):
        chunk = kept[bisect.bisect_left(kept, start) : bisect.bisect_left(kept, end)]
        # decoding starts at the key frame before the first frame kept, not before the segment's start
        earliest = min(first_decoded[p] for p in presented[chunk[0] : end])
        key_frame = _seek_target(keys, ts, dts, earliest, presented[chunk[0]])
        sampled = tuple(i - start for i in chunk) if sampling else ()
        last = end == len(presented)
        shards.append(_segment(obj, index, time_base, start, presented[start:end], key_frame, len(presented),
                               frames_per_segment, segment_cut, sampled=sampled, truncated=truncated if last else None))
    return shards


def _seek_target(keys: array, ts: array, dts: array, earliest: int, first_pts: int) -> tuple[int, int] | None:
    """(pts, dts) of the key frame to decode from: the last one decoded at or before ``earliest``
    that is not presented after the segment's first frame (so no frame of the segment is a
    leading frame of an open GOP). None: decode from the start."""
    k = bisect.bisect_right(keys, earliest) - 1
    while k >= 0 and ts[keys[k]] > first_pts:
        k -= 1
    if k < 0 or keys[k] == 0:
        return None
    return ts[keys[k]], dts[keys[k]]


def _segment(obj, index, time_base, start, segment_pts, key_frame, video_frames, frames_per_segment, segment_cut,
             order_by_output=False, sampled: tuple[int, ...] = (), truncated: str | None = None) -> Shard:
    end = start + len(segment_pts)
    content = (obj.uri, obj.version, index, start, end) + ((list(sampled),) if sampled else ()) + (
        (truncated,) if truncated else ())
    return Shard(
        shard_id=shard_id("video", *content),
        kind="video",
        uris=(obj.uri,),
        versions=(obj.version,),
        start_frame=start,
        end_frame=end,
        stream_index=index,
        frame_pts=tuple(segment_pts),
        time_base=(time_base.numerator, time_base.denominator),
        seek_ts=key_frame[0] if key_frame else None,
        seek_dts=key_frame[1] if key_frame else None,
        order_by_output=order_by_output,
        sizes=(obj.size,),
        video_frames=video_frames,
        frames_per_segment=frames_per_segment,
        segment_cut=segment_cut,
        sampled=sampled,
        truncated=truncated,
    )


def video_stream(container, uri: str = ""):
    """The video stream to annotate, or None: of the streams that are not attached pictures (cover art),
    the one with the most pixels (a camera's preview stream is smaller than its main one); on a tie the
    one marked default, then the first. Size comes first because muxers mark the first track default
    by themselves when none is, so a preview written first is often the "default"."""
    import av

    candidates = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not candidates:
        return None
    chosen = max(candidates, key=lambda s: ((s.width or 0) * (s.height or 0),
                                            bool(s.disposition & av.stream.Disposition.default), -s.index))
    if len(candidates) > 1:
        log.info("%s: %d video streams; annotating stream %d (%dx%d, the largest)", redact(uri), len(candidates),
                 chosen.index, chosen.width or 0, chosen.height or 0)
    return chosen


def _has_b_frames(stream) -> bool:
    try:
        return bool(stream.codec_context.has_b_frames)
    except AttributeError:
        return False
