"""The pipeline's stages as Ray Data row functions.

Rows between stages are ``{"kind": str, "shard_id": str, "payload": bytes}``
where the payload is a pickled dataclass of the stage (pickling keeps numpy
arrays of any shape intact and the Arrow schema trivial). Frames travel as
uint8 network inputs; what the inference actor returns per frame is either
its float fields (``peaks_on: cpu``) or, found on the actor's device, its
peaks and scored limb candidates (``peaks_on: device``, a few kB).

    plan_item        video/tar -> shards; image shards pass; skipped -> count row
    decode_shard     shard -> frames metadata + uint8 network inputs   (CPU)
    InferenceActor   inputs -> fields, or peaks + limb candidates     (GPU or CPU actor)
    postprocess_and_write  -> people -> Parquet files of the shard     (CPU)
    render_shard     re-decode the shard and draw people -> media      (CPU, optional)
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field

from ..estimator import PoseEstimator, PreparedImage, fields_to_people, peaks_to_people, prepare_image
from ..inference import FrameFields, FramePeaks
from ..jobconfig import JobConfig
from ..models.registry import get_entry
from ..models.weights import ResolvedWeights
from ..outputs.frames_table import ShardTablesBuilder
from ..outputs.manifest import relative_to_output, write_commit
from ..outputs.provenance import Provenance
from ..outputs.writer import ShardWriter, partition_value
from ..person import Person
from ..preprocess import ResizeTransform, resolve_input_spec
from ..sources.decoding import decode_shard as decode_frames
from ..sources.planning import Shard, plan_tar, plan_video
from ..storage import redact, stable_id
from .shipped_weights import ShippedWeights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameMeta:
    """Everything about a frame except its pixels."""

    source: str
    member: str | None
    frame_index: int
    timestamp: float | None
    width: int
    height: int
    status: str
    error: str | None


@dataclass(eq=False)
class ShardWork:
    """A shard on its way through the stages.

    shard_id: deterministic id; the shard's output files are named after it.
    source_kind: "image", "video" or "tar".
    shard: the planned shard, None when planning failed (then ``frames`` holds the error
        and ``failed`` says which input).
    frames: one FrameMeta per decoded frame or failed input.
    transforms: per frame, the scale-1 ResizeTransform back to source pixels (None for failed frames).
    prepared: per frame, the network inputs (None for failed frames); dropped after inference.
    results: per frame, what the inference actor found (None for failed frames): the
        fields, or the peaks and limb candidates; dropped after post-processing.
    people: per frame, the people found; kept only when rendering.
    inferred: frames that went through the network.
    records: the shard's manifest records, written by :func:`commit` once its outputs are published.
    """

    shard_id: str
    source_kind: str
    shard: Shard | None
    frames: list[FrameMeta]
    transforms: list[ResizeTransform | None] = field(default_factory=list)
    prepared: list[PreparedImage | None] | None = None
    results: list[FrameFields | FramePeaks | None] | None = None
    people: list[list[Person]] | None = None
    failed: "FailedInput | None" = None
    decode_seconds: float = 0.0
    infer_seconds: float = 0.0
    inferred: int = 0
    records: list[dict] | None = None
    stats: dict = field(default_factory=dict)


def _row(kind: str, shard_id: str, payload: object) -> dict:
    return {"kind": kind, "shard_id": shard_id, "payload": pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)}


@dataclass(frozen=True)
class FailedInput:
    """An input that could not even be planned (unreadable video or tar)."""

    shard_id: str
    source_kind: str
    uri: str
    error: str
    version: str = ""
    size: int = 0


_SOURCE_KIND = {"images": "image", "video": "video", "tar": "tar"}


def plan_item(row: dict, config: JobConfig) -> list[dict]:
    """Turn a listed work item into shards (videos are cut into segments here).

    A video partly done by an earlier run is cut as it was then, and the segments
    it committed are left out.
    """
    kind, payload = row["kind"], pickle.loads(row["payload"])
    if kind == "images":
        return [_row("shard", payload.shard_id, payload)]
    if kind in ("skipped", "done"):
        return [_row(kind, "", payload)]
    obj, todo = payload
    try:
        if kind == "video":
            shards = plan_video(obj, todo.frames_per_segment or config.sources.frames_per_segment, config.s3)
            shards = [shard for shard in shards if shard.start_frame not in todo.done_starts]
        else:
            shards = plan_tar(obj)
    except Exception as exc:  # a broken input is data: record it and go on
        message = redact(f"cannot read {kind}: {exc}")
        log.warning("%s: %s", redact(obj.uri), message)
        failed = FailedInput(f"{kind}-failed-{stable_id(obj.uri)}", kind, obj.uri, message, obj.version, obj.size)
        return [_row("failed", failed.shard_id, failed)]
    return [_row("shard", shard.shard_id, shard) for shard in shards]


def model_input_spec(config: JobConfig):
    """The job's input spec: the model's, with the job's resize mode and size."""
    model = config.model
    return resolve_input_spec(get_entry(model.name).input_spec, model.net_size, model.resize_mode, model.aspect_buckets)


