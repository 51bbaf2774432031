import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openpose_ray.outputs.people_table import PeopleTableBuilder, people_schema, read_keypoints
from openpose_ray.person import Person
from openpose_ray.skeleton import COCO18


def _random_frames(seed: int = 0) -> list[tuple[str, int, list[Person]]]:
    """Frames of random float32 persons; about a third of the parts missing (all zeros)."""
    rng = np.random.default_rng(seed)
    frames = []
    for frame_index, num_persons in enumerate([3, 0, 1, 5, 2]):
        persons = []
        for _ in range(num_persons):
            keypoints = rng.uniform(0, 640, size=(COCO18.num_parts, 3)).astype(np.float32)
            keypoints[:, 2] = rng.uniform(0.01, 1, size=COCO18.num_parts).astype(np.float32)
            keypoints[rng.random(COCO18.num_parts) < 0.35] = 0
            persons.append(Person(keypoints=keypoints, score=float(rng.uniform(0, 1))))
        frames.append((f"s3://bucket/video_{frame_index % 2}.mp4", frame_index, persons))
    return frames


def _build(frames, **kwargs) -> pa.Table:
    builder = PeopleTableBuilder(**kwargs)
    for source, frame_index, persons in frames:
        builder.add(source, frame_index, persons)
    return builder.to_table()


def _all_keypoints(frames) -> np.ndarray:
    return np.stack([person.keypoints for _, _, persons in frames for person in persons])


def test_schema_has_one_keypoint_struct_per_part_in_skeleton_order():
    schema = people_schema()
    assert schema.names[:7] == ["source", "frame_index", "person_index", "track_id", "score", "num_parts", "bbox"]
    assert [schema.field(n).type for n in schema.names[:6]] == [
        pa.string(), pa.int64(), pa.int32(), pa.int64(), pa.float32(), pa.int16()
    ]
    assert [(f.name, f.type) for f in schema.field("bbox").type] == [
        ("x", pa.float32()), ("y", pa.float32()), ("width", pa.float32()), ("height", pa.float32())]
    assert tuple(schema.names[7:]) == COCO18.part_names
    assert len(schema.names[7:]) == 18
    for name in COCO18.part_names:
        struct = schema.field(name).type
        assert [(f.name, f.type) for f in struct] == [
            ("x", pa.float32()), ("y", pa.float32()), ("confidence", pa.float32())
        ]


def test_extra_fields_are_appended():
    schema = people_schema(extra_fields=[pa.field("run_id", pa.string())])
    assert schema.names[-1] == "run_id"
    with pytest.raises(ValueError, match="used twice"):
        people_schema(extra_fields=[pa.field("nose", pa.string())])


def test_round_trip_through_parquet_is_exact(tmp_path):
    frames = _random_frames()
    path = tmp_path / "people.parquet"
    pq.write_table(_build(frames), path)
    table = pq.read_table(path)

    expected = _all_keypoints(frames)
    assert table.schema.equals(people_schema())
    assert np.array_equal(read_keypoints(table), expected)
    assert table.column("frame_index").to_pylist() == [0, 0, 0, 2, 3, 3, 3, 3, 3, 4, 4]
    assert table.column("person_index").to_pylist() == [0, 1, 2, 0, 0, 1, 2, 3, 4, 0, 1]
    assert table.column("source").to_pylist()[:4] == ["s3://bucket/video_0.mp4"] * 4
    scores = [np.float32(p.score) for _, _, persons in frames for p in persons]
    assert np.array_equal(table.column("score").to_numpy(), scores)
    assert np.array_equal(table.column("num_parts").to_numpy(), (expected[:, :, 2] > 0).sum(axis=1))


def test_missing_parts_are_zeros_not_nulls():
    table = _build(_random_frames())
    for name in COCO18.part_names:
        assert table.column(name).null_count == 0
    assert (read_keypoints(table)[read_keypoints(table)[:, :, 2] == 0] == 0).all()


