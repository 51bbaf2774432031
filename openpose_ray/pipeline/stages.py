"""The pipeline's stages as Ray Data row functions.

Rows between stages are ``{"kind": str, "shard_id": str, "payload": bytes}``
where the payload is a pickled dataclass of the stage (pickling keeps numpy
arrays of any shape intact and the Arrow schema trivial). Frames travel as
uint8 network inputs; the float fields exist only between the inference actor
and the post-processing task of the same shard.

    plan_item        video/tar -> shards; image shards pass; skipped -> count row
    decode_shard     shard -> frames metadata + uint8 network inputs   (CPU)
    InferenceActor   inputs -> fields averaged over scales            (GPU or CPU actor)
    postprocess_and_write  fields -> people -> Parquet files of the shard (CPU)
    render_shard     re-decode the shard and draw people -> media      (CPU, optional)
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field

import numpy as np

from ..estimator import PoseEstimator, PreparedImage, decoded_to_people, fields_to_people, prepare_image
from ..jobconfig import JobConfig
from ..models.registry import get_entry
from ..outputs.frames_table import ShardTablesBuilder
from ..outputs.provenance import Provenance
from ..outputs.writer import ShardWriter, partition_value
from ..person import Person
from ..postprocess import Peaks, decode_peaks, find_peaks_torch, upsample
from ..postprocess.peaks import upsample_torch
from ..preprocess import ResizeTransform
from ..sources.decoding import decode_shard as decode_frames
from ..sources.planning import Shard, plan_tar, plan_video
from ..storage import redact, stable_id

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
    shard: the planned shard, None when planning failed (then ``frames`` holds the error).
    frames: one FrameMeta per decoded frame or failed input.
    transforms: per frame, the scale-1 ResizeTransform back to source pixels (None for failed frames).
    prepared: per frame, the network inputs (None for failed frames); dropped after inference.
    fields: per frame, (heatmaps, pafs) (None for failed frames); heatmaps are None when
        the peaks were found on the inference device; dropped after post-processing.
    peaks: per frame, the Peaks found on the inference device, or None.
    people: per frame, the people found; kept only when rendering.
    """

    shard_id: str
    source_kind: str
    shard: Shard | None
    frames: list[FrameMeta]
    transforms: list[ResizeTransform | None] = field(default_factory=list)
    prepared: list[PreparedImage | None] | None = None
    fields: list[tuple[np.ndarray | None, np.ndarray] | None] | None = None
    peaks: list[Peaks | None] | None = None
    people: list[list[Person]] | None = None
    decode_seconds: float = 0.0
    infer_seconds: float = 0.0
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


_SOURCE_KIND = {"images": "image", "video": "video", "tar": "tar"}


def plan_item(row: dict, config: JobConfig) -> list[dict]:
    """Turn a listed work item into shards (videos are cut into segments here)."""
    kind, payload = row["kind"], pickle.loads(row["payload"])
    if kind == "images":
        return [_row("shard", payload.shard_id, payload)]
    if kind == "skipped":
        return [_row("skipped", "", payload)]
    try:
        shards = plan_video(payload, config.sources.frames_per_segment, config.s3) if kind == "video" else plan_tar(payload)
    except Exception as exc:  # a broken input is data: record it and go on
        message = redact(f"cannot read {kind}: {exc}")
        log.warning("%s: %s", redact(payload.uri), message)
        failed = FailedInput(f"{kind}-failed-{stable_id(payload.uri)}", kind, payload.uri, message)
        return [_row("failed", failed.shard_id, failed)]
    return [_row("shard", shard.shard_id, shard) for shard in shards]


