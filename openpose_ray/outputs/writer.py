"""Writing the people and frames tables of a shard as Parquet, locally or on S3.

Layout under the output folder or s3:// prefix (Hive partitioning)::

    people/<partition_by>=<value>/part-<shard_id>-<run_id>.parquet
    frames/<partition_by>=<value>/part-<shard_id>-<run_id>.parquet
    _manifest/...   (see openpose_ray.outputs.manifest)
    summary.json

or ``people/part-<shard_id>-<run_id>.parquet`` when ``WriteConfig.partition_by`` is None.
The partition column is not stored inside the files: it lives in the path, and
Hive-aware readers put it back as a column::

    SELECT source_kind, count(*) FROM read_parquet('out/people/**/*.parquet', hive_partitioning=true)
    GROUP BY ALL;                                   -- DuckDB
    pyarrow.dataset.dataset("out/people", partitioning="hive")   # pyarrow

Partition values are percent-encoded for the path (anything but ASCII letters,
digits, "-", "_" and "."; a value of only dots is encoded entirely), and both
DuckDB and pyarrow decode them, so the column reads back as the original value.

Every shard writes both files, also when nobody was found (a people file with
0 rows and the full schema). A shard is committed when its record is in the
manifest (:mod:`openpose_ray.outputs.manifest`), written after both files. The
run id in the file names means a later run never overwrites a committed file;
within a run, writing a shard again (a retried task) replaces its two files.
Each file is serialised in memory and then published in one step: locally to a temporary file beside the target and renamed over it
(readers see the old file or the new one, never half), on S3 as one object
that appears when its upload completes.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import mimetypes
import os
import time
import urllib.parse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from openpose_ray.atomic import write_bytes_atomic
from openpose_ray.jobconfig import S3Config, WriteConfig
from openpose_ray.retry import call_with_retries
from openpose_ray.storage import Location, arrow_filesystem, parse, redact, text_form

from .frames_table import FRAMES_SCHEMA
from .provenance import Provenance

log = logging.getLogger(__name__)

PARTITION_COLUMNS = ("source_kind", "source_dir", "run_date")
TABLES = ("people", "frames")

# pyarrow's default (1Mi rows) would put a whole large shard in one group; 128Ki rows
# (~30 MB of uncompressed people rows) keeps groups big enough to scan fast and small
# enough for readers to skip by statistics and to read with bounded memory.
ROW_GROUP_ROWS = 128 * 1024
_MAX_SEGMENT_CHARS = 200  # below the 255-byte file name limit of common filesystems
_FILESYSTEM_TTL_S = 15 * 60  # rebuild S3 filesystems before temporary credentials expire
_S3_DELETE_BATCH = 1000  # keys per DeleteObjects request (the S3 limit)
_filesystems: dict[tuple[str, S3Config], tuple[float, object]] = {}


class ShardWriter:
    """Writes the two Parquet files of each shard under ``output_uri`` (see the module docstring).

    Holds plain values only, so it pickles to Ray workers; filesystems and S3
    clients are made on first use in each process and cached there.
    """

    def __init__(self, output_uri: str, write: WriteConfig, s3: S3Config, provenance: Provenance):
        if write.partition_by is not None and write.partition_by not in PARTITION_COLUMNS:
            raise ValueError(_unknown_partition_message(write.partition_by))
        _check_compression(write.compression)
        self.output_uri = output_uri
        self.write = write
        self.s3 = s3
        self.provenance = provenance
        self._root = parse(output_uri)

    def shard_uris(self, shard_id: str, partition_value: str | None) -> dict[str, str]:
        """{"people": uri, "frames": uri}: where the files of ``shard_id`` go (paths for local output)."""
        if (self.write.partition_by is None) != (partition_value is None):
            raise ValueError(
                f"shard {shard_id}: partition_value {partition_value!r} does not fit "
                f"partition_by={self.write.partition_by!r}; compute it with partition_value()"
            )
        partition = () if partition_value is None else (
            f"{self.write.partition_by}={encode_path_segment(partition_value)}",)
        name = f"part-{encode_path_segment(shard_id)}-{encode_path_segment(self.provenance.run_id)}.parquet"
        return {table: self._root.join(table, *partition, name).uri for table in TABLES}

    def write_shard(self, shard_id: str, people: pa.Table, frames: pa.Table,
                    partition_value: str | None) -> list[str]:
        """Write (or replace) the people and frames files of one shard; returns [people uri, frames uri].

        people: a people table (:func:`~openpose_ray.outputs.people_table.people_schema`
            with :data:`~openpose_ray.outputs.people_table.PEOPLE_EXTRA_FIELDS`), possibly 0 rows.
        frames: a frames table (:data:`~openpose_ray.outputs.frames_table.FRAMES_SCHEMA`).
        partition_value: the shard's value of ``partition_by`` (from :func:`partition_value`;
            one per shard), None when not partitioned.
        """
        if not frames.schema.equals(FRAMES_SCHEMA, check_metadata=False):
            raise ValueError(f"shard {shard_id}: frames table does not have FRAMES_SCHEMA; build it with "
                             f"FramesTableBuilder. Its schema:\n{frames.schema}")
        uris = self.shard_uris(shard_id, partition_value)
        metadata = self.provenance.to_metadata()
        written = []
        for name, table in (("people", people), ("frames", frames)):
            table = self._drop_partition_column(shard_id, name, table, partition_value)
            write_bytes(uris[name], parquet_bytes(table, self.write.compression, metadata), self.s3)
            written.append(uris[name])
        log.debug("shard %s: wrote %d people rows, %d frames rows to %s", shard_id, people.num_rows,
                  frames.num_rows, redact(uris["frames"]))
        return written

    def _drop_partition_column(self, shard_id: str, name: str, table: pa.Table,
                               partition_value: str | None) -> pa.Table:
        column = self.write.partition_by
        if column is None or column not in table.column_names:
            return table
        values = pc.unique(table.column(column)).to_pylist()
        if values and values != [partition_value]:
            raise ValueError(
                f"shard {shard_id}: {name} table has {column} values {values} but the shard is written to "
                f"partition {column}={partition_value!r}; a shard must hold one partition (plan shards per {column})"
            )
        return table.drop_columns([column])


def partition_value(partition_by: str | None, source: str, source_kind: str,
                    provenance: Provenance) -> str | None:
    """The value of the partition column for an input (not yet encoded for the path).

    "source_kind": the kind ("image", "video", "tar"); "source_dir": the name of the
    folder or prefix holding the input ("/data/cam1/a.mp4" -> "cam1"; an object at
    the top of a bucket -> the bucket name; a file in "/" -> "/"); "run_date": the
    UTC date of the run, YYYY-MM-DD; None: not partitioned.
    """
    if partition_by is None:
        return None
    if partition_by == "source_kind":
        return source_kind
    if partition_by == "run_date":
        return provenance.run_date
    if partition_by == "source_dir":
        location = parse(text_form(source))
        if location.scheme == "s3":
            parts = location.key.split("/")
            return parts[-2] if len(parts) >= 2 and parts[-2] else location.bucket
        parent = os.path.dirname(os.path.abspath(location.key))
        return os.path.basename(parent) or parent
    raise ValueError(_unknown_partition_message(partition_by))


def encode_path_segment(value: str) -> str:
    """``value`` as one safe path segment: percent-encoded, never "", "." or "..", at most 200 chars.

    Reversible with percent-decoding (what DuckDB and pyarrow do for Hive
    partitions) except for values that had to be shortened, which keep a prefix
    and gain "~" + a hash of the full value.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"a path segment needs a non-empty str, got {value!r}")
    encoded = urllib.parse.quote(value, safe="-_.")
    if not encoded.strip("."):
        encoded = encoded.replace(".", "%2E")
    if len(encoded) > _MAX_SEGMENT_CHARS:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        head = encoded[: _MAX_SEGMENT_CHARS - 17]
        head = head[: head.rfind("%")] if "%" in head[-2:] else head  # do not cut a %XX escape
        encoded = f"{head}~{digest}"
    return encoded


