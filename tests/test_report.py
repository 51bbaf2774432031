"""The run report (openpose_ray.outputs.report): report.html of a real run, looked at in a real browser.

One module-scoped job (in-process Ray) over 3 shared COCO photos, a 6-frame clip of the street video and
a .jpg of random bytes, rendering off (the report draws its own samples). The report is parsed with
html.parser: every embedded image decodes and is not blank, the failure table names the broken file,
and its numbers equal the tables'. Chromium (Debian's package; scripts/setup.sh installs it where it
can) takes a screenshot of it from a file:// URL, offline. The report of a run with no rows, the
frames/s binning and the grouping of failures are checked apart, without Ray.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from openpose_ray.config_loader import load_config
from openpose_ray.outputs.report import StageTimeline, write_report, write_report_or_warn
from openpose_ray.outputs.status import FailureGroups
from openpose_ray.pipeline.records import ShardStats, StageEnds, StageSeconds
from openpose_ray.pipeline.runner import run_job
from openpose_ray.tables import read_table
from synthetic_media import video_clip

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = REPO_ROOT / "configs" / "local.yaml"
PHOTOS = ("COCO_val2014_000000000192.jpg", "COCO_val2014_000000000241.jpg", "COCO_val2014_000000000257.jpg")
CLIP_FRAMES = 6
BROKEN = "broken.jpg"
SKIPPED = "notes.txt"
PLOTS = ("plot-throughput", "plot-people-per-frame", "plot-joint-confidence")


class Page(HTMLParser):
    """The parts of report.html the tests look at: <img> attributes, and the cells of each table by id."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[dict] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self._table = attrs.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def body_rows(self, table: str) -> list[list[str]]:
        return [row for row in self.tables[table][1:] if row]


def decode_data_uri(uri: str) -> np.ndarray:
    head, data = uri.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/jpeg;base64"), head
    image = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "an embedded image does not decode"
    return image