def decode_shard(row: dict, config: JobConfig) -> dict:
    """Decode a shard's frames and resize them for the network (uint8)."""
    if row["kind"] == "failed":
        failed: FailedInput = pickle.loads(row["payload"])
        meta = FrameMeta(failed.uri, None, 0, None, 0, 0, "error", failed.error)
        work = ShardWork(failed.shard_id, failed.source_kind, None, [meta], [None], prepared=[None])
        return _row("shard", failed.shard_id, work)
    if row["kind"] != "shard":
        return row
    shard: Shard = pickle.loads(row["payload"])
    entry = get_entry(config.model.name)
    net_size = config.model.net_size or entry.input_spec.net_size
    start = time.perf_counter()
    frames, transforms, prepared = [], [], []
    for frame in decode_frames(shard, config.sources, config.s3):
        item = None
        status, error = frame.status, frame.error
        if status == "ok":
            try:
                item = prepare_image(frame.image, entry.input_spec, net_size, config.model.scales)
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
    """Holds the network on its device; turns prepared frames into fields (and peaks)."""

    def __init__(self, config: JobConfig, device: str, torch_threads: int, peaks_on_device: bool):
        import torch

        if device == "cpu":
            torch.set_num_threads(torch_threads)
        self.config = config
        self.peaks_on_device = peaks_on_device
        model = config.model
        self.estimator = PoseEstimator.from_pretrained(
            model.name, device=device, net_size=model.net_size, weights=model.weights,
            scales=model.scales, postprocess=config.postprocess, weights_sha256=model.weights_sha256, s3=config.s3,
        )

    def __call__(self, row: dict) -> dict:
        if row["kind"] != "shard":
            return row
        work: ShardWork = pickle.loads(row["payload"])
        start = time.perf_counter()
        ok = [i for i, item in enumerate(work.prepared) if item is not None]
        fields = self.estimator.infer_fields([work.prepared[i] for i in ok], batch_size=self.config.inference.batch_size)
        work.fields = [None] * len(work.frames)
        for i, frame_fields in zip(ok, fields):
            work.fields[i] = frame_fields
        if self.peaks_on_device:
            work.peaks = [None] * len(work.frames)
            for i, frame_peaks in zip(ok, self._device_peaks([f[0] for f in fields])):
                work.peaks[i] = frame_peaks
                work.fields[i] = (None, work.fields[i][1])  # the heatmaps are no longer needed
        work.prepared = None
        work.infer_seconds = time.perf_counter() - start
        return _row("shard", row["shard_id"], work)


    def _device_peaks(self, heatmaps: list[np.ndarray]) -> list[Peaks]:
        """Upsample, smooth and search the heatmaps of a shard on the actor's device, by equal shapes."""
        import torch

        estimator, cfg = self.estimator, self.config.postprocess
        num_parts = estimator.skeleton.num_parts
        result: list[Peaks | None] = [None] * len(heatmaps)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, heat in enumerate(heatmaps):
            by_shape.setdefault(heat.shape, []).append(i)
        for indices in by_shape.values():
            batch = torch.from_numpy(np.stack([heatmaps[i][:num_parts] for i in indices])).to(estimator.device)
            with torch.inference_mode():
                peaks = find_peaks_torch(upsample_torch(batch, cfg.upsample, cfg.upsample_interpolation), cfg, num_parts)
            for i, frame_peaks in zip(indices, peaks):
                result[i] = frame_peaks
        return result


def _decode_frame(frame_fields, frame_peaks, transform, entry, config: JobConfig) -> list[Person]:
    """People of one frame from its fields, or from device peaks plus its PAFs."""
    heatmaps, pafs = frame_fields
    cfg = config.postprocess
    if frame_peaks is None:
        return fields_to_people(heatmaps, pafs, transform, entry, cfg)
    pafs_up = upsample(pafs, cfg.upsample, cfg.upsample_interpolation)
    return decoded_to_people(decode_peaks(frame_peaks, pafs_up, entry.skeleton, cfg), transform, entry, cfg)


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
    frame_peaks = work.peaks or [None] * len(work.frames)
    for frame_fields, peaks, transform in zip(work.fields, frame_peaks, work.transforms):
        people.append([] if frame_fields is None else _decode_frame(frame_fields, peaks, transform, entry, config))
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

    work.fields = work.peaks = None
    work.people = people
    work.stats = {
        "frames": len(work.frames),
        "failed": sum(f.status != "ok" for f in work.frames),
        "people": sum(len(p) for p in people),
        "decode_s": work.decode_seconds,
        "infer_s": work.infer_seconds,
        "post_s": post_seconds,
        "files": files,
        "inputs": _inputs_counted(work),
    }
    return _summary_row("shard", work.shard_id, work, work if _renders(work, config) else None)


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
    else:
        stats = payload.stats
    return {"kind": kind, "shard_id": shard_id,
            "payload": pickle.dumps({"stats": stats, "render": render_work}, protocol=pickle.HIGHEST_PROTOCOL)}


def render_shard(row: dict, config: JobConfig) -> dict:
    """Draw the shard's people on its frames (decoded again) and write the media."""
    from .rendering import render_work

    content = pickle.loads(row["payload"])
    work = content.pop("render")
    if work is not None:
        content["stats"]["media"] = render_work(work, config)
    return {"kind": row["kind"], "shard_id": row["shard_id"], "payload": pickle.dumps(content)}
