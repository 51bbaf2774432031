"""The output's manifest: which inputs are annotated, in which files, made how.

The manifest is what makes runs incremental and crash-safe. Layout under the
output root::

    _manifest/commits/<run_id>/<shard_id>.parquet   one per shard committed by a run
    _manifest/inputs.parquet                        snapshot of the live records, with ``current``

A shard is *committed* when its commit file exists. A worker writes it after
the shard's data files (and media) are published, so a shard killed half-way
leaves at most data files nobody references. Data files are named after the
shard *and the run* (``part-<shard_id>-<run_id>.parquet``): a later run never
overwrites a committed file, it writes new ones and commits those.

A record (a row of :data:`RECORD_SCHEMA`) says "input ``source`` at ``version``
was annotated in ``shard_id`` by ``run_id`` with ``generation``; its rows are in
``people_file`` / ``frames_file``". One record per image, per tar, per video
segment. ``generation`` identifies how results were made: model, weights
sha256 and the result-changing settings (:attr:`Provenance.generation`).

Resolution (:func:`resolve`), per source: records of one (version, generation)
form a group; within it, the newest record per ``start_frame`` wins (a re-run
replaces), and only the newest ``frames_per_segment`` is kept (segments of a
different cut would overlap). A group is complete when it covers the input
(an image or tar: one record; a video: segments summing to ``video_frames``).
The *current* group is the newest complete one, or the newest at all if none
is complete. Groups newer than the current one are kept (a run in progress,
resumed next time); older ones are dropped, and with them their data files.

Readers that need exactly-once rows read the current records' rows only
(:mod:`openpose_ray.tables`): that is the semi-join of the tables on
``(source, shard_id, run_id)`` with the current records. After a run has
finished, its files hold nothing else, so plain globs give the same rows
unless a run was killed since (its unreferenced files are deleted by the
next run's :func:`finalize`).
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from openpose_ray.jobconfig import S3Config
from openpose_ray.retry import call_with_retries
from openpose_ray.storage import parse, redact

from .writer import TABLES, delete_uris, output_filesystem, parquet_bytes, write_bytes

log = logging.getLogger(__name__)

MANIFEST_DIR = "_manifest"
COMMITS_DIR = f"{MANIFEST_DIR}/commits"
SNAPSHOT = f"{MANIFEST_DIR}/inputs.parquet"

RECORD_SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),        # input URI (the tar for tar members)
    pa.field("version", pa.string(), nullable=False),       # S3 ETag or local mtime_ns at listing
    pa.field("size", pa.int64(), nullable=False),           # bytes at listing
    pa.field("source_kind", pa.string(), nullable=False),   # image | video | tar
    pa.field("start_frame", pa.int64(), nullable=False),    # first frame of a video segment; 0 otherwise
    pa.field("end_frame", pa.int64(), nullable=False),      # end (exclusive) of a segment; frames of other inputs
    pa.field("video_frames", pa.int64(), nullable=True),    # frames of the whole video; 0 if it could not be planned
    pa.field("frames_per_segment", pa.int64(), nullable=True),  # the cut used for a video
    pa.field("frames", pa.int64(), nullable=False),         # frames-table rows of this input in the shard
    pa.field("frames_failed", pa.int64(), nullable=False),  # of which status = 'error'
    pa.field("people", pa.int64(), nullable=False),         # people-table rows
    pa.field("shard_id", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("generation", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("weights_sha256", pa.string(), nullable=False),
    pa.field("config_fingerprint", pa.string(), nullable=False),
    pa.field("people_file", pa.string(), nullable=False),   # relative to the output root
    pa.field("frames_file", pa.string(), nullable=False),
    pa.field("committed_at", pa.timestamp("us", tz="UTC"), nullable=False),
])
SNAPSHOT_SCHEMA = RECORD_SCHEMA.append(pa.field("current", pa.bool_(), nullable=False))


def commit_uri(output: str, run_id: str, shard_id: str) -> str:
    return parse(output).join(COMMITS_DIR, run_id, f"{shard_id}.parquet").uri


def relative_to_output(output: str, uri: str) -> str:
    """``uri`` (under ``output``) as a path relative to the output root, with "/" separators."""
    root = parse(output).join("").uri.rstrip("/") + "/"
    if not uri.startswith(root):
        raise ValueError(f"{redact(uri)} is not under the output {redact(root)}")
    return uri[len(root):]


def write_commit(output: str, s3: S3Config, run_id: str, shard_id: str, records: list[dict]) -> str:
    """Commit a shard: publish its records (one Parquet object). Call after its data files are published."""
    now = datetime.now(timezone.utc)
    table = pa.Table.from_pylist([{**r, "committed_at": now} for r in records], schema=RECORD_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    uri = commit_uri(output, run_id, shard_id)
    write_bytes(uri, sink.getvalue(), s3)
    return uri


# --- reading and resolving -----------------------------------------------------------------


@dataclass
class LoadedManifest:
    """All records found (snapshot + commit files), and the commit files they came from."""

    records: pa.Table
    commit_files: list[str] = field(default_factory=list)


def load(output: str, s3: S3Config) -> LoadedManifest:
    """Read the snapshot and every commit file under ``output`` (missing manifest: no records).

    Retried as a whole through storage outages (reading is idempotent).
    """
    return call_with_retries(lambda: _load(output, s3), what=f"READ the manifest of {redact(output)}",
                             attempts=s3.max_attempts)


def _load(output: str, s3: S3Config) -> LoadedManifest:
    filesystem, root = output_filesystem(parse(output), s3)
    tables = []
    snapshot = posixpath.join(root, SNAPSHOT)
    if filesystem.get_file_info(snapshot).type == pafs.FileType.File:
        tables.append(pq.read_table(snapshot, filesystem=filesystem, schema=SNAPSHOT_SCHEMA).drop_columns(["current"]))
    commit_files = _list_files(filesystem, posixpath.join(root, COMMITS_DIR), s3)
    if commit_files:
        dataset = pads.dataset(commit_files, schema=RECORD_SCHEMA, format="parquet", filesystem=filesystem)
        tables.append(dataset.to_table())
    records = pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()
    return LoadedManifest(records, commit_files)


def resolve(records: pa.Table) -> pa.Table:
    """The live records with ``current`` set (see the module docstring); SNAPSHOT_SCHEMA, sorted."""
    newest: dict[tuple, dict] = {}
    for record in records.to_pylist():
        key = (record["source"], record["version"], record["generation"], record["start_frame"])
        if key not in newest or record["committed_at"] >= newest[key]["committed_at"]:
            newest[key] = record
    groups: dict[str, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in newest.values():
        groups[record["source"]][(record["version"], record["generation"])].append(record)
    live = []
    for by_group in groups.values():
        ordered = sorted((_one_cut(group) for group in by_group.values()),
                         key=lambda group: max(r["committed_at"] for r in group))
        complete = [i for i, group in enumerate(ordered) if _complete(group)]
        current = complete[-1] if complete else len(ordered) - 1
        for i in range(current, len(ordered)):
            live += [{**r, "current": i == current} for r in ordered[i]]
    live.sort(key=lambda r: (r["source"], r["version"], r["generation"], r["start_frame"]))
    return pa.Table.from_pylist(live, schema=SNAPSHOT_SCHEMA)


def _one_cut(group: list[dict]) -> list[dict]:
    """Keep the records of the newest frames_per_segment (a video re-cut with --force must not overlap)."""
    latest = max(group, key=lambda r: r["committed_at"])["frames_per_segment"]
    return [r for r in group if r["frames_per_segment"] == latest]


def _complete(group: list[dict]) -> bool:
    first = group[0]
    if first["source_kind"] != "video" or first["video_frames"] == 0:
        return True
    return sum(r["end_frame"] - r["start_frame"] for r in group) >= (first["video_frames"] or 0)


# --- what a run still has to do ------------------------------------------------------------


@dataclass(frozen=True)
class Todo:
    """What to do with a listed input. action: "new" (everything), "done" (nothing) or "partial"
    (a video: plan it with ``frames_per_segment`` and skip the segments starting at ``done_starts``)."""

    action: str
    frames_per_segment: int | None = None
    done_starts: frozenset[int] = frozenset()


NEW = Todo("new")
DONE = Todo("done")


@dataclass(frozen=True)
class DoneIndex:
    """Per input URI, the (version, Todo) of the run's generation; picklable, for the listing tasks.

    An input listed with another version than recorded is new. Inputs whose every
    frame failed are new again (errors such as a 403 or an outage may be transient).
    """

    generation: str
    entries: dict[str, tuple[str, Todo]]

    def todo(self, uri: str, version: str) -> Todo:
        entry = self.entries.get(uri)
        if entry is None or entry[0] != version:
            return NEW
        return entry[1]

    def __len__(self) -> int:
        return len(self.entries)


def done_index(live: pa.Table, generation: str) -> DoneIndex:
    """The DoneIndex of ``generation`` from resolved live records (:func:`resolve`)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in live.filter(pa.compute.equal(live["generation"], generation)).to_pylist():
        groups[(record["source"], record["version"])].append(record)
    entries = {}
    for (source, version), group in groups.items():
        entries[source] = (version, _todo(group))
    return DoneIndex(generation, entries)


