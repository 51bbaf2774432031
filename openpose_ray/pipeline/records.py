"""The typed records that flow between the pipeline's stages, one type per stage.

Every Ray Data row is ``{"key": str, "record": bytes}``: the record packed
(:func:`pack`: pickled, its numpy arrays' bytes stored beside the pickle rather
than inside it), ``key`` its shard id or URI for logs. A stage tells what it got
by the record's type, never by a string tag, and returns a new record: nothing
is mutated or changes meaning on the way.

    listing     Shard (images) | ToPlan (video, tar) | Skipped | AlreadyDone
    plan        Shard | FailedInput | Skipped | AlreadyDone
    prepare     PreparedShard    (decoded frames resized to uint8 network inputs, or a video's YUV planes)
    infer       InferredShard    (per frame: fields, or device peaks + limb candidates)
    write       WrittenShard     (people -> Parquet; people kept only for rendering)
    render      WrittenShard     (media written, people dropped)

Skipped, AlreadyDone and FailedInput pass through the stages they do not
concern, so the driver counts them at the end of the pipeline.

Frames without extra copies: the stages run as Ray Data batch functions on
Arrow tables (:func:`per_row`, :func:`per_row_class`), whose record column is built over the packed
bytes without copying them, and a record read from a table unpacks with its
arrays as read-only views of the table's buffer (for the inference actor, Ray's
shared memory). A 128-frame segment's network inputs (92.7 MB) cost ~65 ms to
pack into a table and ~3 ms to read back, against ~210 ms and ~185 ms as a
pickled Ray Data row (the row was pickled, serialized once more by Ray Data to
estimate its size, copied into an Arrow column and out again, and unpickled):
~0.5 ms a frame instead of ~3 (docs/benchmarks-history.md "Frames without extra copies").
"""

from __future__ import annotations

import dataclasses
import pickle
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..frame_outputs import FrameFields, FramePeaks
from ..outputs.manifest import Todo
from ..person import Person
from ..preprocess import PlanarImage, PreparedImage, ResizeTransform
from ..sources.listing import SourceObject
from ..sources.planning import Shard

ROW_SCHEMA = pa.schema([("key", pa.string()), ("record", pa.binary())])
_ALIGN = 64  # each array's bytes start at a multiple of this from the record's start
_MAX_RECORD_BYTES = 2**31 - 1  # ROW_SCHEMA's binary column has int32 offsets


def pack(record) -> bytes:
    """``record`` as bytes: [count n, pickle's length, each array's length: n + 2 little-endian u64]
    [the pickle (protocol 5, arrays out of band)] [each array's bytes, at a multiple of _ALIGN from the start]."""
    arrays: list[pickle.PickleBuffer] = []
    meta = pickle.dumps(record, protocol=5, buffer_callback=arrays.append)
    raws = [array.raw() for array in arrays]  # numpy hands out only contiguous arrays' buffers
    parts, sizes = [meta], [len(meta)]
    at = 8 * (len(raws) + 2) + len(meta)
    for raw in raws:
        parts.append(bytes(-at % _ALIGN))
        parts.append(raw)
        sizes.append(raw.nbytes)
        at += -at % _ALIGN + raw.nbytes
    return b"".join([struct.pack(f"<{len(raws) + 2}Q", len(raws), *sizes), *parts])


def unpack(data):
    """The record that :func:`pack` turned into ``data`` (bytes-like); its numpy arrays are read-only views of ``data``."""
    view = memoryview(data).cast("B")
    (count,) = struct.unpack_from("<Q", view, 0)
    sizes = struct.unpack_from(f"<{count + 1}Q", view, 8)
    at = 8 * (count + 2)
    meta = view[at:at + sizes[0]]
    at += sizes[0]
    arrays = []
    for size in sizes[1:]:
        at += -at % _ALIGN
        arrays.append(view[at:at + size].toreadonly())
        at += size
    return pickle.loads(meta, buffers=arrays)


def to_row(record, key: str = "") -> dict:
    """A Ray Data row holding ``record``."""
    return {"key": key, "record": pack(record)}


