"""The manifest's resolution rules on hand-made records: what is current, what is done, what is left."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest
import pyarrow.parquet as pq

from openpose_ray.jobconfig import S3Config
from openpose_ray.outputs.manifest import (
    RECORD_SCHEMA, SNAPSHOT_SCHEMA, complete_videos, done_index, finalize, load, resolve, write_commit,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def record(source="/in/a.jpg", *, kind="image", version="v1", generation="g1", start=0, end=1, video_frames=None,
           fps=None, frames=1, failed=0, minute=0, run="r1", shard="s1"):
    return {"source": source, "version": version, "size": 10, "source_kind": kind, "start_frame": start,
            "end_frame": end, "video_frames": video_frames, "frames_per_segment": fps, "frames": frames,
            "frames_failed": failed, "people": 2, "shard_id": shard, "run_id": run, "generation": generation,
            "model": "m", "weights_sha256": "w", "config_fingerprint": "c", "people_file": f"people/part-{shard}-{run}.parquet",
            "frames_file": f"frames/part-{shard}-{run}.parquet", "committed_at": T0 + timedelta(minutes=minute)}


def segment(start, end, **kw):
    return record("/in/v.mp4", kind="video", start=start, end=end, video_frames=100, fps=40, frames=end - start, **kw)


def live_of(*records):
    return resolve(pa.Table.from_pylist(list(records), schema=RECORD_SCHEMA))


def current(live):
    return sorted((r["source"], r["start_frame"], r["run_id"]) for r in live.to_pylist() if r["current"])


def test_a_rerun_of_the_same_input_replaces_the_older_record():
    live = live_of(record(run="r1", minute=0), record(run="r2", shard="s2", minute=5))
    assert current(live) == [("/in/a.jpg", 0, "r2")]
    assert live.num_rows == 1


def test_a_new_generation_becomes_current_when_complete_and_the_old_one_is_dropped():
    old = [segment(0, 40, run="r1"), segment(40, 80, run="r1"), segment(80, 100, run="r1")]
    partial_new = [segment(0, 40, generation="g2", run="r2", minute=5)]
    live = live_of(*old, *partial_new)
    # The new generation covers 40 of 100 frames: the old one stays current, the new one is kept to resume.
    assert current(live) == [("/in/v.mp4", 0, "r1"), ("/in/v.mp4", 40, "r1"), ("/in/v.mp4", 80, "r1")]
    assert live.num_rows == 4
    done = done_index(live, "g2")
    assert done.todo("/in/v.mp4", "v1").action == "partial"
    assert done.todo("/in/v.mp4", "v1").done_starts == {0}
    assert done.todo("/in/v.mp4", "v1").frames_per_segment == 40
    rest = [segment(40, 80, generation="g2", run="r3", minute=9), segment(80, 100, generation="g2", run="r3", minute=9)]
    live = live_of(*old, *partial_new, *rest)
    assert current(live) == [("/in/v.mp4", 0, "r2"), ("/in/v.mp4", 40, "r3"), ("/in/v.mp4", 80, "r3")]
    assert live.num_rows == 3  # the old generation is gone
    assert done_index(live, "g2").todo("/in/v.mp4", "v1").action == "done"
    assert done_index(live, "g1").todo("/in/v.mp4", "v1").action == "new"
    assert complete_videos(live) == ["/in/v.mp4"]


def test_a_changed_input_version_is_new_and_replaces_the_old_rows_once_done():
    live = live_of(record(version="v1"), record(version="v2", run="r2", shard="s2", minute=3))
    assert current(live) == [("/in/a.jpg", 0, "r2")]
    assert done_index(live, "g1").todo("/in/a.jpg", "v2").action == "done"
    assert done_index(live, "g1").todo("/in/a.jpg", "v3").action == "new"


def test_inputs_that_failed_entirely_are_tried_again_partial_failures_are_not():
    live = live_of(record("/in/bad.jpg", failed=1), record("/in/ok.jpg"),
                   segment(0, 40, failed=40), segment(40, 80, failed=3), segment(80, 100))
    done = done_index(live, "g1")
    assert done.todo("/in/bad.jpg", "v1").action == "new"
    assert done.todo("/in/ok.jpg", "v1").action == "done"
    video = done.todo("/in/v.mp4", "v1")
    assert (video.action, video.done_starts) == ("partial", {40, 80})


def test_frames_failed_for_a_passing_reason_are_tried_again_those_failed_for_good_are_not():
    """frames_to_retry: failures such as an outage or a 403 (sources.errors.RETRIED_KINDS)."""
    live = live_of({**record("/in/corrupt.jpg", failed=1), "frames_to_retry": 0},
                   {**record("/in/denied.jpg", failed=1), "frames_to_retry": 1},
                   {**segment(0, 40, failed=2), "frames_to_retry": 0},     # two corrupt frames: finished
                   {**segment(40, 80, failed=7), "frames_to_retry": 5},    # storage outage mid-stream: again
                   {**segment(80, 100), "frames_to_retry": 0},
                   {**record("/in/w.mp4", kind="video", start=0, end=0, video_frames=0, failed=1), "frames_to_retry": 0},
                   {**record("/in/x.mp4", kind="video", start=0, end=0, video_frames=0, failed=1), "frames_to_retry": 1})
    done = done_index(live, "g1")
    assert done.todo("/in/corrupt.jpg", "v1").action == "done"
    assert done.todo("/in/denied.jpg", "v1").action == "new"
    video = done.todo("/in/v.mp4", "v1")
    assert (video.action, video.done_starts) == ("partial", {0, 80})
    assert done.todo("/in/w.mp4", "v1").action == "done"  # e.g. no video stream: not planned again and again
    assert done.todo("/in/x.mp4", "v1").action == "new"   # e.g. the store was down while planning


def test_a_video_that_could_not_be_planned_is_complete_but_tried_again():
    failed = record("/in/v.mp4", kind="video", start=0, end=0, video_frames=0, failed=1)
    live = live_of(failed)
    assert current(live) == [("/in/v.mp4", 0, "r1")]
    assert done_index(live, "g1").todo("/in/v.mp4", "v1").action == "new"
    assert complete_videos(live) == []
    # Planned next time: its segments (another cut) replace the error record.
    live = live_of(failed, segment(0, 40, run="r2", minute=1), segment(40, 80, run="r2", minute=1),
                   segment(80, 100, run="r2", minute=1))
    assert current(live) == [("/in/v.mp4", 0, "r2"), ("/in/v.mp4", 40, "r2"), ("/in/v.mp4", 80, "r2")]


def test_a_video_cut_again_differently_keeps_only_the_newest_cut():
    old = [segment(0, 40), segment(40, 80), segment(80, 100)]
    recut = [{**segment(0, 50, run="r2", minute=2), "frames_per_segment": 50},
             {**segment(50, 100, run="r2", minute=2), "frames_per_segment": 50}]
    assert current(live_of(*old, *recut)) == [("/in/v.mp4", 0, "r2"), ("/in/v.mp4", 50, "r2")]


def test_segments_cut_at_key_frames_are_another_cut_than_every_n_frames_and_resume_as_they_were_cut():
    """Records before segment_cut existed (NULL) were cut every frames_per_segment frames: a video
    they partly cover is resumed with that cut; segments of the same frames_per_segment cut at key
    frames are another cut (their starts differ), and only the newest cut stays."""
    old = [segment(0, 40), segment(40, 80)]  # 80 of 100 frames, no segment_cut
    todo = done_index(live_of(*old), "g1").todo("/in/v.mp4", "v1")
    assert (todo.action, todo.frames_per_segment, todo.segment_cut, todo.done_starts) == ("partial", 40, "frames", {0, 40})
    at_keys = [{**segment(0, 50, run="r2", minute=2), "segment_cut": "key_frames"}]
    live = live_of(*old, *at_keys)
    assert current(live) == [("/in/v.mp4", 0, "r2")]
    todo = done_index(live, "g1").todo("/in/v.mp4", "v1")
    assert (todo.frames_per_segment, todo.segment_cut, todo.done_starts) == (40, "key_frames", {0})
    rest = [{**segment(50, 100, run="r3", minute=3), "segment_cut": "key_frames"}]
    assert current(live_of(*old, *at_keys, *rest)) == [("/in/v.mp4", 0, "r2"), ("/in/v.mp4", 50, "r3")]
    assert live_of(*old, *at_keys, *rest).num_rows == 2


def test_a_manifest_written_before_segment_cut_existed_loads_and_resumes_its_cut(tmp_path):
    """Snapshot and commit files without the segment_cut column (earlier versions) load with NULLs; a video
    they partly cover resumes cut every frames_per_segment frames, and the tables' reader takes the snapshot."""
    from openpose_ray.outputs.manifest import INDEX_COLUMNS, SNAPSHOT, commit_uri
    from openpose_ray.tables import current_records

    old_records = pa.schema([f for f in RECORD_SCHEMA if f.name != "segment_cut"])
    old_snapshot = old_records.append(pa.field("current", pa.bool_(), nullable=False))
    (tmp_path / SNAPSHOT).parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{**segment(0, 40), "current": True}], schema=old_snapshot), tmp_path / SNAPSHOT)
    commit = Path(commit_uri(str(tmp_path), "r2", "s2"))
    commit.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([segment(40, 80, run="r2", shard="s2", minute=1)], schema=old_records), commit)
    for columns in (INDEX_COLUMNS, None):
        records = load(str(tmp_path), S3Config(), columns=columns).records
        assert records["segment_cut"].null_count == records.num_rows == 2
    todo = done_index(resolve(records), "g1").todo("/in/v.mp4", "v1")
    assert (todo.action, todo.frames_per_segment, todo.segment_cut, todo.done_starts) == ("partial", 40, "frames", {0, 40})
    assert current_records(str(tmp_path), S3Config())["segment_cut"].to_pylist() == [None]


