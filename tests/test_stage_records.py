"""The typed records between the pipeline's stages: they survive a Ray row round trip whole, and stay immutable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from openpose_ray.frame_outputs import FrameFields
from openpose_ray.models.registry import get_entry
from openpose_ray.outputs.manifest import NEW
from openpose_ray.person import Person
from openpose_ray.pipeline.records import (ROW_SCHEMA, AlreadyDone, FrameMeta, InferredShard, PreparedShard,
                                           ShardFrames, ShardStats, Skipped, StageEnds, StageSeconds, ToPlan,
                                           WrittenShard, from_row, rows_of, to_row, to_table)
from openpose_ray.preprocess import prepare_image, resolve_input_spec
from openpose_ray.sources.listing import SourceObject


def frames_of(images: list[np.ndarray]) -> tuple[ShardFrames, tuple]:
    spec = resolve_input_spec(get_entry("mobilenet_thin").input_spec, None, None, False)
    prepared = tuple(prepare_image(image, spec, spec.net_size, (1.0, 0.5)) for image in images)
    metas = tuple(FrameMeta("/data/v.mp4", None, i, i / 30, image.shape[1], image.shape[0], "ok", None)
                  for i, image in enumerate(images))
    broken = FrameMeta("/data/v.mp4", None, len(images), None, 0, 0, "error", "cannot decode video: x")
    shard = ShardFrames("video-0123", "video", None, metas + (broken,),
                        tuple(p.base_transform for p in prepared) + (None,))
    return shard, prepared + (None,)


def round_trip(record):
    """Through a Ray Data row as the pipeline stores it: an Arrow table of the row schema."""
    table = pa.Table.from_pylist([to_row(record, "key")], schema=ROW_SCHEMA)
    (row,) = table.to_pylist()
    return from_row(row)


def test_a_prepared_shard_comes_back_with_its_network_inputs_unchanged():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (180, 320, 3), dtype=np.uint8), rng.integers(0, 256, (240, 240, 3), dtype=np.uint8)]
    frames, inputs = frames_of(images)
    record = PreparedShard(frames, inputs, StageSeconds(decode=0.5, resize=0.25), StageEnds(decode=1.8e9 + 0.25))
    back = round_trip(record)
    assert type(back) is PreparedShard
    assert back.frames == frames and back.seconds == record.seconds and back.ended == StageEnds(decode=1.8e9 + 0.25)
    assert back.inputs[-1] is None
    for got, want in zip(back.inputs[:-1], inputs[:-1]):
        assert len(got.inputs) == 2  # both scales
        for a, b in zip(got.inputs, want.inputs):
            assert a.dtype == np.uint8 and a.shape == b.shape and np.array_equal(a, b)
        assert got.transforms == want.transforms and got.base_transform == want.base_transform


def test_an_inferred_and_a_written_shard_come_back_whole():
    frames, _ = frames_of([np.zeros((90, 160, 3), np.uint8)])
    rng = np.random.default_rng(1)
    fields = FrameFields(rng.random((19, 46, 82), dtype=np.float32), rng.random((38, 46, 82), dtype=np.float32))
    ended = StageEnds(decode=1.8e9, infer=1.8e9 + 2.0)
    inferred = round_trip(InferredShard(frames, (fields, None), 1, StageSeconds(infer=2.0), ended))
    assert inferred.inferred == 1 and inferred.results[1] is None and inferred.ended == ended
    assert np.array_equal(inferred.results[0].heatmaps, fields.heatmaps)
    assert np.array_equal(inferred.results[0].pafs, fields.pafs)
    assert inferred.results[0].pafs.dtype == np.float32

    person = Person(rng.random((18, 3)).astype(np.float32), 0.75)
    stats = ShardStats(frames=2, failed=1, people=1, inferred=1, seconds=StageSeconds(post=0.1, write=0.2),
                       files=("a.parquet", "b.parquet"), inputs={"video_inputs": 1},
                       ended=ended.plus(post=1.8e9 + 2.5))
    written = round_trip(WrittenShard(frames, ({"source": "/data/v.mp4"},), stats, ([person], [])))
    assert written.stats == stats and written.people == ([person], []) and written.records == ({"source": "/data/v.mp4"},)


def test_a_batch_table_hands_the_frames_over_without_copying_them():
    """How the stages pass records (records.per_row): a table over the packed bytes, read back in place."""
    rng = np.random.default_rng(2)
    frames, inputs = frames_of([rng.integers(0, 256, (180, 320, 3), dtype=np.uint8)])
    rows = [to_row(PreparedShard(frames, inputs, StageSeconds()), "video-0123"), to_row(AlreadyDone(3), "")]
    table = to_table(rows)
    assert table.schema == ROW_SCHEMA and table.num_rows == 2
    data = table.column("record").chunk(0).buffers()[2]
    assert data.address == np.frombuffer(rows[0]["record"], np.uint8).ctypes.data  # the table is over the bytes
    (first, second) = [from_row(row) for row in rows_of(table)]
    assert second == AlreadyDone(3)
    for got, want in zip(first.inputs[0].inputs, inputs[0].inputs):
        assert np.array_equal(got, want) and not got.flags.writeable  # a view: no stage may write into it
        assert data.address <= got.ctypes.data < data.address + data.size
    assert [from_row(row) for row in rows_of(table.slice(1))] == [AlreadyDone(3)]  # a block's slice
    assert to_table([]).num_rows == 0 and list(rows_of(to_table([]))) == []


def test_a_record_too_large_for_an_arrow_value_is_refused_with_what_to_do():
    class Huge:  # the length of a 2 GiB record without allocating one
        def __len__(self):
            return 2**31

    with pytest.raises(ValueError, match="lower sources.frames_per_segment"):
        to_table([{"key": "video-0123", "record": Huge()}])


@pytest.mark.parametrize("record", [
    ToPlan(SourceObject("s3://b/v.mp4", "video", 10, "etag"), NEW),
    Skipped("/data/readme.xyz", "file type not annotated"),
    AlreadyDone(10_000),
])
def test_listing_records_round_trip(record):
    assert round_trip(record) == record


def test_records_are_immutable_so_no_stage_changes_what_an_earlier_one_meant():
    frames, inputs = frames_of([np.zeros((90, 160, 3), np.uint8)])
    record = PreparedShard(frames, inputs, StageSeconds())
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.inputs = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        frames.shard_id = "other"
    assert record.seconds.plus(infer=1.0) == StageSeconds(infer=1.0) and record.seconds == StageSeconds()
    assert record.ended.plus(infer=5.0) == StageEnds(infer=5.0) and record.ended == StageEnds()