def _todo(group: list[dict]) -> Todo:
    def ok(r):
        return r["frames_failed"] < r["frames"]

    first = group[0]
    if first["source_kind"] != "video":
        return DONE if all(ok(r) for r in group) else NEW
    if first["video_frames"] == 0:  # the video could not be planned: try again
        return NEW
    done_starts = frozenset(r["start_frame"] for r in group if ok(r))
    if _complete(group) and len(done_starts) == len(group):
        return DONE
    return Todo("partial", first["frames_per_segment"], done_starts)


# --- the end of a run: snapshot and garbage collection -------------------------------------


def finalize(output: str, s3: S3Config, compression: str = "zstd") -> tuple[pa.Table, dict]:
    """Fold all commit files into the snapshot, then tidy the tables so that they hold the live rows only.

    After the snapshot is published: files that hold rows of records no longer
    live as well as live ones (an image regrouped when annotated again) are
    rewritten without the former; files no live record names are deleted, and so
    are the folded commit files. Plain readers of the tables then see what the
    manifest says. Only one run may write an output at a time (files of a
    concurrent run would look unreferenced). Safe to interrupt anywhere: each
    file is replaced atomically, and records found twice resolve to one.
    Returns the live records (:func:`resolve`) and counts for the summary.
    """
    loaded = load(output, s3)
    live = resolve(loaded.records)
    sink = pa.BufferOutputStream()
    pq.write_table(live, sink, compression="zstd")
    write_bytes(parse(output).join(SNAPSHOT).uri, sink.getvalue(), s3)

    filesystem, root = output_filesystem(parse(output), s3)
    live_keys = pa.compute.unique(row_keys(live))
    referenced = {path for column in ("people_file", "frames_file") for path in live[column].to_pylist()}
    dropped = loaded.records.filter(pa.compute.invert(pa.compute.is_in(row_keys(loaded.records), value_set=live_keys)))
    stale_files = {path for column in ("people_file", "frames_file") for path in dropped[column].to_pylist()
                   if path in referenced}
    for path in sorted(stale_files):
        _keep_rows(filesystem, posixpath.join(root, path), live_keys, compression, s3)
    referenced = {posixpath.join(root, path) for path in referenced}
    garbage = []
    for table in TABLES:
        for path in _list_files(filesystem, posixpath.join(root, table), s3, include_hidden=True):
            name = posixpath.basename(path)
            temporary = name.startswith(".") and name.endswith(".tmp")  # a local write killed half-way
            if path not in referenced and (temporary or (name.startswith("part-") and name.endswith(".parquet"))):
                garbage.append(path)
    _delete(filesystem, garbage + loaded.commit_files, s3)
    current = live.filter(live["current"])
    return live, {"inputs_current": len(set(current["source"].to_pylist())), "records": current.num_rows,
                  "files_deleted": len(garbage), "files_rewritten": len(stale_files)}