def test_empty_builder_writes_a_valid_file(tmp_path):
    table = PeopleTableBuilder().to_table()
    assert table.num_rows == 0
    assert table.schema.equals(people_schema())
    path = tmp_path / "empty.parquet"
    pq.write_table(table, path)
    read_back = pq.read_table(path)
    assert read_back.num_rows == 0
    assert read_back.schema.equals(people_schema())
    assert read_keypoints(read_back).shape == (0, COCO18.num_parts, 3)


def test_frames_without_persons_add_no_rows():
    builder = PeopleTableBuilder()
    builder.add("a.jpg", 0, [])
    assert len(builder) == 0
    assert builder.to_table().num_rows == 0


def test_extra_values_are_repeated_per_frame_row():
    builder = PeopleTableBuilder(extra_fields=[pa.field("run_id", pa.string())])
    frames = _random_frames()
    for source, frame_index, persons in frames:
        builder.add(source, frame_index, persons, extra={"run_id": f"run-{frame_index}"})
    table = builder.to_table()
    assert table.column("run_id").to_pylist()[:4] == ["run-0", "run-0", "run-0", "run-2"]
    with pytest.raises(KeyError, match="did you mean 'run_id'"):
        builder.add("a.jpg", 0, [], extra={"run_idd": "x"})


def test_keypoints_of_another_skeleton_are_rejected():
    person = Person(keypoints=np.zeros((17, 3), dtype=np.float32), score=0.5)
    with pytest.raises(ValueError, match=r"a.jpg frame 0 person 0: keypoints have shape \(17, 3\)"):
        PeopleTableBuilder().add("a.jpg", 0, [person])


def test_duckdb_queries_parts_by_name(tmp_path):
    frames = _random_frames(seed=1)
    path = tmp_path / "people.parquet"
    pq.write_table(_build(frames), path)
    keypoints = _all_keypoints(frames)
    nose = COCO18.part_index("nose")
    r_wrist = COCO18.part_index("r_wrist")

    with duckdb.connect() as connection:
        (found_noses,) = connection.execute(
            f"SELECT count(*) FROM '{path}' WHERE nose.confidence > 0"
        ).fetchone()
        (mean_wrist_confidence,) = connection.execute(
            f"SELECT avg(r_wrist.confidence) FROM '{path}'"
        ).fetchone()
        (mean_found_wrist_x,) = connection.execute(
            f"SELECT avg(r_wrist.x) FROM '{path}' WHERE r_wrist.confidence > 0"
        ).fetchone()

    assert found_noses == np.count_nonzero(keypoints[:, nose, 2] > 0)
    # DuckDB sums float32 in double precision.
    assert mean_wrist_confidence == pytest.approx(keypoints[:, r_wrist, 2].astype(np.float64).mean(), rel=1e-12)
    found = keypoints[:, r_wrist, 2] > 0
    assert mean_found_wrist_x == pytest.approx(keypoints[found, r_wrist, 0].astype(np.float64).mean(), rel=1e-12)


def test_bbox_is_the_tightest_box_around_the_found_parts():
    keypoints = np.zeros((3, COCO18.num_parts, 3), np.float32)
    keypoints[0, [0, 1, 4], :] = [[10.0, 20.0, 0.9], [14.5, 40.0, 0.8], [3.0, 33.0, 0.1]]
    keypoints[0, 7] = [500.0, 500.0, 0.0]  # not found: its position is ignored
    keypoints[1, 2] = [7.0, 8.0, 0.5]  # one part: a box of no size at it
    builder = PeopleTableBuilder()
    builder.add("a.jpg", 0, [Person(keypoints=k, score=1.0) for k in keypoints])
    boxes = builder.to_table().column("bbox").to_pylist()
    assert boxes[0] == {"x": 3.0, "y": 20.0, "width": 11.5, "height": 20.0}
    assert boxes[1] == {"x": 7.0, "y": 8.0, "width": 0.0, "height": 0.0}
    assert boxes[2] == {"x": 0.0, "y": 0.0, "width": 0.0, "height": 0.0}  # nobody's parts: zeros, never NaN