@pytest.fixture(scope="module")
def run(ray_session, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    inputs = root / "inputs"
    inputs.mkdir()
    for name in PHOTOS:
        shutil.copy(data_dir / "coco_val2014_samples" / name, inputs / name)
    video_clip(data_dir / "videos" / "street_720p_h264.avi", inputs / "clip.mp4", CLIP_FRAMES, width=480)
    (inputs / BROKEN).write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (inputs / SKIPPED).write_text("not an image or a video: listed, skipped, named\n")
    output = root / "out"
    config = load_config(CONFIG, [f"input=[{inputs}]", f"output={output}", "write.render_images=false",
                                  "write.render_videos=false"])
    summary = run_job(config)
    report = output / "report.html"
    return config, summary, report, Page(report.read_text(encoding="utf-8"))


def test_the_summary_names_the_report(run):
    config, summary, report, _ = run
    assert summary["report"] == str(report) and report.is_file()
    assert json.loads((Path(config.output) / "summary.json").read_text())["report"] == str(report)
    assert b"http://" not in report.read_bytes() and b"https://" not in report.read_bytes()  # nothing fetched


def test_every_plot_and_sample_is_an_image_that_is_not_blank(run):
    _, _, _, page = run
    by_id = {image.get("id"): image for image in page.images}
    assert set(PLOTS) <= set(by_id)
    for name in PLOTS:
        plot = decode_data_uri(by_id[name]["src"])
        assert plot.shape[0] >= 300 and plot.shape[1] >= 600, (name, plot.shape)
        assert len(np.unique(plot.reshape(-1, 3), axis=0)) > 20, f"{name} is (nearly) one colour"
    samples = [image for image in page.images if image.get("class") == "sample"]
    assert 4 <= len(samples) <= 6  # 3 photos and the clip have people; the broken file none
    for sample in samples:
        frame = decode_data_uri(sample["src"])
        assert 100 <= frame.shape[1] <= 480 and frame.std() > 20


def test_the_facts_say_how_the_video_was_decoded(run):
    _, summary, _, page = run
    facts = dict(page.tables["facts"])
    assert facts["video decoding"] == (f"sources.decoder cpu: 0 frames as YUV planes (0 decoded by NVDEC), "
                                       f"{summary['decoding']['video_frames_bgr']} converted on the CPU")
    assert summary["decoding"]["video_frames_bgr"] == CLIP_FRAMES


def test_the_decoding_fact_names_why_nvdec_did_not_decode():
    from openpose_ray.outputs.report import _decoding_fact

    decoding = {"decoder": "gpu", "video_frames_nvdec": 300, "video_frames_yuv": 428, "video_frames_bgr": 0,
                "not_nvdec": {"no NVIDIA GPU on this node": 1, "NVDEC has no decoder for mpeg4": 3}}
    assert _decoding_fact(decoding) == [("video decoding", (
        "sources.decoder gpu: 428 frames as YUV planes (300 decoded by NVDEC), 0 converted on the CPU; not decoded "
        "by NVDEC: no NVIDIA GPU on this node (1 shard); NVDEC has no decoder for mpeg4 (3 shards)"))]
    assert _decoding_fact(None) == [] and _decoding_fact({**decoding, "video_frames_yuv": 0}) == []  # no video


def test_the_failure_table_names_the_broken_file(run):
    _, summary, _, page = run
    failures = page.body_rows("failures")
    assert sum(int(row[1]) for row in failures) == summary["frames_failed"] == 1
    (row,) = failures
    assert BROKEN in row[3] and "cannot decode image" in row[3] and "cannot decode image" in row[2]
    assert row[0] == "corrupt"  # grouped by error_kind


def test_the_skipped_inputs_are_named_with_the_reason(run):
    _, summary, _, page = run
    (row,) = page.body_rows("skipped")
    assert row[0].endswith(SKIPPED) and "not annotated" in row[1] and summary["inputs"]["skipped"] == 1


def test_the_numbers_are_the_tables(run):
    """Per input, frames / failed / people as the frames table has them; the people histogram counts every
    ok frame once; the frames/s plot's bins add up to the frames each stage handled."""
    config, summary, _, page = run
    frames = read_table(config.output, "frames").to_pylist()
    want = {}
    for row in frames:
        entry = want.setdefault(row["source"], [0, 0, 0])
        entry[0] += 1
        entry[1] += row["status"] != "ok"
        entry[2] += row["num_people"]
    got = {row[0]: [int(v) for v in row[2:5]] for row in page.body_rows("inputs")}
    assert got == want and len(got) == len(PHOTOS) + 2
    assert got[str(Path(config.input[0]) / "clip.mp4")][0] == CLIP_FRAMES

    histogram = {int(n): int(count) for n, count in page.body_rows("people-per-frame")}
    ok = [row["num_people"] for row in frames if row["status"] == "ok"]
    assert histogram == {n: count for n, count in Counter(ok).items()}
    assert sum(histogram.values()) == len(ok) == summary["frames"] - summary["frames_failed"]
    assert sum(n * count for n, count in histogram.items()) == summary["people"] > 0

    stage_frames = {stage: int(n) for stage, n in page.body_rows("stage-frames")}
    assert stage_frames == {"decode + resize": summary["frames"], "inference": summary["frames_inferred"],
                            "post-process + write": summary["frames"]}


def test_a_browser_shows_the_report(run, tmp_path):
    """Headless Chromium renders report.html from disk (no network) to a screenshot that is not blank."""
    _, _, report, _ = run
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs Debian's package with apt-get where it "
                    "runs as root; elsewhere: apt-get install chromium)")
    screenshot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}",
                    "--window-size=1280,2400", report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = cv2.imread(str(screenshot), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (2400, 1280)
    assert image.std() > 20, "the screenshot is blank"
    assert len(np.unique(image.reshape(-1, 3) // 16, axis=0)) > 50, "the screenshot has almost no colours"
    assert (image.min(axis=2) < 200).mean() > 0.05, "almost all of the screenshot is white"
    saturated = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1] > 80  # coloured plots and photos, not just text
    assert saturated.mean() > 0.02


# --- without Ray ---------------------------------------------------------------------------


def summary_of_nothing(output: Path) -> dict:
    return {"run_id": "20270101T000000Z-00000000", "output": str(output),
            "inputs": {"images": 0, "videos": 0, "tars": 0, "skipped": 0, "already_done": 0},
            "frames": 0, "frames_failed": 0, "frames_inferred": 0, "people": 0, "wall_time_s": 0.5,
            "frames_per_s": 0.0, "inference": {"device": "cpu", "precision": "fp32"},
            "provenance": {"model": "mobilenet_thin"}}


def test_a_run_with_nothing_gets_a_report_and_a_broken_report_never_fails_the_job(tmp_path, caplog):
    output = tmp_path / "out"
    config = load_config(CONFIG, [f"input=[{tmp_path}]", f"output={output}"])
    uri = write_report(config, summary_of_nothing(output), StageTimeline(started=1.8e9))
    page = Page((output / "report.html").read_text(encoding="utf-8"))
    assert uri == str(output / "report.html")
    for image in page.images:
        assert len(np.unique(decode_data_uri(image["src"]).reshape(-1, 3), axis=0)) > 2  # says "no data"
    assert {image["id"] for image in page.images} == set(PLOTS)
    assert page.body_rows("inputs") == [] and "failures" not in page.tables

    assert write_report_or_warn(config, {"run_id": "x"}, StageTimeline(started=0.0)) is None
    assert "run report not written" in caplog.text


def stats(frames: int, inferred: int, seconds: StageSeconds, ended: StageEnds) -> ShardStats:
    return ShardStats(frames=frames, failed=frames - inferred, people=0, inferred=inferred, seconds=seconds,
                      files=(), inputs={}, ended=ended)


def test_frames_per_second_spreads_each_shard_over_the_time_its_stage_took():
    started = 1.8e9
    timeline = StageTimeline(started)
    # 100 frames decoded over seconds 0-10, inferred 10-20 (90 of them), post-processed in 20-20.5 / 20.5-21.
    timeline.add(stats(100, 90, StageSeconds(decode=8.0, resize=2.0, infer=10.0, post=0.5, write=0.5),
                       StageEnds(decode=started + 10, infer=started + 20, post=started + 21)))
    # a shard whose stages took no measurable time: counted whole in the bin where it ended
    timeline.add(stats(4, 4, StageSeconds(), StageEnds(decode=started + 2.5, infer=started + 3.5, post=started + 4.5)))
    # a shard that never reached inference (planning failed): in no inference bin
    timeline.add(stats(1, 0, StageSeconds(), StageEnds(decode=started + 0.5, post=started + 0.5)))
    edges, rates = timeline.frames_per_second()
    np.testing.assert_allclose(edges, np.arange(22.0))  # 21 s: 1-s bins
    np.testing.assert_allclose(rates["decode"][:10], [11.0, 10.0, 14.0] + [10.0] * 7)
    np.testing.assert_allclose(rates["decode"][10:], 0.0)
    np.testing.assert_allclose(rates["infer"][10:20], 9.0)
    assert rates["infer"][3] == 4.0 and rates["infer"].sum() == pytest.approx(94.0)
    assert rates["post"][20] == 100.0 and rates["post"].sum() == pytest.approx(105.0)

    assert [len(r) for r in StageTimeline(started).frames_per_second()[1].values()] == [0, 0, 0]


def test_tasks_at_once_counts_the_shards_in_a_stage_at_the_same_time():
    started = 1.8e9
    timeline = StageTimeline(started)
    # decoding: 0-4 and 2-6 overlap, 6-8 touches the second; inference one shard after another
    for decoded, inferred in [((0, 4), (4, 5)), ((2, 6), (6, 7)), ((6, 8), (8, 9))]:
        timeline.add(stats(10, 10, StageSeconds(decode=decoded[1] - decoded[0] - 1, resize=1.0, infer=1.0),
                           StageEnds(decode=started + decoded[1], infer=started + inferred[1])))
    assert timeline.tasks_at_once() == {"decode": {"mean": 1.25, "most": 2}, "infer": {"mean": 0.6, "most": 1}}
    assert StageTimeline(started).tasks_at_once() == {}


def test_failures_group_by_kind_with_the_reasons_beside_else_by_reason():
    rows = [{"source": f"/in/{name}", "member": None, "frame_index": 0, "error": error}
            for name, error in [("a.jpg", "cannot decode image: /in/a.jpg truncated at byte 17"),
                                ("b.jpg", "cannot decode image: /in/b.jpg truncated at byte 999"),
                                ("c.png", "image of 20000x20000 exceeds max_image_pixels (100000000)")]]
    by_reason = FailureGroups()
    for row in rows:
        by_reason.add(row)
    assert [(g["kind"], g["reason"], g["frames"]) for g in by_reason.groups()] == [
        (None, "cannot decode image: <input> truncated at byte N", 2),
        (None, "image of NxN exceeds max_image_pixels (N)", 1)]

    by_kind = FailureGroups(examples=1)
    for row, kind in zip(rows, ["corrupt", "corrupt", "corrupt"]):
        by_kind.add({**row, "error_kind": kind})
    (group,) = by_kind.groups()
    assert group["kind"] == "corrupt" and group["frames"] == 3 and len(group["examples"]) == 1
    assert group["reasons"] == [{"reason": "cannot decode image: <input> truncated at byte N", "frames": 2},
                                {"reason": "image of NxN exceeds max_image_pixels (N)", "frames": 1}]