ROW_KEY = ("source", "shard_id", "run_id")


def row_keys(table: pa.Table) -> pa.ChunkedArray:
    """Per row, its (source, shard_id, run_id) joined into one string: what ties a table row to its record."""
    return pa.compute.binary_join_element_wise(*(table[name] for name in ROW_KEY), "\x00")


def _keep_rows(filesystem, path: str, keys: pa.Array, compression: str, s3: S3Config) -> None:
    """Rewrite a data file with only the rows whose :func:`row_keys` are in ``keys``, metadata kept."""
    table = call_with_retries(lambda: pq.read_table(path, filesystem=filesystem), what=f"GET {path}",
                              attempts=s3.max_attempts)
    mask = pa.compute.is_in(row_keys(table), value_set=keys)
    if pa.compute.all(mask).as_py():
        return
    data = parquet_bytes(table.filter(mask), compression, table.schema.metadata or {})
    write_bytes(path if isinstance(filesystem, pafs.LocalFileSystem) else f"s3://{path}", data, s3)


def complete_videos(live: pa.Table) -> list[str]:
    """Sources of the videos whose current records cover every frame (sorted)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    videos = live.filter(pa.compute.and_(live["current"], pa.compute.equal(live["source_kind"], "video")))
    for record in videos.to_pylist():
        groups[record["source"]].append(record)
    return sorted(source for source, group in groups.items() if group[0]["video_frames"] and _complete(group))


def _list_files(filesystem, folder: str, s3: S3Config, include_hidden: bool = False) -> list[str]:
    def listing():
        if filesystem.get_file_info(folder).type != pafs.FileType.Directory:
            return []
        return filesystem.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))

    infos = call_with_retries(listing, what=f"LIST {folder}", attempts=s3.max_attempts)
    return sorted(i.path for i in infos
                  if i.type == pafs.FileType.File and (include_hidden or not posixpath.basename(i.path).startswith(".")))



def _delete(filesystem, paths: list[str], s3: S3Config) -> None:
    if not isinstance(filesystem, pafs.LocalFileSystem):
        delete_uris([f"s3://{path}" for path in paths], s3)
        return
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    _remove_empty_dirs({posixpath.dirname(p) for p in paths})


def _remove_empty_dirs(folders: set[str]) -> None:
    for folder in sorted(folders, key=len, reverse=True):
        try:
            os.rmdir(folder)
        except OSError:
            pass