def test_finalize_folds_commits_into_the_snapshot_and_deletes_unreferenced_files(tmp_path):
    out = str(tmp_path)
    s3 = S3Config()
    for name in ("people/part-s1-r1.parquet", "frames/part-s1-r1.parquet", "people/part-s9-r0.parquet",
                 "frames/.part-s9-r0.parquet.x1.tmp", "people/README.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    write_commit(out, s3, "r1", "s1", [{k: v for k, v in record().items() if k != "committed_at"}])
    assert load(out, s3).commit_files
    live, counts = finalize(out, s3)
    assert counts == {"inputs_current": 1, "records": 1, "files_deleted": 2, "files_rewritten": 0}
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "_manifest/inputs.parquet", "frames/part-s1-r1.parquet", "people/README.txt", "people/part-s1-r1.parquet"]
    snapshot = pq.read_table(tmp_path / "_manifest/inputs.parquet")
    assert snapshot["current"].to_pylist() == [True]
    # Folding again (e.g. a run killed after the snapshot, before deleting commits) changes nothing.
    write_commit(out, s3, "r1", "s1", [{k: v for k, v in record().items() if k != "committed_at"}])
    again, _ = finalize(out, s3)
    assert again.drop_columns(["committed_at"]).equals(live.drop_columns(["committed_at"]))


