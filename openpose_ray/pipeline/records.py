"""The typed records that flow between the pipeline's stages, one type per stage.

Every Ray Data row is ``{"key": str, "record": bytes}``: the record pickled
(protocol 5, numpy arrays stored whole), ``key`` its shard id or URI for logs.
A stage tells what it got by the record's type, never by a string tag, and
returns a new record: nothing is mutated or changes meaning on the way.

    listing     Shard (images) | ToPlan (video, tar) | Skipped | AlreadyDone
    plan        Shard | FailedInput | Skipped | AlreadyDone
    prepare     PreparedShard    (decoded frames resized to uint8 network inputs)
    infer       InferredShard    (per frame: fields, or device peaks + limb candidates)
    write       WrittenShard     (people -> Parquet; people kept only for rendering)
    render      WrittenShard     (media written, people dropped)

Skipped, AlreadyDone and FailedInput pass through the stages they do not
concern, so the driver counts them at the end of the pipeline.

Cost of the pickled rows, measured (2-core Xeon, 2026-11-30, with the test
suite running beside it): a 64-frame 720p segment's network inputs (64 x
368x656x3 uint8, 46 MB) through pickle, an Arrow table and back take ~110 ms,
1.7 ms a frame, against 100-200 ms of network per frame on this CPU; where the
network is nearly free (a GPU node) it is part of the CPU-side ceiling that
benchmarks/bench_ceiling.py measures.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field

import pyarrow as pa

from ..frame_outputs import FrameFields, FramePeaks
from ..outputs.manifest import Todo
from ..person import Person
from ..preprocess import PreparedImage, ResizeTransform
from ..sources.listing import SourceObject
from ..sources.planning import Shard

ROW_SCHEMA = pa.schema([("key", pa.string()), ("record", pa.binary())])


def to_row(record, key: str = "") -> dict:
    """A Ray Data row holding ``record``."""
    return {"key": key, "record": pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)}


def from_row(row: dict):
    """The record a row holds."""
    return pickle.loads(row["record"])


@dataclass(frozen=True)
class ToPlan:
    """A listed video or tar, still to be cut into shards; ``todo``: what earlier runs left to do."""

    obj: SourceObject
    todo: Todo


@dataclass(frozen=True)
class Skipped:
    """A listed object that is not annotated (unsupported type, or skipped while listing), and why."""

    uri: str
    reason: str


@dataclass(frozen=True)
class AlreadyDone:
    """``count`` listed inputs that the manifest says this generation has done."""

    count: int


@dataclass(frozen=True)
class FailedInput:
    """An input that could not even be planned (unreadable video or tar); it becomes one error row."""

    shard_id: str
    source_kind: str
    uri: str
    error: str
    version: str = ""
    size: int = 0
    error_kind: str = "internal"  # an ERROR_KINDS value


@dataclass(frozen=True)
class FrameMeta:
    """Everything about a frame except its pixels. width, height: source pixels (0 when unknown).

    status: "ok" or "error" (then ``error`` says why, ``error_kind`` which kind of failure it
    is, and the frame has no network input).
    """

    source: str
    member: str | None
    frame_index: int
    timestamp: float | None
    width: int
    height: int
    status: str
    error: str | None
    error_kind: str | None = None


@dataclass(frozen=True)
class ShardFrames:
    """What every stage after decoding knows of a shard, unchanged from stage to stage.

    shard_id: deterministic id; the shard's output files are named after it.
    source_kind: "image", "video" or "tar".
    shard: the planned shard; None when planning failed (then ``failed`` says which input).
    frames: one FrameMeta per decoded frame or failed input.
    transforms: per frame, the scale-1 ResizeTransform from network input to source pixels
        (None for failed frames).
    """

    shard_id: str
    source_kind: str
    shard: Shard | None
    frames: tuple[FrameMeta, ...]
    transforms: tuple[ResizeTransform | None, ...]
    failed: FailedInput | None = None


@dataclass(frozen=True)
class StageSeconds:
    """Seconds a shard spent in each stage (CPU stages: wall time of the task's own work).

    decode: reading and decoding pixels; resize: network inputs from the decoded frames;
    infer: the actor's work (network, and on ``peaks_on: device`` the peaks); post: people
    from what the actor returned; write: the shard's Parquet files and its manifest commit;
    render: drawing and encoding media.
    """

    decode: float = 0.0
    resize: float = 0.0
    infer: float = 0.0
    post: float = 0.0
    write: float = 0.0
    render: float = 0.0

    def plus(self, **seconds: float) -> "StageSeconds":
        return dataclasses.replace(self, **seconds)


@dataclass(frozen=True)
class StageEnds:
    """When a shard's work in each stage ended: wall-clock epoch seconds (``time.time()`` of the worker
    that did it), None for a stage it has not been through. With :class:`StageSeconds` this places each
    shard's work in time, for the run report's frames/s per stage (outputs.report).

    decode: decoding and resizing done (prepare_shard); infer: the actor's work done; post: people
    found and the shard's files written (postprocess_and_write). Workers on other nodes have their own
    clocks: NTP keeps them within milliseconds, far below the report's bins of seconds.
    """

    decode: float | None = None
    infer: float | None = None
    post: float | None = None

    def plus(self, **ends: float) -> "StageEnds":
        return dataclasses.replace(self, **ends)


@dataclass(frozen=True)
class PreparedShard:
    """A shard's frames decoded and resized. inputs: per frame the network inputs, None for failed frames."""

    frames: ShardFrames
    inputs: tuple[PreparedImage | None, ...]
    seconds: StageSeconds
    ended: StageEnds = StageEnds()


@dataclass(frozen=True)
class InferredShard:
    """What the network found in a shard's frames (None for failed frames).

    results: per frame its fields (``peaks_on: cpu``) or its peaks and scored limb
        candidates (``peaks_on: device``). inferred: frames that went through the network.
    """

    frames: ShardFrames
    results: tuple[FrameFields | FramePeaks | None, ...]
    inferred: int
    seconds: StageSeconds
    ended: StageEnds = StageEnds()


@dataclass(frozen=True)
class ShardStats:
    """Counts of a written shard, for the driver's summary.

    inputs: inputs the shard accounts for, e.g. {"image_inputs": 64} (each video and tar
    is counted by its first shard). files: URIs of the Parquet files written. media: what
    rendering wrote (empty when it is off). ended: when the shard left each stage.
    """

    frames: int
    failed: int
    people: int
    inferred: int
    seconds: StageSeconds
    files: tuple[str, ...]
    inputs: dict[str, int]
    media: dict = field(default_factory=dict)
    ended: StageEnds = StageEnds()


@dataclass(frozen=True)
class WrittenShard:
    """A shard whose tables are written.

    people: per frame the people found, kept only while the shard still has to be
        rendered (None otherwise). records: its manifest records, committed once every
        output of the shard (tables, media) is published.
    """

    frames: ShardFrames
    records: tuple[dict, ...]
    stats: ShardStats
    people: tuple[list[Person], ...] | None = None
