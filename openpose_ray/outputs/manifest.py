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

import hashlib
import logging
import os
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from openpose_ray.jobconfig import S3Config
from openpose_ray.retry import call_with_retries
from openpose_ray.storage import parse, redact

from .media import media_folder
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
    pa.field("frames_per_segment", pa.int64(), nullable=True),  # the cut used for a video, with segment_cut:
    # "key_frames" or "frames" (sources.planning.segment_bounds); NULL in records of versions before
    # it existed (then: "frames") and for other inputs
    pa.field("segment_cut", pa.string(), nullable=True),
    pa.field("frames", pa.int64(), nullable=False),         # frames-table rows of this input in the shard
    pa.field("frames_failed", pa.int64(), nullable=False),  # of which status = 'error'
    # of which error_kind is one a later run tries again (sources.errors.RETRIED_KINDS); NULL in
    # records of versions before it existed (then: retried when every frame failed)
    pa.field("frames_to_retry", pa.int64(), nullable=True),
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


# The columns resolve and done_index read: what the driver loads before a run (a third of a
# record's bytes; the file names, hashes and ids are only needed when finalizing).
INDEX_COLUMNS = ("source", "version", "source_kind", "start_frame", "end_frame", "video_frames",
                 "frames_per_segment", "segment_cut", "frames", "frames_failed", "frames_to_retry", "generation",
                 "committed_at")


def load(output: str, s3: S3Config, columns: tuple[str, ...] | None = None) -> LoadedManifest:
    """Read the snapshot and every commit file under ``output`` (missing manifest: no records).

    columns: read only these (e.g. :data:`INDEX_COLUMNS`), None: all of RECORD_SCHEMA.
    Retried as a whole through storage outages (reading is idempotent).
    """
    return call_with_retries(lambda: _load(output, s3, columns), what=f"READ the manifest of {redact(output)}",
                             attempts=s3.max_attempts)


def _load(output: str, s3: S3Config, columns: tuple[str, ...] | None = None) -> LoadedManifest:
    schema = RECORD_SCHEMA if columns is None else pa.schema([RECORD_SCHEMA.field(name) for name in columns])
    filesystem, root = output_filesystem(parse(output), s3)
    tables = []
    snapshot = posixpath.join(root, SNAPSHOT)
    if filesystem.get_file_info(snapshot).type == pafs.FileType.File:
        tables.append(pq.read_table(snapshot, filesystem=filesystem, schema=SNAPSHOT_SCHEMA,
                                    columns=list(schema.names)))
    commit_files = _list_files(filesystem, posixpath.join(root, COMMITS_DIR), s3)
    if commit_files:
        dataset = pads.dataset(commit_files, schema=RECORD_SCHEMA, format="parquet", filesystem=filesystem)
        tables.append(dataset.to_table(columns=list(schema.names)))
    records = pa.concat_tables(tables) if tables else schema.empty_table()
    return LoadedManifest(records, commit_files)


def resolve(records: pa.Table) -> pa.Table:
    """The live records with ``current`` set (see the module docstring), sorted.

    records: RECORD_SCHEMA's columns, or a subset holding at least :data:`INDEX_COLUMNS`;
    the result has the same columns and ``current`` (SNAPSHOT_SCHEMA's types).

    Columnar (numpy over Arrow columns, no Python object per record): a manifest
    of a million records resolves in seconds (benchmarks/bench_manifest.py).
    Equal ``committed_at`` times are broken by the record's position in ``records``
    (the later one wins), so the result never depends on hash order.
    """
    return _live_table(records, *live_positions(records))


def _live_table(records: pa.Table, positions: np.ndarray, current: np.ndarray) -> pa.Table:
    """``records`` at ``positions`` with their ``current`` column (SNAPSHOT_SCHEMA's types)."""
    schema = pa.schema([SNAPSHOT_SCHEMA.field(name) for name in (*records.column_names, "current")])
    table = records.take(pa.array(positions))
    return table.append_column(schema.field("current"), pa.array(current, pa.bool_())).cast(schema)