def from_row(row: dict):
    """The record a row holds."""
    return unpack(row["record"])


def to_table(rows: list[dict]) -> pa.Table:
    """Rows as an Arrow table of ROW_SCHEMA whose record column points at the rows' bytes (one chunk each, no copy)."""
    if not rows:
        return ROW_SCHEMA.empty_table()
    return pa.Table.from_arrays([pa.array([row["key"] for row in rows], pa.string()),
                                 pa.chunked_array([_record_chunk(row) for row in rows])], schema=ROW_SCHEMA)


def _record_chunk(row: dict) -> pa.Array:
    """A one-value binary array over ``row["record"]`` (not copied)."""
    size = len(row["record"])
    if size > _MAX_RECORD_BYTES:
        raise ValueError(f"shard {row['key']}: its record is {size:,} bytes, more than an Arrow binary value holds "
                         "(2 GiB): lower sources.frames_per_segment or sources.images_per_shard")
    return pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(np.array([0, size], np.int32)),
                                                  pa.py_buffer(row["record"])])


def rows_of(table: pa.Table) -> Iterator[dict]:
    """The rows of a ROW_SCHEMA table, each record a memoryview of the table's buffer (no copy)."""
    keys = table.column("key").to_pylist()
    index = 0
    for chunk in table.column("record").chunks:
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        data = chunk.buffers()[2]
        view = memoryview(data) if data is not None else memoryview(b"")
        for start, end in zip(offsets[:-1], offsets[1:]):
            yield {"key": keys[index], "record": view[start:end]}
            index += 1


def _each_row(batch: pa.Table, stage: Callable, **kwargs) -> Iterator[pa.Table]:
    """``stage(row, **kwargs)`` (a row or a list of rows) on each row of ``batch``: one table per row in."""
    for row in rows_of(batch):
        out = stage(row, **kwargs)
        yield to_table(out if isinstance(out, list) else [out])


def per_row(function: Callable) -> Callable:
    """A Ray Data batch function (pyarrow batches) running ``function(row, **kwargs)`` on each row; it returns
    a row or a list of rows. One table is yielded per row in, so a stage's outputs stream as with ``map``."""
    def batches(batch: pa.Table, **kwargs) -> Iterator[pa.Table]:
        return _each_row(batch, function, **kwargs)
    batches.__name__ = function.__name__  # Ray Data names the operator after it
    return batches


class _PerRow:
    stage_class: type

    def __init__(self, **kwargs):
        self.stage = self.stage_class(**kwargs)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        return _each_row(batch, self.stage)


def per_row_class(stage_class: type) -> type:
    """A Ray Data callable class (pyarrow batches) that holds ``stage_class(**constructor kwargs)`` and runs it
    on each row, as :func:`per_row`; named after ``stage_class``, as Ray Data names the operator."""
    return type(stage_class.__name__, (_PerRow,), {"stage_class": stage_class, "__doc__": stage_class.__doc__})


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
    yuv_frames: frames that left decoding as YUV 4:2:0 planes (``sources.decoder: yuv`` or ``gpu``),
        made into network inputs by the inference actor; the other ok frames were converted on the CPU.
    nvdec_frames: of those, the frames the GPU's decoder decoded (``sources.decoder: gpu``).
    not_nvdec: under ``sources.decoder: gpu``, why NVDEC did not decode (some of) the shard's frames.
    """

    shard_id: str
    source_kind: str
    shard: Shard | None
    frames: tuple[FrameMeta, ...]
    transforms: tuple[ResizeTransform | None, ...]
    failed: FailedInput | None = None
    yuv_frames: int = 0
    nvdec_frames: int = 0
    not_nvdec: str | None = None


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
    """A shard's frames decoded and resized. inputs: per frame the network inputs (or, ``sources.decoder: yuv``,
    the planes the actor makes them from), None for failed frames."""

    frames: ShardFrames
    inputs: tuple[PreparedImage | PlanarImage | None, ...]
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
