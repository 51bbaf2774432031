"""Reading a job's output tables exactly once, through the manifest.

    from openpose_ray.tables import read_table
    people = read_table("s3://bucket/poses", "people")        # a pyarrow Table
    frames = read_table("/data/out", "frames", columns=["source", "frame_index", "status"])

Only the rows of committed, current shards are returned (see
:mod:`openpose_ray.outputs.manifest`): what a killed run left behind, rows an
input had before it was annotated again (new version, new model or settings,
``--force``), and files of a run still in progress are left out. The Hive
partition column (``write.partition_by``) is restored as a column.

The same in SQL (DuckDB), with the manifest snapshot as the filter::

    SELECT p.* FROM read_parquet('out/people/**/*.parquet', hive_partitioning = true) AS p
    SEMI JOIN (SELECT source, shard_id, run_id FROM 'out/_manifest/inputs.parquet' WHERE current) AS c
    USING (source, shard_id, run_id);

:class:`CurrentRows` reads the same rows a few files at a time, optionally only
those one run wrote (the run report, :mod:`openpose_ray.outputs.report`).

The snapshot is rewritten at the end of every run, so shards committed by a run
still going (or killed) become visible when that run (or the next one) ends.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .jobconfig import S3Config
from .outputs.frames_table import FRAMES_SCHEMA
from .outputs.manifest import ROW_KEY, SNAPSHOT, SNAPSHOT_SCHEMA, row_keys
from .outputs.people_table import PEOPLE_EXTRA_FIELDS, people_schema, table_skeleton
from .outputs.writer import TABLES, output_filesystem
from .retry import call_with_retries
from .storage import parse, redact

def _current_schema(table: str, schema: pa.Schema) -> pa.Schema:
    """What ``table``'s files hold today: the frames schema, or the people schema of the skeleton the files name."""
    if table == "frames":
        return FRAMES_SCHEMA
    try:
        skeleton = table_skeleton(schema)
    except KeyError:  # not written by openpose_ray: only the columns the job adds beside the parts
        return pa.schema(PEOPLE_EXTRA_FIELDS)
    return people_schema(skeleton, PEOPLE_EXTRA_FIELDS)


def current_records(output: str, s3: S3Config | None = None) -> pa.Table:
    """The manifest's current records (one per image, tar or video segment); empty before the first run ends."""
    filesystem, root = output_filesystem(parse(output), s3 or S3Config())
    path = posixpath.join(root, SNAPSHOT)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return SNAPSHOT_SCHEMA.empty_table()
    snapshot = pq.read_table(path, filesystem=filesystem, schema=SNAPSHOT_SCHEMA)
    return snapshot.filter(snapshot["current"])


def read_table(output: str, table: str, s3: S3Config | None = None,
               columns: Sequence[str] | None = None) -> pa.Table:
    """The current rows of ``table`` ("people" or "frames") of the output at ``output`` (path or s3:// URI).

    columns: the columns to return (all when None), partition column included.
    Raises FileNotFoundError when the output has no manifest yet.
    """
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    rows = CurrentRows(output, s3)
    return rows.read(table, rows.files(table), columns)


class CurrentRows:
    """The current rows of an output, read a few files at a time: for readers that bound their memory.

        rows = CurrentRows("s3://bucket/poses", run_id=summary["run_id"])   # the rows one run wrote
        files = rows.files("frames")
        for start in range(0, len(files), 64):
            chunk = rows.read("frames", files[start:start + 64], columns=["source", "status"])

    run_id: only the current records that run committed (None: all current records).
    Raises FileNotFoundError when the output has no manifest yet.
    """

    def __init__(self, output: str, s3: S3Config | None = None, run_id: str | None = None):
        self.output = output
        self.s3 = s3 or S3Config()
        records = call_with_retries(self._records, what=f"READ the manifest of {redact(output)}",
                                    attempts=self.s3.max_attempts)
        if run_id is not None:
            records = records.filter(pc.equal(records["run_id"], run_id))
        self.records = records
        self._keys = pc.unique(row_keys(records))

    def _records(self) -> pa.Table:
        records = current_records(self.output, self.s3)
        if records.num_rows == 0:
            filesystem, root = output_filesystem(parse(self.output), self.s3)
            if filesystem.get_file_info(posixpath.join(root, SNAPSHOT)).type != pafs.FileType.File:
                raise FileNotFoundError(f"{redact(self.output)} has no {SNAPSHOT}: no run has finished writing there yet")
        return records

    def files(self, table: str) -> list[str]:
        """The files of ``table`` ("people" or "frames") holding these rows, relative to the output root, sorted."""
        if table not in TABLES:
            raise ValueError(f"table must be one of {TABLES}, got {table!r}")
        return sorted(set(self.records[f"{table}_file"].to_pylist()))

    def read(self, table: str, files: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
        """The current rows in ``files`` (of :meth:`files`) of ``table``; columns: as :func:`read_table`'s."""
        if table not in TABLES:
            raise ValueError(f"table must be one of {TABLES}, got {table!r}")
        return call_with_retries(lambda: self._read(table, files, columns),
                                 what=f"READ {table} of {redact(self.output)}", attempts=self.s3.max_attempts)

    def _read(self, table: str, files: Sequence[str], columns: Sequence[str] | None) -> pa.Table:
        filesystem, root = output_filesystem(parse(self.output), self.s3)
        dataset = pads.dataset([posixpath.join(root, f) for f in files], format="parquet", filesystem=filesystem,
                               partitioning="hive", partition_base_dir=posixpath.join(root, table))
        # Files written before a column existed (frames: error_kind, sample_key; people: track_id, bbox,
        # sample_key) read it as NULL: the dataset's schema is its first file's, plus today's columns it lacks.
        missing = [field.with_nullable(True) for field in _current_schema(table, dataset.schema)
                   if field.name not in dataset.schema.names]
        if missing:
            dataset = dataset.replace_schema(pa.schema([*dataset.schema, *missing], metadata=dataset.schema.metadata))
        wanted = list(columns) if columns is not None else None
        read_columns = None if wanted is None else list(dict.fromkeys(wanted + list(ROW_KEY)))
        rows = dataset.to_table(columns=read_columns)
        # A file can hold rows of inputs annotated again since (a new version or generation
        # of an image regrouped into another shard): keep the rows the current records name.
        # (A semi join would do, but Acero joins refuse the keypoint struct columns.)
        rows = rows.filter(pc.is_in(row_keys(rows), value_set=self._keys))
        if wanted is not None:
            rows = rows.select(wanted)
        return rows
