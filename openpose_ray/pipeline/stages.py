"""The pipeline's stages as Ray Data row functions, each turning one typed record into the next.

Rows are ``{"key", "record"}`` (pipeline.records): a stage unpickles the
record, dispatches on its type and returns a new record. Frames travel as
uint8 network inputs; what the inference actor returns per frame is either
its float fields (``peaks_on: cpu``) or, found on the actor's device, its
peaks and scored limb candidates (``peaks_on: device``, a few kB).

    plan_shards            ToPlan (video/tar) -> Shard per segment / tar, or FailedInput
    prepare_shard          Shard -> PreparedShard: decode + resize to uint8 inputs   (CPU; sources.decoder
                           yuv / gpu: a video's YUV 4:2:0 planes, decoded on the CPU / by NVDEC,
                           converted + resized by the actor)
    InferenceActor         PreparedShard -> InferredShard: fields, or peaks + limbs  (GPU or CPU actor;
                           pipeline.inference_actor: the one stage that imports torch)
    postprocess_and_write  InferredShard -> WrittenShard: people -> Parquet          (CPU)
    render_shard           WrittenShard -> WrittenShard: decode again, draw -> media (CPU, optional)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from ..frame_outputs import FrameFields, FramePeaks
from ..jobconfig import JobConfig
from ..models.registry import get_entry
from ..outputs.frames_table import ShardTablesBuilder
from ..outputs.manifest import relative_to_output, write_commit
from ..outputs.provenance import Provenance
from ..outputs.writer import ShardWriter, output_uri, partition_value, write_bytes
from ..person import Person, people_from_fields, people_from_peaks
from ..preprocess import prepare_image, prepare_planar, resolve_input_spec
from ..sources.decoding import decode_frames
from ..sources.errors import RETRIED_KINDS, error_kind
from ..sources.planning import DEFAULT_SEGMENT_CUT, Shard, plan_tar, plan_video
from ..storage import redact, stable_id, text_form
from .records import (FailedInput, FrameMeta, InferredShard, PreparedShard, ShardFrames, ShardStats, StageEnds,
                      StageSeconds, ToPlan, WrittenShard, from_row, to_row)

log = logging.getLogger(__name__)

_SOURCE_KIND = {"images": "image", "video": "video", "tar": "tar"}

_yielded = False  # whether this process's priority was lowered already


def _yield_to_inference() -> None:
    """Run this worker process's CPU stages at idle priority (once per process; Ray reuses task workers).

    The actor's forward is a parallel region over all the cores it was given: one of its
    threads preempted by a decode task stalls the others, so on a small machine decoders at
    equal priority made each forward ~1.3x slower and the job 1.84x the plain loop's time;
    at SCHED_IDLE the CPU stages take only the cycles the network leaves, and the actor (or
    a GPU's feeding thread) never waits on them (docs/benchmarks-history.md "Ray job vs plain loop").
    Where SCHED_IDLE is not available, the lowest nice value does most of it.
    """
    global _yielded
    if _yielded:
        return
    _yielded = True
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not permitted
        try:
            os.nice(19)
        except OSError:
            pass


def plan_shards(row: dict, config: JobConfig) -> list[dict]:
    """Cut a listed video into segments and a tar into its shard; everything else passes.

    A video partly done by an earlier run is cut as it was then, and the segments
    it committed are left out.
    """
    _yield_to_inference()
    record = from_row(row)
    if not isinstance(record, ToPlan):
        return [row]
    obj, todo = record.obj, record.todo
    try:
        if obj.kind == "video":
            shards = plan_video(obj, todo.frames_per_segment or config.sources.frames_per_segment, config.s3,
                                frame_step=config.sources.frame_step, target_fps=config.sources.target_fps,
                                segment_cut=todo.segment_cut or DEFAULT_SEGMENT_CUT)
            shards = [shard for shard in shards if shard.start_frame not in todo.done_starts]
        else:
            shards = plan_tar(obj)
    except Exception as exc:  # a broken input is data: record it and go on
        message = redact(f"cannot read {obj.kind}: {exc}")
        log.warning("%s: %s", redact(obj.uri), message)
        failed = FailedInput(f"{obj.kind}-failed-{stable_id(obj.uri)}", obj.kind, obj.uri, message, obj.version, obj.size,
                             error_kind(exc))
        return [to_row(failed, failed.shard_id)]
    return [to_row(shard, shard.shard_id) for shard in shards]


def model_input_spec(config: JobConfig):
    """The job's input spec: the model's, with the job's resize mode and size."""
    model = config.model
    return resolve_input_spec(get_entry(model.name).input_spec, model.net_size, model.resize_mode, model.aspect_buckets)


def prepare_shard(row: dict, config: JobConfig) -> dict:
    """Decode a shard's frames and resize them to the network's uint8 inputs (a PreparedShard); under
    ``sources.decoder: yuv`` or ``gpu`` (decoded by NVDEC where it can) a video's frames stay YUV 4:2:0
    planes (PlanarImage) for the actor to convert."""
    _yield_to_inference()
    record = from_row(row)
    if isinstance(record, FailedInput):
        meta = FrameMeta(record.uri, None, 0, None, 0, 0, "error", record.error, record.error_kind)
        frames = ShardFrames(record.shard_id, record.source_kind, None, (meta,), (None,), failed=record)
        return to_row(PreparedShard(frames, (None,), StageSeconds(), StageEnds(decode=time.time())), record.shard_id)
    if not isinstance(record, Shard):
        return row
    shard, spec = record, model_input_spec(config)
    start = time.perf_counter()
    resize_seconds = 0.0
    yuv_frames = 0
    metas, transforms, inputs = [], [], []
    decoder = config.sources.decoder
    nvdec_frames, not_nvdec = 0, None
    for frame in decode_frames(shard, config.sources, config.s3, planes=decoder in ("yuv", "gpu"),
                               nvdec=decoder == "gpu"):
        item = None
        nvdec_frames += frame.decoded_by == "nvdec"
        not_nvdec = not_nvdec or frame.not_nvdec
        status, error, kind = frame.status, frame.error, frame.error_kind
        if status == "ok":
            resize_start = time.perf_counter()
            try:
                if frame.planes is not None:  # sources.decoder yuv or gpu: converted and resized by the actor
                    item = prepare_planar(frame.planes, spec, spec.net_size, config.model.scales)
                    yuv_frames += 1
                else:
                    item = prepare_image(frame.image, spec, spec.net_size, config.model.scales)
            except Exception as exc:
                status, error, kind = "error", redact(f"cannot pre-process frame: {exc}"), "internal"
            resize_seconds += time.perf_counter() - resize_start
        metas.append(FrameMeta(frame.source, frame.member, frame.frame_index, frame.timestamp,
                               frame.width, frame.height, status, error, kind))
        inputs.append(item)
        transforms.append(item.base_transform if item is not None else None)
    frames = ShardFrames(shard.shard_id, _SOURCE_KIND[shard.kind], shard, tuple(metas), tuple(transforms),
                         yuv_frames=yuv_frames, nvdec_frames=nvdec_frames, not_nvdec=not_nvdec)
    seconds = StageSeconds(decode=time.perf_counter() - start - resize_seconds, resize=resize_seconds)
    return to_row(PreparedShard(frames, tuple(inputs), seconds, StageEnds(decode=time.time())), shard.shard_id)


def _people(result: FrameFields | FramePeaks, transform, entry, config: JobConfig) -> list[Person]:
    """People of one frame from its fields, or from its device peaks and limb candidates."""
    if isinstance(result, FramePeaks):
        return people_from_peaks(result, transform, entry, config.postprocess)
    return people_from_fields(result.heatmaps, result.pafs, transform, entry, config.postprocess)


def postprocess_and_write(row: dict, config: JobConfig, provenance: Provenance) -> dict:
    """Find the people of an InferredShard, write its two Parquet files, and commit it (a WrittenShard).

    With rendering on, the WrittenShard keeps its people and :func:`render_shard`
    commits it once the media are written.
    """
    _yield_to_inference()
    record = from_row(row)
    if not isinstance(record, InferredShard):
        return row
    frames = record.frames
    entry = get_entry(config.model.name)
    start = time.perf_counter()
    people = tuple([] if result is None else _people(result, transform, entry, config)
                   for result, transform in zip(record.results, frames.transforms))
    post_seconds = time.perf_counter() - start

    start = time.perf_counter()
    tables = ShardTablesBuilder(provenance, frames.shard_id, entry.skeleton)
    for meta, persons in zip(frames.frames, people):
        common = {"source_kind": frames.source_kind, "member": meta.member, "timestamp": meta.timestamp,
                  "width": meta.width, "height": meta.height}
        if meta.status == "ok":
            tables.add_frame(meta.source, meta.frame_index, persons, **common)
        else:
            tables.add_error(meta.source, meta.error or "unknown error", meta.error_kind or "internal",
                             frame_index=meta.frame_index, **common)
    people_table, frames_table = tables.to_tables()
    source = frames.frames[0].source if frames.frames else ""
    partition = partition_value(config.write.partition_by, source, frames.source_kind, provenance)
    writer = ShardWriter(config.output, config.write, config.s3, provenance)
    files = writer.write_shard(frames.shard_id, people_table, frames_table, partition)
    if config.write.pose_shards and frames.source_kind == "tar" and frames.shard is not None:
        _write_pose_shard(frames, people, entry.skeleton, config)
    records = shard_records(frames, people, [relative_to_output(config.output, uri) for uri in files], provenance)
    renders = _renders(frames, config)
    if not renders:
        commit(frames.shard_id, records, config, provenance)
    stats = ShardStats(
        frames=len(frames.frames),
        failed=sum(f.status != "ok" for f in frames.frames),
        people=sum(len(p) for p in people),
        inferred=record.inferred,
        seconds=record.seconds.plus(post=post_seconds, write=time.perf_counter() - start),
        files=tuple(files),
        inputs=_inputs_counted(frames),
        ended=record.ended.plus(post=time.time()),
    )
    return to_row(WrittenShard(frames, tuple(records), stats, people if renders else None), row["key"])


def shard_records(frames: ShardFrames, people: tuple[list[Person], ...], files: list[str],
                  provenance: Provenance) -> list[dict]:
    """The manifest records of a written shard: one per image, per tar, per video segment or failed input.

    files: [people file, frames file] relative to the output root.
    """
    common = {"shard_id": frames.shard_id, "run_id": provenance.run_id, "generation": provenance.generation,
              "model": provenance.model, "weights_sha256": provenance.weights_sha256,
              "config_fingerprint": provenance.config_fingerprint, "people_file": files[0], "frames_file": files[1],
              "video_frames": None, "frames_per_segment": None, "segment_cut": None}
    failed = sum(meta.status != "ok" for meta in frames.frames)
    retry = sum(meta.error_kind in RETRIED_KINDS for meta in frames.frames)
    found = sum(len(p) for p in people)
    if frames.shard is None:  # planning failed: one error row
        f = frames.failed
        video = {"video_frames": 0} if f.source_kind == "video" else {}
        return [{**common, **video, "source": text_form(f.uri), "version": f.version, "size": f.size,
                 "source_kind": f.source_kind, "start_frame": 0, "end_frame": 0, "frames": len(frames.frames),
                 "frames_failed": failed, "frames_to_retry": retry, "people": found}]
    shard = frames.shard
    sizes = shard.sizes or (0,) * len(shard.uris)
    if shard.kind == "images":
        inputs = {uri: (version, size) for uri, version, size in zip(shard.uris, shard.versions, sizes)}
        return [{**common, "source": text_form(meta.source), "version": inputs[meta.source][0],
                 "size": inputs[meta.source][1],
                 "source_kind": "image", "start_frame": 0, "end_frame": 1, "frames": 1,
                 "frames_failed": int(meta.status != "ok"), "frames_to_retry": int(meta.error_kind in RETRIED_KINDS),
                 "people": len(persons)}
                for meta, persons in zip(frames.frames, people)]
    record = {**common, "source": text_form(shard.uris[0]), "version": shard.versions[0], "size": sizes[0],
              "source_kind": frames.source_kind, "frames": len(frames.frames), "frames_failed": failed,
              "frames_to_retry": retry, "people": found}
    if shard.kind == "video":
        return [{**record, "start_frame": shard.start_frame, "end_frame": shard.end_frame,
                 "video_frames": shard.video_frames, "frames_per_segment": shard.frames_per_segment,
                 "segment_cut": shard.segment_cut}]
    return [{**record, "start_frame": 0, "end_frame": len(frames.frames)}]


def commit(shard_id: str, records, config: JobConfig, provenance: Provenance) -> None:
    """Record the shard in the manifest: from now on it is done and its rows are visible."""
    write_commit(config.output, config.s3, provenance.run_id, shard_id, list(records))


def _inputs_counted(frames: ShardFrames) -> dict[str, int]:
    """Inputs this shard accounts for: each image once, each video and tar in its first shard."""
    if frames.source_kind == "image":
        return {"image_inputs": len(frames.frames)}
    first = frames.shard is None or frames.shard.start_frame in (0, None)
    return {f"{frames.source_kind}_inputs": int(first)}


def _write_pose_shard(frames: ShardFrames, people: tuple, skeleton, config: JobConfig) -> None:
    """The tar's pose shard (outputs.pose_shards), published whole before the shard commits."""
    from ..outputs.pose_shards import pose_shard_bytes, pose_shard_path

    data = pose_shard_bytes(frames.frames, people, skeleton, with_maps=config.write.pose_shard_maps)
    write_bytes(output_uri(config.output, pose_shard_path(frames.frames[0].source)), data, config.s3)


def _renders(frames: ShardFrames, config: JobConfig) -> bool:
    if frames.shard is None:
        return False
    kind = frames.source_kind
    return (kind == "video" and config.write.render_videos) or (kind != "video" and config.write.render_images)


def render_shard(row: dict, config: JobConfig, provenance: Provenance) -> dict:
    """Draw a WrittenShard's people on its frames (decoded again), write the media, commit the shard."""
    from .rendering import render_people

    record = from_row(row)
    if not isinstance(record, WrittenShard) or record.people is None:
        return row
    start = time.perf_counter()
    media = render_people(record.frames, record.people, config)
    commit(record.frames.shard_id, record.records, config, provenance)
    stats = dataclasses.replace(record.stats, media=media,
                                seconds=record.stats.seconds.plus(render=time.perf_counter() - start))
    return to_row(dataclasses.replace(record, stats=stats, people=None), row["key"])