def output_uri(output: str, relative: str) -> str:
    """URI of ``relative`` (a path like ``media/videos/x.mp4``) under the job's output folder or S3 prefix."""
    return parse(output).join(relative).uri


def write_summary(output_uri: str, s3: S3Config, summary: dict) -> str:
    """Write ``summary`` as ``<output>/summary.json`` (credentials redacted); returns its uri."""
    uri = parse(output_uri).join("summary.json").uri
    text = redact(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False))
    write_bytes(uri, (text + "\n").encode(), s3)
    return uri


def write_bytes(uri_or_path: str, data: bytes | memoryview | pa.Buffer, s3: S3Config,
                content_type: str | None = None) -> None:
    """Publish ``data`` at a local path (atomic rename) or s3:// URI (one object, Content-Type set).

    content_type: for S3 objects; guessed from the extension when None (so that
    browsers play .mp4 and show .jpg served from the bucket).
    """
    location = parse(uri_or_path)
    if location.scheme != "s3":
        write_bytes_atomic(location.key, data)
        return
    filesystem, path = output_filesystem(location, s3)
    content_type = content_type or mimetypes.guess_type(location.key)[0] or "application/octet-stream"

    def put() -> None:  # a whole object with the same bytes: safe to repeat
        with filesystem.open_output_stream(path, metadata={"Content-Type": content_type}) as out:
            out.write(data)

    call_with_retries(put, what=f"PUT {location.uri}", attempts=s3.max_attempts)


