"""The run report: ``report.html`` beside ``summary.json``, written at the end of every run.

One self-contained HTML file (plots and frames inline as base64 PNG / JPEG, a few lines of inline
CSS and JS, nothing fetched), so it opens from a laptop, a bucket or a CI artifact alike:

1. the run's numbers (from the summary) and frames/s over time per stage (decode + resize,
   inference, post-process + write): each shard's frames spread over the seconds its stage worked
   on it (:class:`StageTimeline`, fed by the driver from every shard's ``ShardStats``);
2. failed frames grouped by ``error_kind`` (the reasons beside), or by reason where the frames table
   has no such column, with examples (input, error): :class:`.status.FailureGroups`, as
   ``openpose-ray status`` groups them;
3. people per frame (histogram) and, per part of the model's skeleton, the mean confidence where
   the part was found and the share of people in whom it was;
4. the first 200 inputs with their frames, failed frames and people (click a header to sort);
5. up to 6 sample frames with their people drawn (decoded again, whatever ``write.render_*`` says),
   at most 480 px wide, mixing images, video frames and tar members.

Everything but the timeline is read back from the rows this run wrote, through the manifest
(:class:`openpose_ray.tables.CurrentRows`), so the report shows what a reader of the tables sees.
Cost, bounded for huge runs: one pass over this run's frames files (a few small columns, 64 files
at a time: counts, failures and the input table are exact), at most 64 of its people files (spread
over the run: the parts chart and the sample frames come from them), and 6 frames decoded again (a
video or tar only from its start up to frame 250). The driver writes
the report after the manifest is final and before ``summary.json``, whose ``report`` key holds
its URI; a report that cannot be built logs a warning and leaves ``report`` null, never failing
the job (:func:`write_report_or_warn`).
"""

from __future__ import annotations

import base64
import html
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import pyarrow.compute as pc

from ..jobconfig import JobConfig
from ..models.registry import get_entry
from ..pipeline.records import ShardStats
from ..skeleton import Skeleton
from ..storage import parse, redact
from ..tables import CurrentRows
from . import report_plots
from .frames_table import FRAMES_SCHEMA
from .people_table import read_keypoints
from .status import FailureGroups
from .writer import write_bytes

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
STAGES = {"decode": "decode + resize", "infer": "inference", "post": "post-process + write"}
_FILES_PER_READ = 64  # frames files read at once: memory stays that of 64 shards' rows
_PEOPLE_FILES = 64  # people files read at most (a sample spread over the run)
_INPUTS_LISTED = 200
_SAMPLES = 6
# Videos and tars are decoded from their start for a sample: no frame past this. 64 (~2 s of video) rather
# than 250: the two shared videos' samples cost 1.5 s of a 3.2 s report at 250 (their most crowded frames
# lie past 100), 0.3 s at 64, and any crowded frame shows the job's work as well.
_SAMPLE_MAX_FRAME_INDEX = 64
_BINS = 40  # about this many time bins; their width is the first of _BIN_WIDTHS_S that gets there
_BIN_WIDTHS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
_SPANS_PER_STEP = 4096  # shards binned at once (bounds the [shards, bins] array)