def decode_shard(row: dict, config: JobConfig) -> dict:
    """Decode a shard's frames and resize them for the network (uint8)."""
    if row["kind"] == "failed":
        failed: FailedInput = pickle.loads(row["payload"])
        meta = FrameMeta(failed.uri, None, 0, None, 0, 0, "error", failed.error)
        work = ShardWork(failed.shard_id, failed.source_kind, None, [meta], [None], prepared=[None], failed=failed)
        return _row("shard", failed.shard_id, work)
    if row["kind"] != "shard":
        return row
    shard: Shard = pickle.loads(row["payload"])
    spec = model_input_spec(config)
    start = time.perf_counter()
    frames, transforms, prepared = [], [], []
    for frame in decode_frames(shard, config.sources, config.s3):
        item = None
        status, error = frame.status, frame.error
        if status == "ok":
            try:
                item = prepare_image(frame.image, spec, spec.net_size, config.model.scales)
            except Exception as exc:
                status, error = "error", redact(f"cannot pre-process frame: {exc}")
        frames.append(FrameMeta(frame.source, frame.member, frame.frame_index, frame.timestamp,
                                frame.width, frame.height, status, error))
        prepared.append(item)
        transforms.append(item.base_transform if item is not None else None)
    work = ShardWork(shard.shard_id, _SOURCE_KIND[shard.kind], shard, frames, transforms, prepared=prepared,
                     decode_seconds=time.perf_counter() - start)
    return _row("shard", shard.shard_id, work)


class InferenceActor:
    """Holds the network on its device; turns prepared frames into fields, or peaks and limb candidates.

    weights: ShippedWeights from the driver (the actor never fetches weights itself), or
        ResolvedWeights in memory when the class is used without Ray (benchmarks/gpu_check.py).
    peaks_on_device: find peaks and score limbs here (see InferenceEngine.peaks).
    """

    def __init__(self, config: JobConfig, weights: ShippedWeights | ResolvedWeights, device: str, torch_threads: int,
                 peaks_on_device: bool):
        import os

        import torch

        if device == "cpu":  # the driver's share of the cores, at most this machine's
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            torch.set_num_threads(max(1, min(torch_threads, cores)))
        self.config = config
        self.weights = weights
        self.device = device
        self.peaks_on_device = peaks_on_device
        self._estimator: PoseEstimator | None = None

    @property
    def estimator(self) -> PoseEstimator:
        """The network, loaded on first use: a run with nothing left to do loads no weights."""
        if self._estimator is None:
            model = self.config.model
            self._estimator = PoseEstimator.from_state_dict(
                model.name, self.weights.load(), source=self.weights.source, device=self.device,
                net_size=model.net_size, resize_mode=model.resize_mode, aspect_buckets=model.aspect_buckets,
                scales=model.scales,
                postprocess=self.config.postprocess,
                weights_sha256=self.weights.file_sha256, precision=self.config.inference.precision,
            )
        return self._estimator

    def __call__(self, row: dict) -> dict:
        if row["kind"] != "shard":
            return row
        work: ShardWork = pickle.loads(row["payload"])
        start = time.perf_counter()
        ok = [i for i, item in enumerate(work.prepared) if item is not None]
        work.results = [None] * len(work.frames)
        if ok:
            engine, batch_size = self.estimator.engine, self.config.inference.batch_size
            items = [work.prepared[i] for i in ok]
            found = (engine.peaks(items, self.config.postprocess, batch_size) if self.peaks_on_device
                     else engine.fields(items, batch_size))
            for i, frame_result in zip(ok, found):
                work.results[i] = frame_result
        work.inferred = len(ok)
        work.prepared = None
        work.infer_seconds = time.perf_counter() - start
        return _row("shard", row["shard_id"], work)


def _decode_frame(result: FrameFields | FramePeaks, transform, entry, config: JobConfig) -> list[Person]:
    """People of one frame from its fields, or from its device peaks and limb candidates."""
    if isinstance(result, FramePeaks):
        return peaks_to_people(result, transform, entry, config.postprocess)
    return fields_to_people(result.heatmaps, result.pafs, transform, entry, config.postprocess)


