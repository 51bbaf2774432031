"""Rendered media: annotated images, and annotated videos assembled from segments.

Rendering decodes the shard again instead of carrying full-size frames through
the pipeline: memory stays bounded by the network inputs, and the cost is paid
only when rendering is asked for. A video's segments are encoded in parallel
as H.264 MP4s under ``media/.segments/`` and joined without re-encoding into
``media/videos/<name>.mp4`` when the job has finished.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pyarrow.fs as pafs
import ray

from ..jobconfig import JobConfig
from ..models.registry import get_entry
from ..outputs.media import concat_segments, encode_image, encode_segment, media_path_for
from ..outputs.writer import delete_uris, output_uri, write_bytes
from ..person import Person
from ..drawing import draw
from ..skeleton import Skeleton
from ..sources.decoding import decode_frames
from ..sources.s3io import read_bytes
from ..storage import parse
from .records import ShardFrames

log = logging.getLogger(__name__)

_DEFAULT_FPS = 30.0


def render_people(frames: ShardFrames, people: Sequence[list[Person]], config: JobConfig) -> dict:
    """Draw ``people`` (per frame of ``frames``, keypoints of the job's model's skeleton) on the shard's
    frames, decoded again; return what was written."""
    people_by_frame = {(meta.source, meta.member, meta.frame_index): persons
                       for meta, persons in zip(frames.frames, people) if meta.status == "ok"}
    skeleton = get_entry(config.model.name).skeleton
    if frames.source_kind == "video":
        return _render_video_segment(frames, people_by_frame, config, skeleton)
    written = 0
    for frame in decode_frames(frames.shard, config.sources, config.s3):
        persons = people_by_frame.get((frame.source, frame.member, frame.frame_index))
        if frame.status != "ok" or persons is None:
            continue
        ext = ".png" if (frame.member or frame.source).lower().endswith(".png") else ".jpg"
        relative = media_path_for(frame.source, frame.member, kind="images", ext=ext)
        write_bytes(output_uri(config.output, relative), encode_image(draw(frame.image, persons, skeleton, config.write.render_style), ext), config.s3)
        written += 1
    return {"images": written}


def _render_video_segment(frames: ShardFrames, people_by_frame: dict, config: JobConfig,
                           skeleton: Skeleton) -> dict:
    drawn, timestamps = [], []
    for frame in decode_frames(frames.shard, config.sources, config.s3):
        persons = people_by_frame.get((frame.source, frame.member, frame.frame_index))
        if frame.status != "ok" or persons is None:
            continue
        drawn.append(draw(frame.image, persons, skeleton, config.write.render_style))
        timestamps.append(frame.timestamp)
    if not drawn:
        return {}
    source = frames.frames[0].source
    steps = np.diff(timestamps)
    fps = float(1.0 / np.median(steps)) if len(steps) and np.median(steps) > 0 else _DEFAULT_FPS
    video_path = media_path_for(source, None, kind="videos", ext=".mp4")
    # media/videos/x.mp4 -> media/.segments/videos/x.mp4/<first frame>.mp4, joined at the end of the job.
    segment = output_uri(config.output, f"media/.segments/{video_path.split('/', 1)[1]}/{frames.shard.start_frame:010d}.mp4")
    write_bytes(segment, encode_segment(drawn, timestamps, fps), config.s3)
    return {"video": source, "start_frame": frames.shard.start_frame, "segment": segment, "frames": len(drawn)}


@ray.remote(num_cpus=1)
def _assemble_video(source: str, segments: list[str], config: JobConfig) -> str:
    data = concat_segments([read_bytes(uri, config.s3) for uri in segments])
    target = output_uri(config.output, media_path_for(source, None, kind="videos", ext=".mp4"))
    write_bytes(target, data, config.s3)
    _delete_segments(segments, config)
    return target


def _delete_segments(segments: list[str], config: JobConfig) -> None:
    """Remove a joined video's segment files, leaving nothing behind under media/.segments/
    (locally, the folders emptied by the deletion are removed up to media/.segments)."""
    delete_uris(segments, config.s3)
    for folder in {os.path.dirname(parse(uri).key) for uri in segments if parse(uri).scheme != "s3"}:
        _remove_empty_folders(folder, config)


def _remove_empty_folders(folder: str, config: JobConfig) -> None:
    """rmdir ``folder`` and its parents while empty, up to and including <output>/media/.segments."""
    last = os.path.normpath(parse(output_uri(config.output, "media/.segments")).key)
    folder = os.path.normpath(folder)
    while folder == last or folder.startswith(last + os.sep):
        try:
            os.rmdir(folder)
        except OSError:  # not empty: another video's segments are still there
            return
        folder = os.path.dirname(folder)


def assemble_pending_videos(complete_sources: list[str], config: JobConfig) -> list[str]:
    """Join the segment MP4s of every complete video that has segments waiting; return the written URIs.

    The segments are found under media/.segments/ whichever run wrote them, so a
    video annotated over several runs (a resumed crash) is joined whole, and one
    whose last segment was committed just before the driver died is joined by
    the next run. ``complete_sources``: videos whose every frame is committed.
    """
    from ..outputs.writer import list_files, output_filesystem

    segments_root = parse(config.output).join("media/.segments")
    base = output_filesystem(segments_root, config.s3)[1]
    waiting: dict[str, list[str]] = {}
    for info in list_files(segments_root, config.s3):
        if info.type == pafs.FileType.File and info.path.endswith(".mp4"):
            folder, name = info.path.rsplit("/", 1)
            waiting.setdefault(folder, []).append(name)
    refs = []
    for source in complete_sources:
        video_path = media_path_for(source, None, kind="videos", ext=".mp4")
        folder = f"{base}/{video_path.split('/', 1)[1]}"
        if folder in waiting:
            segments = [output_uri(config.output, f"media/.segments/{video_path.split('/', 1)[1]}/{name}")
                        for name in sorted(waiting[folder])]  # names are zero-padded first frames
            refs.append(_assemble_video.remote(source, segments, config))
    return ray.get(refs)