# --- the columnar resolve and index against the rules written out one record at a time ------------


def reference_resolve(records: list[dict]) -> list[dict]:
    """The module docstring's rules, record by record (the former implementation)."""
    newest: dict[tuple, dict] = {}
    for r in records:
        key = (r["source"], r["version"], r["generation"], r["start_frame"])
        if key not in newest or r["committed_at"] >= newest[key]["committed_at"]:
            newest[key] = r
    groups: dict[str, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in newest.values():
        groups[r["source"]][(r["version"], r["generation"])].append(r)
    live = []
    for by_group in groups.values():
        cuts = []
        for group in by_group.values():
            cut = lambda r: (r["frames_per_segment"], r.get("segment_cut") or "frames")  # noqa: E731
            latest = cut(max(group, key=lambda r: r["committed_at"]))
            cuts.append([r for r in group if cut(r) == latest])
        cuts.sort(key=lambda group: max(r["committed_at"] for r in group))
        complete = [i for i, group in enumerate(cuts) if reference_complete(group)]
        chosen = complete[-1] if complete else len(cuts) - 1
        for i in range(chosen, len(cuts)):
            live += [{**r, "current": i == chosen} for r in cuts[i]]
    return live


def reference_complete(group: list[dict]) -> bool:
    first = group[0]
    if first["source_kind"] != "video" or first["video_frames"] == 0:
        return True
    return sum(r["end_frame"] - r["start_frame"] for r in group) >= (first["video_frames"] or 0)


def reference_todo(group: list[dict]) -> tuple:
    ok = [r["frames_failed"] < r["frames"] if r.get("frames_to_retry") is None else r["frames_to_retry"] == 0
          for r in group]
    if group[0]["source_kind"] != "video":
        return ("done",) if all(ok) else ("new",)
    if group[0]["video_frames"] == 0:
        return ("done",) if group[0].get("frames_to_retry") == 0 else ("new",)
    starts = frozenset(r["start_frame"] for r, good in zip(group, ok) if good)
    if reference_complete(group) and len(starts) == len(group):
        return ("done",)
    return ("partial", group[0]["frames_per_segment"], group[0].get("segment_cut") or "frames", starts)


def random_records(rng: random.Random, count: int) -> list[dict]:
    """Records of a few images, tars and videos over several runs, versions, generations and cuts."""
    records = []
    for minute in rng.sample(range(10 * count), count):  # distinct commit times
        with_kinds = rng.random() < 0.5  # records since error kinds exist say how many failed frames to retry
        kind = rng.choice(["image", "tar", "video", "video"])
        source = f"/in/{kind}-{rng.randrange(4)}"
        version, generation, run = f"v{rng.randrange(2)}", f"g{rng.randrange(2)}", f"r{minute}"
        if kind != "video":
            failed = int(rng.random() < 0.3)
            records.append({**record(source, kind=kind, version=version, generation=generation, failed=failed,
                                     minute=minute, run=run, shard=f"s{minute}"),
                            "frames_to_retry": rng.randrange(failed + 1) if with_kinds else None})
            continue
        fps, segment_cut = rng.choice([20, 40]), rng.choice([None, "frames", "key_frames"])
        video_frames = 0 if (source, version) == ("/in/video-3", "v0") else 100  # this version cannot be planned
        start = 0 if video_frames == 0 else fps * rng.randrange(100 // fps + 1)
        end = min(start + fps, 100) if video_frames else 0
        if start >= 100:
            continue
        failed = rng.choice([0, 0, 1, max(end - start, 1)])
        records.append({**record(source, kind="video", version=version, generation=generation, start=start, end=end,
                                 video_frames=video_frames, fps=fps, frames=max(end - start, 1), failed=failed,
                                 minute=minute, run=run, shard=f"s{minute}"),
                        "frames_to_retry": rng.randrange(failed + 1) if with_kinds else None,
                        "segment_cut": segment_cut if video_frames else None})
    return records


@pytest.mark.parametrize("seed", range(60))
def test_columnar_resolve_and_index_follow_the_rules_record_by_record(seed):
    rng = random.Random(seed)
    records = random_records(rng, rng.randrange(1, 40))
    table = pa.Table.from_pylist(records, schema=RECORD_SCHEMA)
    if seed % 3 == 0:  # several chunks, as commit files make
        table = pa.concat_tables([table.slice(0, len(records) // 2), table.slice(len(records) // 2)])
    live = resolve(table)

    def key(r):
        return (r["source"], r["version"], r["generation"], r["start_frame"], r["run_id"], r["current"])

    expected = reference_resolve(records)
    assert [key(r) for r in live.to_pylist()] == sorted(key(r) for r in expected)
    assert live.schema == SNAPSHOT_SCHEMA.remove_metadata()
    for generation in ("g0", "g1"):
        index = done_index(live, generation)
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in expected:
            if r["generation"] == generation:
                groups[(r["source"], r["version"])].append(r)
        newest_partial: dict[str, tuple] = {}
        for (source, version), group in groups.items():
            if reference_todo(group)[0] == "partial":
                when = max(r["committed_at"] for r in group)
                newest_partial[source] = max(newest_partial.get(source, (when, version)), (when, version))
        for (source, version), group in groups.items():
            want = reference_todo(group)
            if want[0] == "partial" and newest_partial[source][1] != version:
                want = ("new",)  # one partial video per source is resumed: the newest
            todo = index.todo(source, version)
            got = (todo.action,) if todo.action != "partial" else (
                todo.action, todo.frames_per_segment, todo.segment_cut, todo.done_starts)
            assert got == want, (source, version)
            assert index.todo(source, "another version").action == "new"


def test_the_manifest_benchmark_runs_and_indexes_every_input(tmp_path):
    """benchmarks/bench_manifest.py's steps at a small size (in this process; the benchmark runs each in its own)."""
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_manifest.py"
    spec = importlib.util.spec_from_file_location("bench_manifest", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.build(tmp_path / "idle", 2000, 50, 0)
    bench.build(tmp_path / "new", 2000, 50, 100)
    assert bench.step(str(tmp_path / "idle"))["inputs_indexed"] == 2000 + 5
    assert bench.step(str(tmp_path / "new"))["inputs_indexed"] == 2100 + 5
    finalized = bench.finalize_step(str(tmp_path / "new"))
    assert finalized["live_records"] == 2000 + 50 + 100 and finalized["peak_rss_mib"] > 0