def postprocess_and_write(row: dict, config: JobConfig, provenance: Provenance) -> dict:
    """Decode people from the fields and write the shard's two Parquet files.

    Returns a small summary row; with rendering on, it still carries the
    shard and its people for :func:`render_shard`.
    """
    if row["kind"] != "shard":
        return _summary_row(row["kind"], "", pickle.loads(row["payload"]), None)
    work: ShardWork = pickle.loads(row["payload"])
    entry = get_entry(config.model.name)
    start = time.perf_counter()
    people: list[list[Person]] = []
    for result, transform in zip(work.results, work.transforms):
        people.append([] if result is None else _decode_frame(result, transform, entry, config))
    post_seconds = time.perf_counter() - start

    tables = ShardTablesBuilder(provenance, work.shard_id, entry.skeleton)
    for meta, persons in zip(work.frames, people):
        common = {"source_kind": work.source_kind, "member": meta.member, "timestamp": meta.timestamp,
                  "width": meta.width, "height": meta.height}
        if meta.status == "ok":
            tables.add_frame(meta.source, meta.frame_index, persons, **common)
        else:
            tables.add_error(meta.source, meta.error or "unknown error", frame_index=meta.frame_index, **common)
    people_table, frames_table = tables.to_tables()
    source = work.frames[0].source if work.frames else ""
    partition = partition_value(config.write.partition_by, source, work.source_kind, provenance)
    writer = ShardWriter(config.output, config.write, config.s3, provenance)
    files = writer.write_shard(work.shard_id, people_table, frames_table, partition)

    work.results = None
    work.people = people
    work.records = shard_records(work, [relative_to_output(config.output, uri) for uri in files], provenance)
    work.stats = {
        "frames": len(work.frames),
        "failed": sum(f.status != "ok" for f in work.frames),
        "people": sum(len(p) for p in people),
        "inferred": work.inferred,
        "decode_s": work.decode_seconds,
        "infer_s": work.infer_seconds,
        "post_s": post_seconds,
        "files": files,
        "inputs": _inputs_counted(work),
    }
    if _renders(work, config):
        return _summary_row("shard", work.shard_id, work, work)  # committed by render_shard, after the media
    commit(work, config, provenance)
    return _summary_row("shard", work.shard_id, work, None)


def shard_records(work: ShardWork, files: list[str], provenance: Provenance) -> list[dict]:
    """The manifest records of a written shard: one per image, per tar, per video segment or failed input.

    files: [people file, frames file] relative to the output root.
    """
    common = {"shard_id": work.shard_id, "run_id": provenance.run_id, "generation": provenance.generation,
              "model": provenance.model, "weights_sha256": provenance.weights_sha256,
              "config_fingerprint": provenance.config_fingerprint, "people_file": files[0], "frames_file": files[1],
              "video_frames": None, "frames_per_segment": None}
    failed = sum(meta.status != "ok" for meta in work.frames)
    people = sum(len(p) for p in work.people)
    if work.shard is None:  # planning failed: one error row
        f = work.failed
        video = {"video_frames": 0} if f.source_kind == "video" else {}
        return [{**common, **video, "source": f.uri, "version": f.version, "size": f.size,
                 "source_kind": f.source_kind, "start_frame": 0, "end_frame": 0, "frames": len(work.frames),
                 "frames_failed": failed, "people": people}]
    shard = work.shard
    sizes = shard.sizes or (0,) * len(shard.uris)
    if shard.kind == "images":
        inputs = {uri: (version, size) for uri, version, size in zip(shard.uris, shard.versions, sizes)}
        return [{**common, "source": meta.source, "version": inputs[meta.source][0], "size": inputs[meta.source][1],
                 "source_kind": "image", "start_frame": 0, "end_frame": 1, "frames": 1,
                 "frames_failed": int(meta.status != "ok"), "people": len(persons)}
                for meta, persons in zip(work.frames, work.people)]
    record = {**common, "source": shard.uris[0], "version": shard.versions[0], "size": sizes[0],
              "source_kind": work.source_kind, "frames": len(work.frames), "frames_failed": failed, "people": people}
    if shard.kind == "video":
        return [{**record, "start_frame": shard.start_frame, "end_frame": shard.end_frame,
                 "video_frames": shard.video_frames, "frames_per_segment": shard.frames_per_segment}]
    return [{**record, "start_frame": 0, "end_frame": len(work.frames)}]


def commit(work: ShardWork, config: JobConfig, provenance: Provenance) -> None:
    """Record the shard in the manifest: from now on it is done and its rows are visible."""
    write_commit(config.output, config.s3, provenance.run_id, work.shard_id, work.records)


def _inputs_counted(work: ShardWork) -> dict[str, int]:
    """Inputs this shard accounts for: each image once, each video and tar in its first shard."""
    if work.source_kind == "image":
        return {"image_inputs": len(work.frames)}
    first = work.shard is None or work.shard.start_frame in (0, None)
    return {f"{work.source_kind}_inputs": int(first)}


def _renders(work: ShardWork, config: JobConfig) -> bool:
    if work.shard is None:
        return False
    kind = work.source_kind
    return (kind == "video" and config.write.render_videos) or (kind != "video" and config.write.render_images)


def _summary_row(kind: str, shard_id: str, payload, render_work: ShardWork | None) -> dict:
    if kind == "skipped":
        stats = {"skipped": 1, "skipped_uri": payload.uri}
    elif kind == "done":
        stats = {"already_done": payload}
    else:
        stats = payload.stats
    return {"kind": kind, "shard_id": shard_id,
            "payload": pickle.dumps({"stats": stats, "render": render_work}, protocol=pickle.HIGHEST_PROTOCOL)}


def render_shard(row: dict, config: JobConfig, provenance: Provenance) -> dict:
    """Draw the shard's people on its frames (decoded again), write the media, commit the shard."""
    from .rendering import render_work

    content = pickle.loads(row["payload"])
    work = content.pop("render")
    if work is not None:
        content["stats"]["media"] = render_work(work, config)
        commit(work, config, provenance)
    return {"kind": row["kind"], "shard_id": row["shard_id"], "payload": pickle.dumps(content)}