def delete_uris(uris: list[str], s3: S3Config) -> None:
    """Delete local files and S3 objects; missing ones are fine.

    S3 objects are deleted with boto3's DeleteObjects (1000 keys per request), not
    with pyarrow's filesystem: its delete_file writes an empty "<parent>/" marker
    object so that the parent "folder" keeps existing, leaving one object behind.
    """
    from openpose_ray.storage import s3_client

    keys_by_bucket: dict[str, list[str]] = {}
    for uri in uris:
        location = parse(uri)
        if location.scheme == "s3":
            keys_by_bucket.setdefault(location.bucket, []).append(location.key)
        else:
            try:
                os.remove(location.key)
            except FileNotFoundError:
                pass
    for bucket, keys in keys_by_bucket.items():
        client = s3_client(s3)
        for start in range(0, len(keys), _S3_DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + _S3_DELETE_BATCH]]
            response = call_with_retries(
                lambda batch=batch: client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True}),
                what=f"DELETE {len(batch)} object(s) of s3://{bucket}", attempts=s3.max_attempts)
            if response.get("Errors"):
                error = response["Errors"][0]
                log.warning("could not delete %d object(s) of s3://%s, e.g. %s: %s", len(response["Errors"]),
                            bucket, error.get("Key"), error.get("Message") or error.get("Code"))


def list_files(location: Location, s3: S3Config):
    """FileInfos of everything under a local folder or S3 prefix (recursive; [] when absent), retried."""
    filesystem, path = output_filesystem(location, s3)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return call_with_retries(lambda: filesystem.get_file_info(selector), what=f"LIST {location.uri}",
                             attempts=s3.max_attempts)


def output_filesystem(location: Location, s3: S3Config):
    """(pyarrow filesystem, path) for ``location``, cached per process and bucket."""
    if location.scheme != "s3":
        return arrow_filesystem(location, s3)
    key = (location.bucket, s3)
    now = time.monotonic()
    cached = _filesystems.get(key)
    if cached is None or now - cached[0] > _FILESYSTEM_TTL_S:
        cached = (now, arrow_filesystem(Location("s3", location.bucket, ""), s3)[0])
        _filesystems[key] = cached
    return cached[1], f"{location.bucket}/{location.key}"


def parquet_bytes(table: pa.Table, compression: str, metadata: dict[bytes, bytes]) -> pa.Buffer:
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    # Strings (source, run id, kind, model, ...) repeat on every row of a frame or shard:
    # dictionary-encode them. Keypoint floats rarely repeat, so they are stored plain.
    strings = [field.name for field in table.schema if pa.types.is_string(field.type)]
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression, use_dictionary=strings,
                   row_group_size=ROW_GROUP_ROWS, write_statistics=True)
    return sink.getvalue()


def _check_compression(compression: str) -> None:
    if compression.lower() == "none":
        return
    try:
        available = pa.Codec.is_available(compression)
    except (ValueError, pa.ArrowException):
        available = False
    if not available:
        raise ValueError(f"WriteConfig.compression {compression!r} is not a Parquet codec of this pyarrow; "
                         "use zstd, snappy, gzip, lz4, brotli or none")


def _unknown_partition_message(partition_by: str) -> str:
    close = difflib.get_close_matches(str(partition_by), PARTITION_COLUMNS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"partition_by must be one of {PARTITION_COLUMNS} or None, got {partition_by!r}{hint}"
