"""What a job's output says, independent of which run or shard wrote it: for comparing runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads

from openpose_ray.tables import read_table

# Columns that depend on the run (ids, file grouping), not on what was found.
RUN_COLUMNS = ("run_id", "shard_id")


def rows(table: pa.Table) -> list[tuple]:
    """The table's rows as sorted tuples of (column, value) pairs, run columns left out."""
    names = [n for n in table.column_names if n not in RUN_COLUMNS]
    return sorted(tuple((n, _plain(row[n])) for n in names) for row in table.select(names).to_pylist())


def content(output: Path | str) -> dict[str, list[tuple]]:
    """{"frames": rows, "people": rows} of the current (manifest) view."""
    return {name: rows(read_table(str(output), name)) for name in ("frames", "people")}


def glob_table(output: Path | str, name: str) -> pa.Table:
    """Every Parquet file under <output>/<name>, as a plain reader without the manifest sees them."""
    return pads.dataset(str(Path(output) / name), format="parquet", partitioning="hive").to_table()


def assert_exactly_once(output: Path | str) -> None:
    """Each (source, member, frame) has one frames row, and as many people rows as it says, each person once."""
    frames = read_table(str(output), "frames").to_pylist()
    keys = Counter((f["source"], f["member"], f["frame_index"]) for f in frames)
    duplicated = [k for k, n in keys.items() if n > 1]
    assert not duplicated, f"frames rows more than once: {duplicated[:5]}"
    people = read_table(str(output), "people", columns=["source", "member", "frame_index", "person_index"]).to_pylist()
    persons = Counter((p["source"], p["member"], p["frame_index"], p["person_index"]) for p in people)
    assert max(persons.values(), default=1) == 1, "a person appears twice"
    per_frame = Counter((p["source"], p["member"], p["frame_index"]) for p in people)
    assert per_frame == Counter({(f["source"], f["member"], f["frame_index"]): f["num_people"]
                                 for f in frames if f["num_people"]})


def _plain(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _plain(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value
