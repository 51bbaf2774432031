"""Track ids in the people table, filled in once a video is complete.

Segments of a video are annotated in parallel and in any order, while tracking
(:mod:`openpose_ray.tracking`) needs the frames in order. So segment files are
written with ``track_id`` NULL, and at the end of a run, for every video whose
frames are all committed (:func:`.manifest.complete_videos`), one task reads
the video's current people rows, tracks the whole video in one pass, and
rewrites each of its people files with the ids: the same rows and columns,
``track_id`` set, each file replaced atomically. Tracking a whole video at
once is why a video cut into 37-frame segments gets exactly the ids it gets in
one segment.

What a reader sees: NULL ids for a video still partly done, or done by a run
that has not yet finished (or was killed before this step: the next run does
it); ids once the run that completed the video has ended. Re-annotating a
segment (a new version of the video, ``--force``) gives the whole video new
ids consistent with the new rows.

Which videos are done is kept in ``_manifest/tracks.parquet``: per video, a
key of its current records and of the ``tracking`` settings. A video whose
key is unchanged is not read again; changing a tracking setting re-tracks
every video on the next run without annotating anything. Killed half-way, the
step is simply done again (a file rewritten twice gets the same ids).

A video's files are read with the skeleton their schema metadata names, not the
running job's model's: a video whose current rows are still those of an older
generation (a model change not yet complete) is tracked as it was annotated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..config import TrackingConfig
from ..jobconfig import JobConfig
from ..retry import call_with_retries
from ..storage import parse
from ..tracking import track_rows
from .manifest import MANIFEST_DIR, complete_videos, row_keys
from ..person import keypoints_bbox
from .people_table import bbox_struct, people_schema, read_keypoints, table_skeleton
from .writer import output_filesystem, parquet_bytes, write_bytes

log = logging.getLogger(__name__)

TRACKS_STATE = f"{MANIFEST_DIR}/tracks.parquet"
_STATE_SCHEMA = pa.schema([pa.field("source", pa.string(), nullable=False),
                           pa.field("key", pa.string(), nullable=False)])
_MAX_IN_FLIGHT = 64  # tracking tasks submitted at once
_IN_DRIVER = 8  # up to this many videos are tracked by the driver itself (measured: 4 s in tasks for 2 videos)


def tracks_key(records: list[dict], tracking: TrackingConfig) -> str:
    """16 hex digits naming a video's current records (shard, run, frames) and the tracking settings."""
    shards = sorted((r["shard_id"], r["run_id"], r["start_frame"], r["people_file"]) for r in records)
    text = json.dumps({"shards": shards, "tracking": dataclasses.asdict(tracking)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pending(live: pa.Table, config: JobConfig, done: dict[str, str]) -> dict[str, tuple[list[dict], str]]:
    """{video source: (its current records, its tracks key)} for the complete videos not tracked as they are now.

    done: {video source: tracks key} of the videos tracked so far (the state file)."""
    videos = set(complete_videos(live))
    current = live.filter(live["current"]).to_pylist()
    records: dict[str, list[dict]] = {}
    for record in current:
        if record["source"] in videos:
            records.setdefault(record["source"], []).append(record)
    todo = {}
    for source, group in sorted(records.items()):
        key = tracks_key(group, config.tracking)
        if done.get(source) != key:
            todo[source] = (group, key)
    return todo


def track_video(source: str, records: list[dict], config: JobConfig) -> int:
    """Give every people row of one complete video its track id, rewriting the video's people files.

    records: the video's current manifest records (of one generation, so one skeleton). Returns the
    number of tracks.
    """
    filesystem, root = output_filesystem(parse(config.output), config.s3)
    files = sorted({r["people_file"] for r in records})
    tables = {path: _with_current_columns(_read(filesystem, posixpath.join(root, path), config)) for path in files}
    keys = pa.array(sorted({"\x00".join((source, r["shard_id"], r["run_id"])) for r in records}))
    mine = {path: pc.is_in(row_keys(table), value_set=keys) for path, table in tables.items()}
    rows = pa.concat_tables([table.filter(mine[path]) for path, table in tables.items()])
    skeleton = table_skeleton(rows)
    ids = track_rows(rows["frame_index"].to_numpy(), rows["person_index"].to_numpy(),
                     read_keypoints(rows, skeleton), skeleton, config.tracking)
    start = 0
    for path, table in tables.items():
        mask = mine[path].to_numpy(zero_copy_only=False)
        column = table["track_id"].to_numpy(zero_copy_only=False).astype(object)  # other sources' rows: as they were
        column[mask] = ids[start : start + int(mask.sum())].tolist()
        start += int(mask.sum())
        position = table.schema.get_field_index("track_id")
        updated = table.set_column(position, table.schema.field("track_id"), pa.array(column, pa.int64()))
        data = parquet_bytes(updated, config.write.compression, table.schema.metadata or {})
        target = posixpath.join(root, path)
        write_bytes(target if isinstance(filesystem, pafs.LocalFileSystem) else f"s3://{target}", data, config.s3)
    return int(ids.max()) + 1 if len(ids) else 0


def track_pending_videos(live: pa.Table, config: JobConfig) -> dict:
    """Track every complete video whose tracks are missing or stale (in Ray tasks, or here for a few);
    update the state file.

    Returns counts for the summary: videos tracked and tracks found.
    """
    import ray

    if not config.tracking.enabled:
        return {"enabled": False, "videos_tracked": 0, "tracks": 0}
    done = _read_state(config)
    todo = pending(live, config, done)
    tracks, finished = 0, {}
    if len(todo) <= _IN_DRIVER:  # a task's worker start costs more than tracking a few videos here
        for source, (records, key) in todo.items():
            tracks += track_video(source, records, config)
            finished[source] = key
    else:
        remote, in_flight = ray.remote(num_cpus=0.5, max_retries=3)(track_video), {}
        for source, (records, key) in todo.items():
            if len(in_flight) >= _MAX_IN_FLIGHT:
                tracks += _collect_one(in_flight, finished)
            in_flight[remote.remote(source, records, config)] = (source, key)
        while in_flight:
            tracks += _collect_one(in_flight, finished)
    current_videos = set(complete_videos(live))
    state = {source: key for source, key in done.items() if source in current_videos} | finished
    if todo or state.keys() != current_videos:
        _write_state(config, state)
    if todo:
        log.info("tracks: %d video(s) tracked, %d track(s)", len(todo), tracks)
    return {"enabled": True, "videos_tracked": len(todo), "tracks": tracks}


def _collect_one(in_flight: dict, finished: dict) -> int:
    import ray

    [ready], _ = ray.wait(list(in_flight), num_returns=1)
    source, key = in_flight.pop(ready)
    count = ray.get(ready)
    finished[source] = key
    return count


def _with_current_columns(table: pa.Table) -> pa.Table:
    """A people file written before track_id and bbox existed, with both (bbox from its keypoints), so
    that the rewritten file has today's schema."""
    skeleton = table_skeleton(table)
    if "track_id" not in table.column_names:
        position = table.column_names.index("person_index") + 1
        table = table.add_column(position, people_schema(skeleton).field("track_id"), pa.nulls(table.num_rows, pa.int64()))
    if "bbox" not in table.column_names:
        position = table.column_names.index("num_parts") + 1
        boxes = bbox_struct(keypoints_bbox(read_keypoints(table, skeleton)))
        table = table.add_column(position, people_schema(skeleton).field("bbox"), boxes)
    return table


def _read(filesystem, path: str, config: JobConfig) -> pa.Table:
    return call_with_retries(lambda: pq.read_table(path, filesystem=filesystem), what=f"GET {path}",
                             attempts=config.s3.max_attempts)


def _read_state(config: JobConfig) -> dict[str, str]:
    """{video source: tracks key} from the state file ({} before the first tracking)."""
    filesystem, root = output_filesystem(parse(config.output), config.s3)
    path = posixpath.join(root, TRACKS_STATE)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return {}
    table = _read(filesystem, path, config)
    return dict(zip(table["source"].to_pylist(), table["key"].to_pylist()))


def _write_state(config: JobConfig, state: dict[str, str]) -> None:
    names = sorted(state)
    table = pa.table({"source": names, "key": [state[n] for n in names]}, schema=_STATE_SCHEMA)
    write_bytes(parse(config.output).join(TRACKS_STATE).uri, parquet_bytes(table, "zstd", {}), config.s3)
