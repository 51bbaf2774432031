"""The frames table: one row per decoded frame or image, with or without people, and per failed input.

It is the complete record of what a run looked at: every frame has a row, so
"how many frames had nobody in them" and "which inputs failed" are plain
queries, and it is the table to join the people table against
(on run_id, source, member, frame_index).

==================  ==================  =================================================
column              type                meaning
==================  ==================  =================================================
run_id              string              identifier of the run
source              string              file path or s3:// URI of the input
member              string, nullable    member name inside a tar; NULL otherwise
sample_key          string, nullable    the member's WebDataset key (sources.webdataset); NULL
                                        for loose images and videos
source_kind         string              "image", "video" or "tar"
frame_index         int64               frame of a video, counted from 0; 0 for images
timestamp           float64, nullable   seconds, from the container's pts; NULL for stills
width, height       int32               decoded size in pixels; 0 when the input failed
                                        before its size was known
num_people          int32               persons found (rows of the people table); 0 on error
status              string              "ok" or "error"
error               string, nullable    what went wrong (credentials redacted); NULL if ok
error_kind          string, nullable    the kind of failure, NULL if ok: corrupt, unsupported,
                                        too_large, access_denied, missing, changed,
                                        storage_unavailable or internal (see
                                        openpose_ray.sources.errors.ERROR_KINDS); the
                                        last four are tried again by the next run
shard_id            string              the shard (and output file) the row belongs to
model               string              registry name of the network
config_fingerprint  string              hash of the settings that change results
==================  ==================  =================================================

A failed input gets one row with status "error" (frame_index 0, or the frame
at which a video failed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from openpose_ray.person import Person
from openpose_ray.skeleton import COCO18, Skeleton
from openpose_ray.sources.errors import ERROR_KINDS
from openpose_ray.sources.webdataset import sample_key
from openpose_ray.storage import redact, text_form

from .people_table import PEOPLE_EXTRA_FIELDS, PeopleTableBuilder
from .provenance import Provenance

SOURCE_KINDS = ("image", "video", "tar")
STATUSES = ("ok", "error")

# The per-frame columns both tables carry are defined once, in PEOPLE_EXTRA_FIELDS.
_SHARED = {field.name: field for field in PEOPLE_EXTRA_FIELDS}
FRAMES_SCHEMA = pa.schema([
    _SHARED["run_id"],
    pa.field("source", pa.string(), nullable=False),
    _SHARED["member"],
    _SHARED["sample_key"],
    _SHARED["source_kind"],
    pa.field("frame_index", pa.int64(), nullable=False),
    _SHARED["timestamp"],
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("num_people", pa.int32(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=True),
    pa.field("error_kind", pa.string(), nullable=True),
    _SHARED["shard_id"],
    _SHARED["model"],
    _SHARED["config_fingerprint"],
])

# Same value for every row a builder makes; stored per row so files stay self-describing.
_CONSTANT_COLUMNS = ("run_id", "shard_id", "model", "config_fingerprint")


class FramesTableBuilder:
    """Collects the frames of one shard and builds its frames table (columns built in :meth:`to_table`)."""

    def __init__(self, *, run_id: str, shard_id: str, model: str, config_fingerprint: str):
        self._constants = {"run_id": run_id, "shard_id": shard_id, "model": model,
                           "config_fingerprint": config_fingerprint}
        for name, value in self._constants.items():
            if not isinstance(value, str) or not value:
                raise ValueError(f"frames table: {name} must be a non-empty str, got {value!r}")
        self._columns: dict[str, list] = {
            name: [] for name in FRAMES_SCHEMA.names if name not in _CONSTANT_COLUMNS
        }

    def __len__(self) -> int:
        return len(self._columns["source"])

    def add(
        self,
        source: str,
        frame_index: int,
        *,
        source_kind: str,
        width: int,
        height: int,
        num_people: int,
        member: str | None = None,
        timestamp: float | None = None,
        status: str = "ok",
        error: str | None = None,
        error_kind: str | None = None,
    ) -> None:
        """Add one frame (or one failed input: ``status="error"`` with an ``error`` message and its kind)."""
        where = f"{source}{f' [{member}]' if member else ''} frame {frame_index}"
        if source_kind not in SOURCE_KINDS:
            raise ValueError(f"{where}: source_kind must be one of {SOURCE_KINDS}, got {source_kind!r}")
        if status not in STATUSES:
            raise ValueError(f"{where}: status must be one of {STATUSES}, got {status!r}")
        if (status == "error") != (error is not None):
            raise ValueError(f"{where}: give an error message exactly when status is 'error' (status={status!r})")
        if (status == "error") != (error_kind in ERROR_KINDS) or (status == "ok" and error_kind is not None):
            raise ValueError(f"{where}: an error row needs an error_kind of {ERROR_KINDS}, an ok row none "
                             f"(status={status!r}, error_kind={error_kind!r})")
        if status == "error" and num_people:
            raise ValueError(f"{where}: a failed frame has no people, got num_people={num_people}")
        if frame_index < 0 or width < 0 or height < 0 or num_people < 0:
            raise ValueError(
                f"{where}: frame_index, width, height and num_people must be >= 0, "
                f"got {frame_index}, {width}, {height}, {num_people}"
            )
        row = {
            "source": source, "member": member, "sample_key": sample_key(member), "source_kind": source_kind,
            "frame_index": frame_index,
            "timestamp": timestamp, "width": width, "height": height, "num_people": num_people,
            "status": status, "error": text_form(redact(error)) if error is not None else None, "error_kind": error_kind,
        }
        for name, values in self._columns.items():
            values.append(row[name])

    def to_table(self) -> pa.Table:
        """The frames table of everything added so far (empty, with the full schema, if nothing)."""
        num_rows = len(self)
        arrays = []
        for field in FRAMES_SCHEMA:
            if field.name in _CONSTANT_COLUMNS:
                # One dictionary-like value repeated: build it once and take() it num_rows times.
                arrays.append(pa.array([self._constants[field.name]], field.type).take(np.zeros(num_rows, np.int64)))
            elif pa.types.is_integer(field.type):
                arrays.append(pa.array(np.asarray(self._columns[field.name], dtype=field.type.to_pandas_dtype())))
            else:
                arrays.append(pa.array(self._columns[field.name], field.type))
        return pa.Table.from_arrays(arrays, schema=FRAMES_SCHEMA)


class ShardTablesBuilder:
    """Both tables of one shard, filled by one call per frame so they cannot disagree.

    Every frame adds a frames-table row; its persons add people-table rows that
    carry the same per-frame columns (:data:`PEOPLE_EXTRA_FIELDS`).
    """

    def __init__(self, provenance: Provenance, shard_id: str, skeleton: Skeleton = COCO18):
        self.provenance = provenance
        self.shard_id = shard_id
        self.frames = FramesTableBuilder(
            run_id=provenance.run_id, shard_id=shard_id, model=provenance.model,
            config_fingerprint=provenance.config_fingerprint,
        )
        self.people = PeopleTableBuilder(skeleton, extra_fields=PEOPLE_EXTRA_FIELDS)

    def add_frame(
        self,
        source: str,
        frame_index: int,
        persons: Sequence[Person],
        *,
        source_kind: str,
        width: int,
        height: int,
        member: str | None = None,
        timestamp: float | None = None,
    ) -> None:
        """One decoded frame and the persons found in it (possibly none).

        source, member: as read (a name that is not UTF-8 carries surrogates); the
        tables get their :func:`~openpose_ray.storage.text_form`.
        """
        source, member = text_form(source), None if member is None else text_form(member)
        self.frames.add(source, frame_index, source_kind=source_kind, width=width, height=height,
                        num_people=len(persons), member=member, timestamp=timestamp)
        self.people.add(source, frame_index, persons, extra={
            "run_id": self.provenance.run_id, "member": member, "sample_key": sample_key(member),
            "source_kind": source_kind,
            "timestamp": timestamp, "shard_id": self.shard_id, "model": self.provenance.model,
            "config_fingerprint": self.provenance.config_fingerprint,
        })

    def add_error(
        self,
        source: str,
        error: str,
        error_kind: str,
        *,
        source_kind: str,
        frame_index: int = 0,
        member: str | None = None,
        timestamp: float | None = None,
        width: int = 0,
        height: int = 0,
    ) -> None:
        """An input (or one frame of it) that failed: a frames row with status "error", no people."""
        source, member = text_form(source), None if member is None else text_form(member)
        self.frames.add(source, frame_index, source_kind=source_kind, width=width, height=height,
                        num_people=0, member=member, timestamp=timestamp, status="error", error=error,
                        error_kind=error_kind)

    def to_tables(self) -> tuple[pa.Table, pa.Table]:
        """(people, frames) of this shard."""
        return self.people.to_table(), self.frames.to_table()
