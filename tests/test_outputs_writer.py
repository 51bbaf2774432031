"""Shard Parquet output: layout, Hive partitions, provenance, atomic and idempotent writes, local and S3."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from openpose_ray.jobconfig import S3Config, WriteConfig
from openpose_ray.outputs.frames_table import FRAMES_SCHEMA, FramesTableBuilder, ShardTablesBuilder
from openpose_ray.outputs.people_table import PEOPLE_EXTRA_FIELDS, people_schema, read_keypoints
from openpose_ray.outputs.provenance import Provenance
from openpose_ray.outputs.writer import ShardWriter, encode_path_segment, partition_value, write_summary
from openpose_ray.person import Person
from openpose_ray.skeleton import COCO18

PROVENANCE = Provenance(
    run_id="run-0001", model="mobilenet_thin", weights_sha256="ab" * 32, net_size=(432, 368),
    scales=(1.0, 0.5), code_version="0.1.0", config_fingerprint="cfg123", created_at="2024-05-01T23:59:30+00:00",
)
LOCAL = S3Config()


def _persons(rng: np.random.Generator, count: int) -> list[Person]:
    persons = []
    for _ in range(count):
        keypoints = rng.uniform(0, 640, size=(COCO18.num_parts, 3)).astype(np.float32)
        keypoints[rng.random(COCO18.num_parts) < 0.3] = 0
        persons.append(Person(keypoints=keypoints, score=float(rng.uniform(0, 1))))
    return persons


def _shard(shard_id: str, source_kind: str, people_per_frame=(2, 0, 3, 0, 1), seed: int = 0):
    """(people, frames, keypoints) of a shard: frames with and without people, plus one failed input."""
    rng = np.random.default_rng(seed)
    tables = ShardTablesBuilder(PROVENANCE, shard_id)
    keypoints = []
    for index, count in enumerate(people_per_frame):
        persons = _persons(rng, count)
        keypoints += [p.keypoints for p in persons]
        if source_kind == "video":
            tables.add_frame("s3://in/cams/cam1.mp4", index, persons, source_kind="video", width=640, height=480,
                             timestamp=index / 25)
        else:
            tables.add_frame("/data/photos/album.tar", 0, persons, source_kind="tar", member=f"img_{index}.jpg",
                             width=320, height=240)
    tables.add_error("/data/broken.jpg" if source_kind != "video" else "s3://in/cams/cam1.mp4",
                     "cannot decode: X-Amz-Signature=secret123", "corrupt", source_kind=source_kind)
    people, frames = tables.to_tables()
    return people, frames, np.array(keypoints, dtype=np.float32).reshape(-1, COCO18.num_parts, 3)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_two_shards_are_one_hive_partitioned_dataset(tmp_path):
    writer = ShardWriter(str(tmp_path / "out"), WriteConfig(partition_by="source_kind"), LOCAL, PROVENANCE)
    people_a, frames_a, keypoints_a = _shard("a", "tar", seed=1)
    people_v, frames_v, _ = _shard("v", "video", people_per_frame=(0, 4, 0), seed=2)
    written = writer.write_shard("a", people_a, frames_a, "tar") + writer.write_shard("v", people_v, frames_v, "video")

    out = tmp_path / "out"
    assert _files(out) == sorted([
        "people/source_kind=tar/part-a-run-0001.parquet", "frames/source_kind=tar/part-a-run-0001.parquet",
        "people/source_kind=video/part-v-run-0001.parquet", "frames/source_kind=video/part-v-run-0001.parquet",
    ]), "exactly one file per table and shard, no temporary files left behind"
    assert sorted(written) == sorted(str(out / f) for f in _files(out))

    people_glob, frames_glob = f"{out}/people/**/*.parquet", f"{out}/frames/**/*.parquet"
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{people_glob}', hive_partitioning=true)").fetchall()[0][0]
    assert count == people_a.num_rows + people_v.num_rows == 6 + 4
    by_kind = dict(duckdb.sql(f"SELECT source_kind, count(*) FROM read_parquet('{people_glob}', hive_partitioning=true) "
                              "GROUP BY ALL").fetchall())
    assert by_kind == {"tar": 6, "video": 4}
    frames = duckdb.sql(f"SELECT source_kind, num_people, status, error, member, timestamp, error_kind "
                        f"FROM read_parquet('{frames_glob}', hive_partitioning=true)").fetchall()
    assert len(frames) == 5 + 1 + 3 + 1
    assert sum(1 for row in frames if row[1] == 0 and row[2] == "ok") == 2 + 2
    errors = [row for row in frames if row[2] == "error"]
    assert {row[0] for row in errors} == {"tar", "video"}
    assert all("secret123" not in row[3] and "cannot decode" in row[3] for row in errors), "errors are redacted"
    assert [row[6] for row in errors] == ["corrupt"] * len(errors)
    assert {row[6] for row in frames if row[2] == "ok"} == {None}

    for path in written:
        schema = pq.read_schema(path)
        assert Provenance.from_metadata(schema.metadata) == PROVENANCE
        assert "source_kind" not in schema.names, "the partition column lives in the path only"
    people_file = pq.read_table(out / "people/source_kind=tar/part-a-run-0001.parquet")
    np.testing.assert_array_equal(read_keypoints(people_file), keypoints_a)
    assert pq.read_schema(out / "people/source_kind=tar/part-a-run-0001.parquet").metadata[b"openpose_ray.skeleton"] == b"coco18"

    dataset = ds.dataset(out / "frames", partitioning="hive").to_table()
    assert sorted(set(dataset.column("source_kind").to_pylist())) == ["tar", "video"]


def test_rewriting_a_shard_replaces_its_files(tmp_path):
    writer = ShardWriter(str(tmp_path), WriteConfig(partition_by=None, compression="snappy"), LOCAL, PROVENANCE)
    writer.write_shard("s1", *_shard("s1", "tar")[:2], None)
    people, frames, _ = _shard("s1", "tar", people_per_frame=(1, 1), seed=5)
    writer.write_shard("s1", people, frames, None)
    assert _files(tmp_path) == ["frames/part-s1-run-0001.parquet", "people/part-s1-run-0001.parquet"]
    assert duckdb.sql(f"SELECT count(*) FROM '{tmp_path}/people/*.parquet'").fetchall()[0][0] == 2
    assert duckdb.sql(f"SELECT count(*) FROM '{tmp_path}/frames/*.parquet'").fetchall()[0][0] == 3
    assert pq.ParquetFile(tmp_path / "people/part-s1-run-0001.parquet").metadata.row_group(0).column(0).compression == "SNAPPY"


def test_a_shard_without_people_still_writes_an_empty_people_file(tmp_path):
    writer = ShardWriter(str(tmp_path), WriteConfig(partition_by="run_date"), LOCAL, PROVENANCE)
    people, frames, _ = _shard("empty", "tar", people_per_frame=(0, 0))
    value = partition_value("run_date", "/data/photos/album.tar", "tar", PROVENANCE)
    assert value == "2024-05-01"
    writer.write_shard("empty", people, frames, value)
    empty = pq.read_table(tmp_path / "people/run_date=2024-05-01/part-empty-run-0001.parquet")
    assert empty.num_rows == 0
    assert empty.schema.equals(people_schema(COCO18, PEOPLE_EXTRA_FIELDS), check_metadata=False)


@pytest.mark.parametrize("value", ["../x", "a/b", "..", ".", "x=y", "Ünïcödé 名前", "%2F", "a\\b\x00c", "d" * 400])
def test_partition_values_stay_one_segment_inside_the_output(tmp_path, value):
    out = tmp_path / "out"
    writer = ShardWriter(str(out), WriteConfig(partition_by="source_dir"), LOCAL, PROVENANCE)
    people, frames, _ = _shard("../s/1", "tar")
    writer.write_shard("../s/1", people, frames, value)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2
    for path in files:
        relative = path.resolve().relative_to(out.resolve()).parts
        assert len(relative) == 3 and relative[1].startswith("source_dir=") and relative[2].startswith("part-")
    restored = duckdb.sql(f"SELECT DISTINCT source_dir FROM read_parquet('{out}/people/**/*.parquet', "
                          "hive_partitioning=true)").fetchall()
    if len(value) < 100:
        assert restored == [(value,)], "readers percent-decode the path segment back to the value"
    assert len(encode_path_segment(value)) <= 200


def test_partition_value_of_each_partitioning():
    assert partition_value(None, "/a/b.jpg", "image", PROVENANCE) is None
    assert partition_value("source_kind", "/a/b.jpg", "image", PROVENANCE) == "image"
    assert partition_value("source_dir", "/data/cam1/a.mp4", "video", PROVENANCE) == "cam1"
    assert partition_value("source_dir", "s3://bucket/x/cam2/a.mp4", "video", PROVENANCE) == "cam2"
    assert partition_value("source_dir", "s3://bucket/a.mp4", "video", PROVENANCE) == "bucket"
    assert partition_value("source_dir", "/a.mp4", "video", PROVENANCE) == "/"
    assert partition_value("run_date", "/a.mp4", "video", PROVENANCE) == "2024-05-01"
    with pytest.raises(ValueError, match="did you mean 'source_dir'"):
        partition_value("source_dirs", "/a.mp4", "video", PROVENANCE)


def test_a_shard_must_hold_one_partition(tmp_path):
    writer = ShardWriter(str(tmp_path), WriteConfig(partition_by="source_kind"), LOCAL, PROVENANCE)
    people, frames, _ = _shard("v", "video")
    with pytest.raises(ValueError, match="one partition"):
        writer.write_shard("v", people, frames, "image")
    with pytest.raises(ValueError, match="partition_value"):
        writer.write_shard("v", people, frames, None)
    with pytest.raises(ValueError, match="partition_by must be one of"):
        ShardWriter(str(tmp_path), WriteConfig(partition_by="kind"), LOCAL, PROVENANCE)
    with pytest.raises(ValueError, match="not a Parquet codec"):
        ShardWriter(str(tmp_path), WriteConfig(compression="zip"), LOCAL, PROVENANCE)
    assert _files(tmp_path) == []


def test_writer_pickles_without_clients_and_provenance_round_trips(tmp_path):
    writer = ShardWriter(str(tmp_path), WriteConfig(), LOCAL, PROVENANCE)
    writer.write_shard("a", *_shard("a", "tar")[:2], "tar")
    clone = pickle.loads(pickle.dumps(writer))
    assert clone.shard_uris("a", "tar") == writer.shard_uris("a", "tar")
    assert Provenance.from_metadata(PROVENANCE.to_metadata()) == PROVENANCE
    assert hash(Provenance.from_metadata(PROVENANCE.to_metadata())) == hash(PROVENANCE)
    with pytest.raises(KeyError, match="openpose_ray.provenance"):
        Provenance.from_metadata({b"other": b"x"})
    with pytest.raises(ValueError, match="UTC"):
        Provenance(**{**PROVENANCE.__dict__, "created_at": "2024-05-01T12:00:00+02:00"})


def test_frames_builder_rejects_inconsistent_rows():
    builder = FramesTableBuilder(run_id="r", shard_id="s", model="m", config_fingerprint="c")
    with pytest.raises(ValueError, match="error message"):
        builder.add("/a.jpg", 0, source_kind="image", width=1, height=1, num_people=0, status="error")
    with pytest.raises(ValueError, match="error_kind"):
        builder.add("/a.jpg", 0, source_kind="image", width=1, height=1, num_people=0, status="error", error="x")
    with pytest.raises(ValueError, match="error_kind"):
        builder.add("/a.jpg", 0, source_kind="image", width=1, height=1, num_people=0, status="error", error="x",
                    error_kind="broken")
    with pytest.raises(ValueError, match="error_kind"):
        builder.add("/a.jpg", 0, source_kind="image", width=1, height=1, num_people=0, error_kind="corrupt")
    with pytest.raises(ValueError, match="source_kind"):
        builder.add("/a.jpg", 0, source_kind="images", width=1, height=1, num_people=0)
    assert builder.to_table().schema.equals(FRAMES_SCHEMA)
    assert builder.to_table().num_rows == 0


def test_summary_is_written_atomically_and_redacted(tmp_path):
    uri = write_summary(str(tmp_path), LOCAL, {"frames": 10, "note": "https://x?X-Amz-Signature=abc&y=1"})
    assert Path(uri) == tmp_path / "summary.json"
    summary = json.loads(Path(uri).read_text())
    assert summary["frames"] == 10 and "abc" not in summary["note"]
    assert _files(tmp_path) == ["summary.json"]


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_shards_on_s3(moto_endpoint, monkeypatch):
    import boto3
    import pyarrow.fs as pafs

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    s3 = S3Config(endpoint_url=moto_endpoint, region="us-east-1")
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket="results")

    writer = ShardWriter("s3://results/run1", WriteConfig(partition_by="source_kind"), s3, PROVENANCE)
    writer = pickle.loads(pickle.dumps(writer))
    people_a, frames_a, _ = _shard("a", "tar", seed=1)
    people_v, frames_v, _ = _shard("v", "video", people_per_frame=(0, 4, 0), seed=2)
    writer.write_shard("a", people_a, frames_a, "tar")
    writer.write_shard("a", people_a, frames_a, "tar")  # a retried task: replaces, no duplicate
    written = writer.write_shard("v", people_v, frames_v, "video")
    write_summary("s3://results/run1", s3, {"shards": 2})

    assert written[1] == "s3://results/run1/frames/source_kind=video/part-v-run-0001.parquet"
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="results")["Contents"])
    assert keys == sorted([
        "run1/frames/source_kind=tar/part-a-run-0001.parquet", "run1/frames/source_kind=video/part-v-run-0001.parquet",
        "run1/people/source_kind=tar/part-a-run-0001.parquet", "run1/people/source_kind=video/part-v-run-0001.parquet",
        "run1/summary.json",
    ])
    filesystem = pafs.S3FileSystem(endpoint_override=moto_endpoint.removeprefix("http://"), scheme="http",
                                   region="us-east-1", access_key="test", secret_key="test")
    people = ds.dataset("results/run1/people", filesystem=filesystem, format="parquet", partitioning="hive").to_table()
    assert people.num_rows == people_a.num_rows + people_v.num_rows
    assert sorted(set(people.column("source_kind").to_pylist())) == ["tar", "video"]
    frames_schema = pq.read_schema("results/run1/frames/source_kind=video/part-v-run-0001.parquet", filesystem=filesystem)
    assert Provenance.from_metadata(frames_schema.metadata) == PROVENANCE
    head = client.head_object(Bucket="results", Key="run1/summary.json")
    assert head["ContentType"] == "application/json"
    assert json.loads(client.get_object(Bucket="results", Key="run1/summary.json")["Body"].read()) == {"shards": 2}
    table = pa.concat_tables([people_a, people_v]).drop_columns(["source_kind"])
    assert people.drop_columns(["source_kind"]).num_columns == table.num_columns