class StageTimeline:
    """When each shard's frames went through each stage, collected by the driver from ShardStats.

    started: epoch seconds when the run started (the plots' time 0).
    """

    def __init__(self, started: float):
        self.started = started
        self._spans: dict[str, list[tuple[float, float, int]]] = {stage: [] for stage in STAGES}

    def add(self, stats: ShardStats) -> None:
        """Note one written shard: per stage (start, end epoch seconds, frames) from its ends and seconds."""
        seconds = stats.seconds
        for stage, duration, frames in (("decode", seconds.decode + seconds.resize, stats.frames),
                                        ("infer", seconds.infer, stats.inferred),
                                        ("post", seconds.post + seconds.write, stats.frames)):
            end = getattr(stats.ended, stage)
            if end is not None and frames:
                self._spans[stage].append((end - duration, end, frames))

    def frames_per_second(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(edges float[B + 1] in seconds since ``started``, {stage: float[B] frames/s}).

        A shard's frames count evenly over the seconds its stage spent on it, so a 128-frame segment
        inferred in 20 s adds 6.4 frames/s to the bins it spans rather than a spike where it ended.
        No shard: empty arrays.
        """
        ends = [end for spans in self._spans.values() for _, end, _ in spans]
        if not ends:
            return np.zeros(0), {stage: np.zeros(0) for stage in STAGES}
        duration = max(max(ends) - self.started, 1e-3)
        width = next((w for w in _BIN_WIDTHS_S if w * _BINS >= duration), 3600 * math.ceil(duration / _BINS / 3600))
        edges = np.arange(math.ceil(duration / width) + 1, dtype=np.float64) * width
        rates = {}
        for stage, spans in self._spans.items():
            spans_s = np.asarray(spans, dtype=np.float64).reshape(-1, 3)
            spans_s[:, :2] = np.clip(spans_s[:, :2] - self.started, 0.0, None)  # a worker's clock a little behind
            rates[stage] = np.diff(_cumulative_frames(spans_s, edges)) / width
        return edges, rates

    def tasks_at_once(self) -> dict[str, dict[str, float]]:
        """Per stage, how many shards were in it at once: {"mean": over the stage's first start to its
        last end, "most": at any moment}. Shows whether decoding used the cores the network left.
        A stage no shard went through is left out."""
        out = {}
        for stage, spans in self._spans.items():
            if not spans:
                continue
            events = sorted([(start, 1) for start, _, _ in spans] + [(end, -1) for _, end, _ in spans])
            running = most = 0
            for _, change in events:  # at equal times an end (-1) sorts before a start: touching is not at once
                running += change
                most = max(most, running)
            width = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
            busy = sum(end - start for start, end, _ in spans)
            out[stage] = {"mean": round(busy / width, 2) if width > 0 else float(most), "most": most}
        return out


def _cumulative_frames(spans: np.ndarray, at: np.ndarray) -> np.ndarray:
    """float[T]: frames done by each time of ``at``; spans float[S, 3] as start, end, frames (linear in
    between; a span of no duration counts whole from its end on)."""
    done = np.zeros(len(at))
    for first in range(0, len(spans), _SPANS_PER_STEP):
        _, end, frames = spans[first:first + _SPANS_PER_STEP].T
        duration = np.maximum(end - spans[first:first + _SPANS_PER_STEP, 0], 1e-9)
        share = (at[None, :] - (end - duration)[:, None]) / duration[:, None]
        done += (frames[:, None] * np.clip(share, 0.0, 1.0)).sum(axis=0)
    return done


def write_report_or_warn(config: JobConfig, summary: dict, timeline: StageTimeline) -> str | None:
    """:func:`write_report`, or None with a warning logged when it fails: the report never fails a job."""
    try:
        return write_report(config, summary, timeline)
    except Exception as exc:  # whatever went wrong, the run's tables are written and committed by now
        log.warning("run report not written (the run's output is complete): %s: %s", type(exc).__name__,
                    redact(str(exc)), exc_info=True)
        return None


def write_report(config: JobConfig, summary: dict, timeline: StageTimeline) -> str:
    """Build the report of the run ``summary`` describes and write it as ``<output>/report.html``; its URI."""
    start = time.perf_counter()
    uri = parse(config.output).join(REPORT_NAME).uri
    document = build_report(config, summary, timeline)
    write_bytes(uri, document.encode("utf-8"), config.s3, content_type="text/html; charset=utf-8")
    log.info("run report: %s (%.1f s)", redact(uri), time.perf_counter() - start)
    return redact(uri)


def build_report(config: JobConfig, summary: dict, timeline: StageTimeline) -> str:
    """The report's HTML (see the module docstring); reads this run's rows from ``config.output``."""
    skeleton = get_entry(config.model.name).skeleton
    try:
        rows = CurrentRows(config.output, config.s3, run_id=summary["run_id"])
    except FileNotFoundError:  # no run has ever committed anything here
        rows = None
    frames = _read_frames(rows)
    people = _read_people(rows, skeleton)
    edges, rates = timeline.frames_per_second()
    width = edges[1] - edges[0] if len(edges) > 1 else 0.0
    stage_frames = {stage: int(round(rate.sum() * width)) for stage, rate in rates.items()}
    plots = {
        "throughput": report_plots.throughput_png(edges, rates, STAGES),
        "people-per-frame": report_plots.people_histogram_png(frames.people_per_frame),
        "joint-confidence": report_plots.joint_confidence_png(skeleton.part_names, people.mean_confidence,
                                                              people.found_share),
    }
    samples = _samples(people.candidates or frames.plain_candidates, config, skeleton)
    return _page(summary, plots, stage_frames, frames, people, samples)


class _FramesPass:
    """What one pass over this run's frames rows gives (see :func:`_read_frames`)."""

    def __init__(self):
        self.people_per_frame = np.zeros(1, dtype=np.int64)  # [n] = ok frames with n people
        self.inputs: dict[str, dict] = {}  # the first _INPUTS_LISTED inputs read: kind, frames, failed, people
        self.failures = FailureGroups()
        self.plain_candidates: dict[str, dict] = {}  # ok frames, for the samples when nobody was found


def _read_frames(rows: CurrentRows | None) -> _FramesPass:
    found = _FramesPass()
    if rows is None:
        return found
    columns = ["source", "member", "source_kind", "frame_index", "status", "error", "num_people"]
    columns += [name for name in ("error_kind",) if name in FRAMES_SCHEMA.names]  # from the version that adds it
    files = rows.files("frames")
    for first in range(0, len(files), _FILES_PER_READ):
        table = rows.read("frames", files[first:first + _FILES_PER_READ], columns)
        ok = pc.equal(table["status"], "ok").to_numpy(zero_copy_only=False)
        counts = np.bincount(table["num_people"].to_numpy()[ok])
        if len(counts) > len(found.people_per_frame):
            found.people_per_frame = np.pad(found.people_per_frame, (0, len(counts) - len(found.people_per_frame)))
        found.people_per_frame[:len(counts)] += counts
        for row in table.filter(pc.invert(pc.equal(table["status"], "ok"))).to_pylist():
            found.failures.add(row)
        names = ("source", "source_kind", "member", "frame_index", "status", "num_people")
        for source, kind, member, index, status, people in zip(*(table[n].to_pylist() for n in names)):
            entry = found.inputs.get(source)
            if entry is None and len(found.inputs) < _INPUTS_LISTED:
                entry = found.inputs[source] = {"kind": kind, "frames": 0, "failed": 0, "people": 0}
            if entry is not None:
                entry["frames"] += 1
                entry["failed"] += status != "ok"
                entry["people"] += people
            if (status == "ok" and source not in found.plain_candidates and len(found.plain_candidates) < _SAMPLES
                    and index <= _SAMPLE_MAX_FRAME_INDEX):
                found.plain_candidates[source] = {"kind": kind, "member": member, "frame_index": index,
                                                  "people": 0, "keypoints": None, "scores": ()}
    return found


class _PeopleSample:
    """Per skeleton part: mean confidence where found, share of people found; and sample-frame candidates."""

    def __init__(self, num_parts: int):
        self.people = 0
        self.files_read = self.files = 0
        self.mean_confidence = np.zeros(num_parts)
        self.found_share = np.zeros(num_parts)
        self.candidates: dict[str, dict] = {}  # per input, its frame with the most people


def _read_people(rows: CurrentRows | None, skeleton: Skeleton) -> _PeopleSample:
    sample = _PeopleSample(skeleton.num_parts)
    if rows is None:
        return sample
    files = rows.files("people")
    picked = sorted({files[i] for i in np.linspace(0, len(files) - 1, min(len(files), _PEOPLE_FILES)).astype(int)})
    sample.files, sample.files_read = len(files), len(picked)
    confidence_sum, found_count = np.zeros(skeleton.num_parts), np.zeros(skeleton.num_parts)
    columns = ["source", "member", "source_kind", "frame_index", "score", *skeleton.part_names]
    for first in range(0, len(picked), _FILES_PER_READ // 4):  # people rows are ~20x wider than frames rows
        table = rows.read("people", picked[first:first + _FILES_PER_READ // 4], columns)
        keypoints = read_keypoints(table, skeleton)  # float32[R, K, 3]
        found = keypoints[:, :, 2] > 0
        confidence_sum += np.where(found, keypoints[:, :, 2], 0.0).sum(axis=0)
        found_count += found.sum(axis=0)
        sample.people += table.num_rows
        _note_candidates(sample.candidates, table, keypoints)
    sample.mean_confidence = confidence_sum / np.maximum(found_count, 1)
    sample.found_share = found_count / max(sample.people, 1)
    return sample


def _note_candidates(candidates: dict[str, dict], table, keypoints: np.ndarray) -> None:
    """Keep per input the frame with the most people (videos and tars: among their first frames)."""
    by_frame: dict[tuple, list[int]] = defaultdict(list)
    names = ("source", "source_kind", "member", "frame_index")
    for row, key in enumerate(zip(*(table[n].to_pylist() for n in names))):
        if key[1] == "image" or key[3] <= _SAMPLE_MAX_FRAME_INDEX:
            by_frame[key].append(row)
    scores = table["score"].to_numpy()
    for (source, kind, member, index), rows in by_frame.items():
        best = candidates.get(source)
        if best is None or (len(rows), -index) > (best["people"], -best["frame_index"]):
            candidates[source] = {"kind": kind, "member": member, "frame_index": index, "people": len(rows),
                                  "keypoints": keypoints[rows].copy(), "scores": tuple(scores[rows].tolist())}


def _samples(candidates: Mapping[str, dict], config: JobConfig, skeleton: Skeleton) -> list[dict]:
    """Up to _SAMPLES frames drawn: the most crowded first, kinds taken in turn (images, videos, tars)."""
    by_kind: dict[str, list] = defaultdict(list)
    for source, candidate in sorted(candidates.items(), key=lambda item: (-item[1]["people"], item[0])):
        by_kind[candidate["kind"]].append((source, candidate))
    queues = [by_kind[kind] for kind in ("image", "video", "tar") if by_kind[kind]]
    samples = []
    while queues and len(samples) < _SAMPLES:
        for queue in list(queues):
            source, candidate = queue.pop(0)
            if not queue:
                queues.remove(queue)
            image = report_plots.decode_one_frame(source, candidate["kind"], candidate["member"],
                                                  candidate["frame_index"], config.sources, config.s3)
            if image is not None:
                keypoints = candidate["keypoints"]
                if keypoints is None:
                    keypoints = np.zeros((0, skeleton.num_parts, 3), np.float32)
                samples.append({"source": redact(source), "member": candidate["member"], "kind": candidate["kind"],
                                "frame_index": candidate["frame_index"], "people": candidate["people"],
                                "jpeg": report_plots.sample_jpeg(image, keypoints, candidate["scores"], skeleton)})
            if len(samples) == _SAMPLES:
                break
    return samples


# --- the page ------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f3f3f3; text-align: left; } td.n { text-align: right; }
table.sortable th { cursor: pointer; } .note { color: #666; } .error { color: #a00; }
img.plot { display: block; max-width: 100%; margin: 8px 0; }
.samples { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; } figcaption { font-size: 12px; color: #444; max-width: 480px; word-break: break-all; }
"""
# Click a header of a sortable table: sort by that column (numbers by their data-value), again: reversed.
_SORT_JS = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], up = th.dataset.order !== "up";
  th.dataset.order = up ? "up" : "down";
  const key = row => { const cell = row.cells[col];
    return cell.dataset.value !== undefined ? Number(cell.dataset.value) : cell.textContent; };
  Array.from(body.rows).sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0) * (up ? 1 : -1))
    .forEach(row => body.appendChild(row));
}));
"""


def _page(summary: dict, plots: dict[str, bytes], stage_frames: dict[str, int], frames: _FramesPass,
          people: _PeopleSample, samples: list[dict]) -> str:
    inputs = summary["inputs"]
    facts = [
        ("run", summary["run_id"]), ("output", summary["output"]),
        ("model", f"{summary['provenance']['model']} ({summary['inference']['device']}, "
                  f"{summary['inference']['precision']})"),
        ("inputs", f"{inputs['images']} images, {inputs['videos']} videos, {inputs['tars']} tars annotated; "
                   f"{inputs['skipped']} skipped, {inputs['already_done']} already done"),
        ("frames", f"{summary['frames']} ({summary['frames_failed']} failed)"), ("people", summary["people"]),
        ("wall time", f"{summary['wall_time_s']} s, {summary['frames_per_s']} frames/s"),
        *_decoding_fact(summary.get("decoding")),
    ]
    parts = [f"<h1>Run report: {_escape(summary['run_id'])}</h1>", "<table id='facts'>",
             *(f"<tr><th>{_escape(k)}</th><td>{_escape(v)}</td></tr>" for k, v in facts), "</table>",
             "<h2>Frames per second, per stage</h2>", _img("throughput", plots),
             "<table id='stage-frames'><tr><th>stage</th><th>frames</th></tr>",
             *(f"<tr><td>{_escape(STAGES[s])}</td><td class='n'>{n}</td></tr>" for s, n in stage_frames.items()),
             "</table>", *_failures_section(frames.failures), *_skipped_section(summary),
             "<h2>People</h2>", _img("people-per-frame", plots),
             "<table id='people-per-frame'><tr><th>people in the frame</th><th>frames</th></tr>",
             *(f"<tr><td class='n'>{n}</td><td class='n'>{count}</td></tr>"
               for n, count in enumerate(frames.people_per_frame.tolist()) if count),
             "</table>", _img("joint-confidence", plots),
             f"<p class='note'>Parts: {people.people} people read from {people.files_read} of this run's "
             f"{people.files} people files.</p>", *_inputs_section(frames, summary), *_samples_section(samples)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>openpose_ray run {_escape(summary['run_id'])}</title><style>{_STYLE}</style></head>"
            f"<body>\n" + "\n".join(parts) + f"\n<script>{_SORT_JS}</script></body></html>\n")


def _decoding_fact(decoding: dict | None) -> list[tuple[str, str]]:
    """How the run's video frames were decoded (summary["decoding"]), when it had any."""
    if not decoding or not (decoding["video_frames_yuv"] or decoding["video_frames_bgr"]):
        return []
    text = (f"sources.decoder {decoding['decoder']}: {decoding['video_frames_yuv']} frames as YUV planes "
            f"({decoding['video_frames_nvdec']} decoded by NVDEC), {decoding['video_frames_bgr']} converted on the CPU")
    if decoding["not_nvdec"]:
        text += "; not decoded by NVDEC: " + "; ".join(f"{why} ({shards} shard{'' if shards == 1 else 's'})"
                                                       for why, shards in decoding["not_nvdec"].items())
    return [("video decoding", text)]


def _failures_section(failures: FailureGroups) -> list[str]:
    parts = [f"<h2>Failures: {failures.frames} frame{'' if failures.frames == 1 else 's'}</h2>"]
    if not failures.frames:
        return parts + ["<p id='failures-none'>No frame failed.</p>"]
    parts.append("<table id='failures'><tr><th>kind</th><th>frames</th><th>reasons</th>"
                 "<th>examples (input, error)</th></tr>")
    for group in failures.groups():
        reasons = "<br>".join(f"{r['frames']} x {_escape(r['reason'])}" for r in group["reasons"])
        examples = "<br>".join(_example(example) for example in group["examples"])
        parts.append(f"<tr><td>{_escape(group['kind'] or '-')}</td><td class='n'>{group['frames']}</td>"
                     f"<td>{reasons}</td><td>{examples}</td></tr>")
    return parts + ["</table>"]


def _skipped_section(summary: dict) -> list[str]:
    """The inputs the listing did not read (unsupported extension, ...), with the reason: the summary's list."""
    skipped = summary.get("skipped_inputs") or []
    if not skipped:
        return []
    listed = f"the first {len(skipped)} of " if len(skipped) < summary["inputs"]["skipped"] else ""
    return [f"<h2>Skipped inputs ({listed}{summary['inputs']['skipped']})</h2>",
            "<table id='skipped'><tr><th>input</th><th>reason</th></tr>",
            *(f"<tr><td>{_escape(entry['uri'])}</td><td>{_escape(entry['reason'])}</td></tr>" for entry in skipped),
            "</table>"]


def _example(example: dict) -> str:
    member = f" [{example['member']}]" if example["member"] else ""
    return (f"{_escape(example['source'] + member)} frame {example['frame_index']}: "
            f"<span class='error'>{_escape(example['error'])}</span>")


def _inputs_section(frames: _FramesPass, summary: dict) -> list[str]:
    total = sum(summary["inputs"][kind] for kind in ("images", "videos", "tars"))
    parts = [f"<h2>Inputs (the first {len(frames.inputs)} of {total} read; click a header to sort)</h2>",
             "<table id='inputs' class='sortable'><thead><tr><th>input</th><th>kind</th><th>frames</th>"
             "<th>failed</th><th>people</th></tr></thead><tbody>"]
    for source, entry in sorted(frames.inputs.items()):
        parts.append(f"<tr><td>{_escape(redact(source))}</td><td>{_escape(entry['kind'])}</td>"
                     + "".join(f"<td class='n' data-value='{entry[k]}'>{entry[k]}</td>"
                               for k in ("frames", "failed", "people")) + "</tr>")
    return parts + ["</tbody></table>"]


def _samples_section(samples: list[dict]) -> list[str]:
    parts = ["<h2>Sample frames</h2>"]
    if not samples:
        return parts + ["<p>No frame could be shown.</p>"]
    parts.append("<div class='samples'>")
    for sample in samples:
        where = f" [{sample['member']}]" if sample["member"] else ""
        where += f" frame {sample['frame_index']}" if sample["kind"] == "video" else ""
        parts.append(f"<figure><img class='sample' alt='sample frame' src='{_data_uri(sample['jpeg'], 'image/jpeg')}'>"
                     f"<figcaption>{_escape(sample['source'] + where)}: {sample['people']} people</figcaption></figure>")
    return parts + ["</div>"]


def _img(name: str, plots: dict[str, bytes]) -> str:
    return f"<img class='plot' id='plot-{name}' alt='{name}' src='{_data_uri(plots[name], 'image/png')}'>"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _escape(value) -> str:
    return html.escape(str(value), quote=True)
