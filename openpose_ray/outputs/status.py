"""What an output holds, from its manifest and tables alone (no Ray): ``openpose-ray status OUTPUT [--json]``.

Reads the manifest snapshot and any commit files not yet folded into it (a run
in progress, or one killed before it ended), resolves them as the next run
would (:func:`.manifest.resolve`), and reads the frames table's failed rows
through the current records. Nothing is written.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from ..jobconfig import S3Config
from ..storage import parse, redact
from . import manifest
from .writer import output_filesystem

_EXAMPLES = 5  # failed frames named per reason
_REASONS_COUNTED = 20  # distinct reasons counted per kind of failure (more are not counted apart)
_REASONS_LISTED = 5  # of which the most common are listed


def output_status(output: str, s3: S3Config | None = None) -> dict:
    """The status of the output at ``output`` (folder or s3:// prefix) as plain JSON-able values.

    Raises FileNotFoundError for a local folder that does not exist.
    """
    s3 = s3 or S3Config()
    location = parse(output)
    filesystem, root = output_filesystem(location, s3)
    if location.scheme != "s3" and filesystem.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{output}: no such folder")
    loaded = manifest.load(output, s3)
    live = manifest.resolve(loaded.records)
    current = live.filter(live["current"])
    unfolded = Counter(posixpath.basename(posixpath.dirname(path)) for path in loaded.commit_files)
    status = {
        "output": redact(output),
        "annotated": current.num_rows > 0,
        "inputs": _inputs(current, live),
        "frames": _sum(current, "frames"),
        "frames_failed": _sum(current, "frames_failed"),
        # failed for a passing reason (sources.errors.RETRIED_KINDS): their inputs are done again next run
        "frames_to_retry": _sum(current, "frames_to_retry"),
        "rows_visible": {"people": _sum(current, "people"), "frames": _sum(current, "frames")},
        "generations": _generations(live),
        "runs": _runs(loaded.records, unfolded),
        "failures": _failures(output, s3) if _sum(current, "frames_failed") else {},
        "last_summary": _last_summary(filesystem, root),
    }
    return status


def _sum(table: pa.Table, column: str) -> int:
    return int(pc.sum(table[column]).as_py() or 0) if table.num_rows else 0


def _inputs(current: pa.Table, live: pa.Table) -> dict:
    kinds, unreadable = defaultdict(set), set()
    columns = (current[c].to_pylist() for c in ("source", "source_kind", "video_frames"))
    for source, kind, video_frames in zip(*columns):
        kinds[kind].add(source)
        if kind == "video" and not video_frames:  # could not be planned: one error row
            unreadable.add(source)
    complete = set(manifest.complete_videos(live))
    return {"images": len(kinds["image"]), "tars": len(kinds["tar"]),
            "videos_complete": len(kinds["video"] & complete - unreadable),
            "videos_partial": len(kinds["video"] - complete - unreadable), "videos_unreadable": len(unreadable)}


def _generations(live: pa.Table) -> list[dict]:
    groups: dict[str, dict] = {}
    for record in live.select(["generation", "model", "config_fingerprint", "source", "current", "frames"]).to_pylist():
        group = groups.setdefault(record["generation"], {
            "generation": record["generation"], "model": record["model"],
            "config_fingerprint": record["config_fingerprint"], "current": False, "inputs": set(), "frames": 0})
        group["current"] |= record["current"]
        group["inputs"].add(record["source"])
        group["frames"] += record["frames"]
    return [{**g, "inputs": len(g["inputs"])} for g in sorted(groups.values(), key=lambda g: not g["current"])]


def _runs(records: pa.Table, unfolded: Counter) -> list[dict]:
    """Runs that committed shards, newest first: when, how much, and whether the run ended (its commits
    folded into the snapshot) or is still going / was killed (commit files left)."""
    runs: dict[str, dict] = {}
    for record in records.select(["run_id", "committed_at", "frames", "frames_failed"]).to_pylist():
        run = runs.setdefault(record["run_id"], {"run_id": record["run_id"], "first_commit": record["committed_at"],
                                                 "last_commit": record["committed_at"], "shards": 0, "frames": 0,
                                                 "frames_failed": 0})
        run["first_commit"] = min(run["first_commit"], record["committed_at"])
        run["last_commit"] = max(run["last_commit"], record["committed_at"])
        run["shards"] += 1
        run["frames"] += record["frames"]
        run["frames_failed"] += record["frames_failed"]
    ordered = sorted(runs.values(), key=lambda r: r["last_commit"], reverse=True)
    return [{**r, "first_commit": r["first_commit"].isoformat(timespec="seconds"),
             "last_commit": r["last_commit"].isoformat(timespec="seconds"),
             "ended": r["run_id"] not in unfolded} for r in ordered]


def _failures(output: str, s3: S3Config) -> dict:
    """Failed frames by kind or reason (see :class:`FailureGroups`), with examples."""
    from ..tables import read_table

    try:
        frames = read_table(output, "frames", s3,
                            columns=["source", "member", "frame_index", "status", "error", "error_kind"])
    except FileNotFoundError:  # only commit files so far (the first run still going, or killed): no snapshot
        return {"frames": None, "by_reason": [], "note": "no run has ended here yet: failed rows are named after one"}
    groups = FailureGroups()
    for row in frames.filter(pc.equal(frames["status"], "error")).to_pylist():
        groups.add(row)
    return {"frames": groups.frames, "by_reason": groups.groups()}


class FailureGroups:
    """Failed frames grouped, with up to ``examples`` examples per group; fed row by row, so memory stays
    bounded by the number of groups, not of failed frames (the run report feeds it a table chunk by chunk).

    A row: {"source", "member", "frame_index", "error"} and, in frames tables that have the column,
    "error_kind" (corrupt, unsupported, too_large, access_denied, missing, ...). Rows with a kind group
    by it, their reasons counted beside; rows without one (outputs written before the column existed)
    group by reason: the message without the input's own names and numbers (:func:`failure_reason`).
    """

    def __init__(self, examples: int = _EXAMPLES):
        self.examples = examples
        self.frames = 0
        self._groups: dict[tuple[str, str], dict] = {}

    def add(self, row: dict) -> None:
        """Count one failed frame (a frames-table row with status "error")."""
        reason = failure_reason(row["error"] or "", row["source"], row["member"])
        kind = row.get("error_kind")
        group = self._groups.setdefault(("kind", kind) if kind else ("reason", reason), {
            "kind": kind or None, "reason": reason, "frames": 0, "examples": [], "reasons": Counter()})
        self.frames += 1
        group["frames"] += 1
        if reason in group["reasons"] or len(group["reasons"]) < _REASONS_COUNTED:
            group["reasons"][reason] += 1
        if len(group["examples"]) < self.examples:
            group["examples"].append({"source": redact(row["source"]), "member": row["member"],
                                      "frame_index": row["frame_index"], "error": row["error"]})

    def groups(self) -> list[dict]:
        """The groups, most frames first: {"kind" (None when grouped by reason), "reason" (the most common
        one), "reasons" ([{"reason", "frames"}], most common first, up to 5), "frames", "examples"}."""
        out = []
        for group in sorted(self._groups.values(), key=lambda g: -g["frames"]):
            reasons = group["reasons"].most_common(_REASONS_LISTED)
            out.append({**group, "reason": reasons[0][0],
                        "reasons": [{"reason": reason, "frames": frames} for reason, frames in reasons]})
        return out


def failure_reason(error: str, source: str, member: str | None) -> str:
    """An error message with the input's own names and any numbers taken out, so alike failures group."""
    for name in filter(None, (redact(source), source, member)):
        error = error.replace(name, "<input>")
    return re.sub(r"\d+", "N", error)[:200]


def _last_summary(filesystem, root: str) -> dict | None:
    path = posixpath.join(root, "summary.json")
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        summary = json.loads(stream.read())
    return {key: summary.get(key) for key in ("run_id", "wall_time_s", "frames", "frames_failed", "people",
                                              "frames_per_s", "inputs", "skipped_inputs")}


def format_status(status: dict) -> str:
    """The status as lines for a person."""
    if not status["annotated"] and not status["runs"]:
        return f"{status['output']}: nothing annotated yet (no run has committed anything here)"
    inputs = status["inputs"]
    lines = [
        f"{status['output']}",
        f"  inputs done: {inputs['images']} images, {inputs['videos_complete']} videos "
        f"(+{inputs['videos_partial']} partly done, {inputs['videos_unreadable']} unreadable), {inputs['tars']} tars",
        f"  frames: {status['frames']} ({status['frames_failed']} failed, {status['frames_to_retry']} of them for a "
        "passing reason: tried again next run); rows visible: "
        f"{status['rows_visible']['people']} people, {status['rows_visible']['frames']} frames",
        "  generations:",
    ]
    for g in status["generations"]:
        lines.append(f"    {g['generation']}{' (current)' if g['current'] else ''}: {g['model']}, "
                     f"config {g['config_fingerprint']}, {g['inputs']} inputs, {g['frames']} frames")
    lines.append("  runs (newest first):")
    for run in status["runs"][:10]:
        state = "ended" if run["ended"] else "still running or killed (commits not folded; the next run folds them)"
        lines.append(f"    {run['run_id']}: {run['first_commit']} .. {run['last_commit']}, {run['shards']} shards, "
                     f"{run['frames']} frames ({run['frames_failed']} failed), {state}")
    skipped = (status["last_summary"] or {}).get("skipped_inputs") or []
    for entry in skipped:
        lines.append(f"  skipped by the last run: {entry['uri']}: {entry['reason']}")
    for reason in status["failures"].get("by_reason", []):
        example = reason["examples"][0]
        kind = f"[{reason['kind']}] " if reason["kind"] else ""
        lines.append(f"  failed: {reason['frames']} x {kind}{reason['reason']}  e.g. {example['source']}"
                     + (f" member {example['member']}" if example["member"] else ""))
    return "\n".join(lines)