def live_positions(records: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The rules of :func:`resolve`: positions in ``records`` of the live records, in resolve's
    order, and whether each is current (two arrays of one length)."""
    if records.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    # Ranks in sort order double as group codes: the records come out sorted without a sort of the table.
    source, version, generation = (_ranks(records[name]) for name in ("source", "version", "generation"))
    start = _numpy(records["start_frame"])
    committed = _numpy(records["committed_at"].cast(pa.int64()))
    position = np.arange(records.num_rows)

    # 1. The newest record per (source, version, generation, start_frame): a re-run replaces.
    order = np.lexsort((position, committed, start, generation, version, source))
    kept = order[np.r_[_changes(source[order], version[order], generation[order], start[order]), True]]
    del order
    # kept is sorted by (source, version, generation, start): each group is a contiguous run.
    group = np.cumsum(np.r_[True, _changes(source[kept], version[kept], generation[kept])]) - 1

    # 2. One cut per group: the records whose frames_per_segment and segment_cut are the group's newest record's.
    key_frame_cut = _numpy(pa.compute.equal(records["segment_cut"], "key_frames").fill_null(False))
    cut = (2 * _numpy(records["frames_per_segment"].fill_null(-1)) + key_frame_cut)[kept]
    newest = np.lexsort((position[kept], committed[kept], group))
    newest = newest[np.r_[_changes(group[newest]), True]]  # the last of each group, in group order
    kept_in_cut = cut == cut[newest][group]
    kept, group = kept[kept_in_cut], group[kept_in_cut]

    # 3. Per group: when it was last committed, and whether it covers its input.
    starts = np.flatnonzero(np.r_[True, _changes(group)])
    group_time = np.maximum.reduceat(committed[kept], starts)
    first = kept[starts]
    video_frames = _numpy(records["video_frames"].fill_null(0))[first]
    covered = np.add.reduceat((_numpy(records["end_frame"]) - start)[kept], starts)
    is_video = _numpy(pa.compute.equal(records["source_kind"], "video"))[first]
    complete = ~is_video | (video_frames == 0) | (covered >= video_frames)

    # 4. Per source: the current group is the newest complete one (else the newest); older ones go.
    groups = len(first)
    group_source = source[first]
    by_source = np.lexsort((np.arange(groups), group_time, group_source))
    sorted_source = group_source[by_source]
    source_starts = np.flatnonzero(np.r_[True, _changes(sorted_source)])
    per_source = np.diff(np.r_[source_starts, groups])
    rank = np.arange(groups) - np.repeat(source_starts, per_source)  # 0 = oldest group of its source
    last_complete = np.maximum.reduceat(np.where(complete[by_source], rank, -1), source_starts)
    chosen = np.where(last_complete >= 0, last_complete, per_source - 1)
    group_rank, group_chosen = np.empty(groups, np.int64), np.empty(groups, np.int64)
    group_rank[by_source], group_chosen[by_source] = rank, np.repeat(chosen, per_source)

    live = group_rank[group] >= group_chosen[group]
    current = group_rank[group][live] == group_chosen[group][live]
    return kept[live], current


def _ranks(column: pa.ChunkedArray) -> np.ndarray:
    """Per value, its rank among the distinct values in ascending order (equal values, equal ranks)."""
    return _numpy(pa.compute.rank(column, sort_keys="ascending", tiebreaker="dense"))


def _numpy(column) -> np.ndarray:
    return column.to_numpy() if isinstance(column, pa.ChunkedArray) else column.to_numpy(zero_copy_only=False)


def _changes(*keys: np.ndarray) -> np.ndarray:
    """bool[n - 1]: where row i + 1 differs from row i in any of ``keys`` (sorted rows: where runs of
    equal keys meet). ``np.r_[True, c]`` marks the first row of each run, ``np.r_[c, True]`` the last."""
    return np.logical_or.reduce([key[1:] != key[:-1] for key in keys])


def _complete(group: list[dict]) -> bool:
    first = group[0]
    if first["source_kind"] != "video" or first["video_frames"] == 0:
        return True
    return sum(r["end_frame"] - r["start_frame"] for r in group) >= (first["video_frames"] or 0)


# --- what a run still has to do ------------------------------------------------------------


@dataclass(frozen=True)
class Todo:
    """What to do with a listed input. action: "new" (everything), "done" (nothing) or "partial"
    (a video: plan it with ``frames_per_segment`` and ``segment_cut`` and skip the segments
    starting at ``done_starts``)."""

    action: str
    frames_per_segment: int | None = None
    done_starts: frozenset[int] = frozenset()
    segment_cut: str | None = None


NEW = Todo("new")
DONE = Todo("done")


@dataclass(frozen=True)
class DoneIndex:
    """What the run's generation has done, for the listing tasks; picklable and compact.

    done_keys: sorted :func:`input_key` of every (input, version) with nothing
    left to do (8 bytes an input: a million inputs pickle to 8 MB); partial:
    per video URI, the (version, Todo) of a video partly done. An input listed
    with another version than recorded is new. A record is finished unless some
    of its frames failed for a reason a later run may not meet (``frames_to_retry``:
    an outage, a 403, an object gone; see sources.errors.RETRIED_KINDS): such an
    image, tar or video segment is done again, whole. Frames failed for a reason
    in the input itself (corrupt, unsupported, too large) are not tried again.
    Records written before ``frames_to_retry`` existed count as finished unless
    every frame failed.
    """

    generation: str
    done_keys: np.ndarray
    partial: dict[str, tuple[str, Todo]]

    def todo(self, uri: str, version: str) -> Todo:
        entry = self.partial.get(uri)
        if entry is not None and entry[0] == version:
            return entry[1]
        key = input_key(uri, version)
        at = int(np.searchsorted(self.done_keys, key))
        return DONE if at < len(self.done_keys) and self.done_keys[at] == key else NEW

    def __len__(self) -> int:
        return len(self.done_keys) + len(self.partial)


def input_key(uri: str, version: str) -> np.uint64:
    """A 64-bit hash of (uri, version). Two inputs of a million share one with odds of ~3e-8
    per run (and a clash makes a new input look done only when that input is listed)."""
    digest = hashlib.blake2b(f"{uri}\x00{version}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def done_index(live: pa.Table, generation: str) -> DoneIndex:
    """The DoneIndex of ``generation`` from resolved live records (:func:`resolve`).

    Images and tars (one record each) are indexed column-wise; videos, a few
    records each, one by one.
    """
    columns = ["source", "version", "source_kind", "start_frame", "end_frame", "video_frames", "frames_per_segment",
               "segment_cut", "committed_at"] + (["frames_to_retry"] if "frames_to_retry" in live.column_names else [])
    mine = pa.compute.equal(live["generation"], generation)
    live = live.select(columns).append_column("finished", _finished(live)).filter(mine)
    is_video = pa.compute.equal(live["source_kind"], "video")
    others = live.select(["source", "version", "finished"]).filter(pa.compute.invert(is_video))
    inputs = others.group_by(["source", "version"], use_threads=False).aggregate([("finished", "all")])
    done = inputs.filter(inputs["finished_all"])
    del others, inputs
    done_keys = np.empty(done.num_rows, dtype=np.uint64)
    at = 0
    for batch in done.to_batches(max_chunksize=65536):  # Python strings for a batch at a time
        keys = [input_key(uri, version) for uri, version in zip(batch["source"].to_pylist(), batch["version"].to_pylist())]
        done_keys[at:at + len(keys)] = keys
        at += len(keys)
    done_keys.sort()

    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in live.filter(is_video).to_pylist():
        groups[(record["source"], record["version"])].append(record)
    video_keys, partial = [], {}
    for (source, version), group in groups.items():
        todo = _video_todo(group)
        if todo is DONE:
            video_keys.append(input_key(source, version))
        elif todo.action == "partial":
            newest = max(r["committed_at"] for r in group)
            if source not in partial or newest > partial[source][2]:
                partial[source] = (version, todo, newest)
    if video_keys:
        done_keys = np.sort(np.concatenate([done_keys, np.array(video_keys, dtype=np.uint64)]))
    return DoneIndex(generation, done_keys, {source: (version, todo) for source, (version, todo, _) in partial.items()})


def _finished(records: pa.Table) -> pa.ChunkedArray:
    """Per record, whether its input (segment) needs no more work (see :class:`DoneIndex`)."""
    compute = pa.compute
    old_rule = compute.less(records["frames_failed"], records["frames"])
    if "frames_to_retry" not in records.column_names:
        return old_rule
    retry = records["frames_to_retry"]
    return compute.if_else(compute.is_null(retry), old_rule, compute.equal(retry.fill_null(0), 0))


def _video_todo(group: list[dict]) -> Todo:
    first = group[0]
    if first["video_frames"] == 0:  # the video could not be planned: done only if it failed for good
        return DONE if first.get("frames_to_retry") == 0 else NEW
    done_starts = frozenset(r["start_frame"] for r in group if r["finished"])
    if _complete(group) and len(done_starts) == len(group):
        return DONE
    return Todo("partial", first["frames_per_segment"], done_starts, first["segment_cut"] or "frames")


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
    records, commit_files = loaded.records, loaded.commit_files
    del loaded  # no more than the records and the live ones at once: a million records are 330 MB each
    positions, current = live_positions(records)
    live = _live_table(records, positions, current)
    dropped = records.select(["source", "shard_id", "run_id", "people_file", "frames_file"]).take(
        pa.array(np.setdiff1d(np.arange(records.num_rows), positions, assume_unique=True)))
    del records
    sink = pa.BufferOutputStream()
    pq.write_table(live, sink, compression="zstd")
    write_bytes(parse(output).join(SNAPSHOT).uri, sink.getvalue(), s3)
    del sink

    filesystem, root = output_filesystem(parse(output), s3)
    referenced = pa.compute.unique(pa.chunked_array(live["people_file"].chunks + live["frames_file"].chunks, pa.string()))
    stale_files: list[str] = []
    if dropped.num_rows:
        live_keys = pa.compute.unique(row_keys(live))
        # A record found twice (a commit folded before, its file not yet deleted) is not dropped.
        dropped = dropped.filter(pa.compute.invert(pa.compute.is_in(row_keys(dropped), value_set=live_keys)))
        files = pa.chunked_array(dropped["people_file"].chunks + dropped["frames_file"].chunks, pa.string())
        stale_files = sorted(set(files.filter(pa.compute.is_in(files, value_set=referenced)).to_pylist()))
        for path in stale_files:
            _keep_rows(filesystem, posixpath.join(root, path), live_keys, compression, s3)
    referenced = {posixpath.join(root, path) for path in referenced.to_pylist()}
    garbage = []
    for table in TABLES:
        for path in _list_files(filesystem, posixpath.join(root, table), s3, include_hidden=True):
            name = posixpath.basename(path)
            temporary = name.startswith(".") and name.endswith(".tmp")  # a local write killed half-way
            if path not in referenced and (temporary or (name.startswith("part-") and name.endswith(".parquet"))):
                garbage.append(path)
    if isinstance(filesystem, pafs.LocalFileSystem):  # pose shards half-written by a killed local run (S3: one PUT)
        garbage += [path for path in _list_files(filesystem, posixpath.join(root, POSE_SHARDS), s3, include_hidden=True)
                    if posixpath.basename(path).startswith(".") and path.endswith(".tmp")]
    _delete(filesystem, garbage + commit_files, s3)
    current = live.filter(live["current"])
    return live, {"inputs_current": len(pa.compute.unique(current["source"])), "records": current.num_rows,
                  "files_deleted": len(garbage), "files_rewritten": len(stale_files)}


ROW_KEY = ("source", "shard_id", "run_id")
POSE_SHARDS = media_folder("webdataset")  # outputs.pose_shards


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
