"""The people table: one row per detected person, with keypoints queryable by part name.

Schema (COCO-18 skeleton; other skeletons get one struct column per part name):

================  ===========================  ===============================================
column            type                         meaning
================  ===========================  ===============================================
source            string                       file path or URI of the image or video
frame_index       int64                        frame of a video, counted from 0; 0 for images
person_index      int32                        index of the person in the estimator's output
                                               for that frame (0, 1, ...)
track_id          int64, nullable              the same number for the same person through a
                                               video (0, 1, ... per video; openpose_ray.tracking);
                                               NULL for images and tar members, and for the
                                               rows of a video until all its frames are done
                                               (openpose_ray.outputs.tracks)
score             float32                      OpenPose person score
num_parts         int16                        number of parts found (confidence > 0)
bbox              struct<x, y, width,          the tightest box around the found parts, in
                  height: float32>             source pixels (same convention as the parts):
                                               x, y = smallest part x, y; width, height =
                                               largest minus smallest (0 for a single part
                                               column or row). No padding is added: a box of
                                               the whole body grows it, e.g. by 10% per side
nose, neck, ...   struct<x: float32,           one column per part, in skeleton order:
                  y: float32,                  position in source-image pixels (pixel centres
                  confidence: float32>         at integer coordinates, x right, y down,
                                               origin at the centre of the top-left pixel)
                                               and the part confidence
(extra fields)    as given                     appended after the parts (run id, time, ...)
================  ===========================  ===============================================

COCO-18 part columns: nose, neck, r_shoulder, r_elbow, r_wrist, l_shoulder, l_elbow,
l_wrist, r_hip, r_knee, r_ankle, l_hip, l_knee, l_ankle, r_eye, l_eye, r_ear, l_ear
("r_" is the person's right side). BODY_25 part columns (OpenPose's BODY_25 order,
``skeleton.BODY25_OPENPOSE_NAMES`` gives OpenPose's name of each): nose, neck,
r_shoulder, r_elbow, r_wrist, l_shoulder, l_elbow, l_wrist, mid_hip, r_hip, r_knee,
r_ankle, l_hip, l_knee, l_ankle, r_eye, l_eye, r_ear, l_ear, l_big_toe, l_small_toe,
l_heel, r_big_toe, r_small_toe, r_heel: the parts both skeletons have share a name.

A part that was not found has ``x = y = confidence = 0`` (the estimator's
convention), never NULL, so filter on the confidence before using positions::

    SELECT avg(r_wrist.y - neck.y) FROM people
    WHERE r_wrist.confidence > 0 AND neck.confidence > 0

All columns above but track_id are non-nullable. Frames in which nobody was found have no
rows (the frames table has one row per frame, people or not). The schema metadata
key ``openpose_ray.skeleton`` holds the skeleton name (:func:`table_skeleton`), so a
reader holding only a table knows its part columns.

The annotation job appends :data:`PEOPLE_EXTRA_FIELDS`, the same per-frame
columns as the frames table, so either table can be filtered without a join:

==================  ==================  =============================================
run_id              string              identifier of the run
member              string, nullable    member name inside a tar; NULL otherwise
sample_key          string, nullable    the member's WebDataset key (its path up to the first dot of
                                        its name: ``0001.jpg`` -> ``0001``); NULL for other inputs
source_kind         string              "image", "video" or "tar"
timestamp           float64, nullable   seconds, from the container's pts; NULL for stills
shard_id            string              the shard (and output file) the row belongs to
model               string              registry name of the network
config_fingerprint  string              hash of the settings that change results
==================  ==================  =============================================
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from openpose_ray.person import Person, keypoints_bbox
from openpose_ray.skeleton import COCO18, Skeleton, skeleton_by_name

SKELETON_METADATA_KEY = b"openpose_ray.skeleton"

KEYPOINT_TYPE = pa.struct([
    pa.field("x", pa.float32(), nullable=False),
    pa.field("y", pa.float32(), nullable=False),
    pa.field("confidence", pa.float32(), nullable=False),
])

BBOX_TYPE = pa.struct([pa.field(name, pa.float32(), nullable=False) for name in ("x", "y", "width", "height")])

_PERSON_FIELDS = (
    pa.field("source", pa.string(), nullable=False),
    pa.field("frame_index", pa.int64(), nullable=False),
    pa.field("person_index", pa.int32(), nullable=False),
    pa.field("track_id", pa.int64(), nullable=True),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("num_parts", pa.int16(), nullable=False),
    pa.field("bbox", BBOX_TYPE, nullable=False),
)


# Per-frame columns of the annotation job's people table (see the module docstring);
# the frames table has the same names and types.
PEOPLE_EXTRA_FIELDS: tuple[pa.Field, ...] = (
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("member", pa.string(), nullable=True),
    pa.field("sample_key", pa.string(), nullable=True),
    pa.field("source_kind", pa.string(), nullable=False),
    pa.field("timestamp", pa.float64(), nullable=True),
    pa.field("shard_id", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("config_fingerprint", pa.string(), nullable=False),
)


def people_schema(skeleton: Skeleton = COCO18, extra_fields: Sequence[pa.Field] = ()) -> pa.Schema:
    """The schema of the people table (see the module docstring) for ``skeleton``."""
    fields = [
        *_PERSON_FIELDS,
        *(pa.field(name, KEYPOINT_TYPE, nullable=False) for name in skeleton.part_names),
        *extra_fields,
    ]
    names = [field.name for field in fields]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"people table for skeleton {skeleton.name!r}: column names {duplicates} are used twice; "
            "rename the extra field (part names and the person columns are fixed)"
        )
    return pa.schema(fields, metadata={SKELETON_METADATA_KEY: skeleton.name.encode()})


class PeopleTableBuilder:
    """Collects the persons of many frames and builds one people table.

    Columns are built from numpy arrays in :meth:`to_table`, not row by row.
    Values of ``extra_fields`` are given per frame in :meth:`add` and repeated on
    each of the frame's rows; a nullable extra field left out is NULL.
    """

    def __init__(self, skeleton: Skeleton = COCO18, extra_fields: Sequence[pa.Field] = ()):
        self.skeleton = skeleton
        self.schema = people_schema(skeleton, extra_fields)
        self._extra_fields = tuple(extra_fields)
        # One entry per frame with at least one person.
        self._sources: list[str] = []
        self._frame_indices: list[int] = []
        self._keypoints: list[np.ndarray] = []  # float32[P, K, 3] each
        self._scores: list[np.ndarray] = []  # float32[P] each
        self._extra_values: dict[str, list[object]] = {field.name: [] for field in self._extra_fields}

    def __len__(self) -> int:
        """Number of rows (persons) added so far."""
        return sum(len(scores) for scores in self._scores)

    def add(
        self,
        source: str,
        frame_index: int,
        persons: Sequence[Person],
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Add the persons found in one frame, in the estimator's output order."""
        if not isinstance(source, str):
            raise TypeError(f"source must be a str (path or URI), got {type(source).__name__}")
        if frame_index < 0:
            raise ValueError(f"{source}: frame_index must be >= 0, got {frame_index}")
        extra = dict(extra or {})
        self._check_extra(source, extra)
        if not persons:
            return
        expected_shape = (self.skeleton.num_parts, 3)
        for index, person in enumerate(persons):
            if np.shape(person.keypoints) != expected_shape:
                raise ValueError(
                    f"{source} frame {frame_index} person {index}: keypoints have shape "
                    f"{np.shape(person.keypoints)}, expected {expected_shape} for skeleton {self.skeleton.name!r}"
                )
        self._sources.append(source)
        self._frame_indices.append(int(frame_index))
        self._keypoints.append(np.stack([np.asarray(p.keypoints, dtype=np.float32) for p in persons]))
        self._scores.append(np.array([p.score for p in persons], dtype=np.float32))
        for name, values in self._extra_values.items():
            values.append(extra.get(name))

    def to_table(self) -> pa.Table:
        """The people table of everything added so far (an empty table with the full schema if nothing)."""
        if not self._scores:
            return self.schema.empty_table()
        counts = np.array([len(scores) for scores in self._scores], dtype=np.int64)
        frame_of_row = pa.array(np.repeat(np.arange(len(counts)), counts))
        first_row_of_frame = np.cumsum(counts) - counts
        keypoints = np.concatenate(self._keypoints)

        columns: list[pa.Array] = [
            pa.array(self._sources, pa.string()).take(frame_of_row),
            pa.array(np.repeat(np.array(self._frame_indices, dtype=np.int64), counts)),
            pa.array((np.arange(len(keypoints)) - np.repeat(first_row_of_frame, counts)).astype(np.int32)),
            pa.nulls(len(keypoints), pa.int64()),  # set once the video is complete (outputs.tracks)
            pa.array(np.concatenate(self._scores)),
            pa.array(np.count_nonzero(keypoints[:, :, 2] > 0, axis=1).astype(np.int16)),
            bbox_struct(keypoints_bbox(keypoints)),
        ]
        columns += [_keypoint_struct(keypoints[:, part]) for part in range(self.skeleton.num_parts)]
        columns += [
            pa.array(self._extra_values[field.name], type=field.type).take(frame_of_row)
            for field in self._extra_fields
        ]
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _check_extra(self, source: str, extra: Mapping[str, object]) -> None:
        for name in extra:
            if name not in self._extra_values:
                close = difflib.get_close_matches(name, list(self._extra_values), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise KeyError(f"{source}: {name!r} is not an extra field of this people table{hint}")
        for field in self._extra_fields:
            if not field.nullable and extra.get(field.name) is None:
                raise ValueError(f"{source}: extra field {field.name!r} is not nullable and needs a value")


def bbox_struct(boxes: np.ndarray) -> pa.StructArray:
    return pa.StructArray.from_arrays([pa.array(np.ascontiguousarray(boxes[:, c])) for c in range(4)],
                                      fields=list(BBOX_TYPE))


def _keypoint_struct(part_keypoints: np.ndarray) -> pa.StructArray:
    """float32[R, 3] (x, y, confidence) of one part -> struct<x, y, confidence>[R]."""
    return pa.StructArray.from_arrays(
        [pa.array(np.ascontiguousarray(part_keypoints[:, c])) for c in range(3)],
        fields=list(KEYPOINT_TYPE),
    )


def table_skeleton(table: pa.Table | pa.Schema) -> Skeleton:
    """The skeleton a people table was written with, from its schema metadata (:data:`SKELETON_METADATA_KEY`)."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    name = (schema.metadata or {}).get(SKELETON_METADATA_KEY)
    if name is None:
        raise KeyError(f"the table's schema metadata names no skeleton (no {SKELETON_METADATA_KEY.decode()!r} key): "
                       "not a people table as openpose_ray writes it; pass its skeleton explicitly")
    return skeleton_by_name(name.decode())


def read_keypoints(table: pa.Table, skeleton: Skeleton | None = None) -> np.ndarray:
    """float32[R, K, 3] as x, y, confidence: the keypoints of a people table, in skeleton part order.

    skeleton: the part columns to read; None: the table's own (:func:`table_skeleton`).
    The inverse of what :class:`PeopleTableBuilder` writes: the result equals the
    estimator's keypoints exactly. NULL values (only possible in tables written
    by other tools) come back as NaN.
    """
    if skeleton is None:
        skeleton = table_skeleton(table)
    missing = [name for name in skeleton.part_names if name not in table.column_names]
    if missing:
        raise KeyError(
            f"table has no part columns {missing} of skeleton {skeleton.name!r}; "
            f"is it a people table of another skeleton? Its columns: {', '.join(table.column_names)}"
        )
    keypoints = np.empty((table.num_rows, skeleton.num_parts, 3), dtype=np.float32)
    for part, name in enumerate(skeleton.part_names):
        column = table.column(name)
        for c, field in enumerate(("x", "y", "confidence")):
            values = pc.struct_field(column, field).cast(pa.float32())
            keypoints[:, part, c] = values.to_numpy()
    return keypoints
