"""Bad input is data, not a crash: one job run over every broken or odd input we know of.

One module-scoped run of the real job (in-process Ray) over a folder built here from
the shared media, plus an S3 prefix on the loopback server:

* broken: a zero-byte file, a truncated JPEG, random bytes named .jpg, a text file named
  .mp4, an audio-only .mp4, a PNG whose header claims 20000x20000, a tar with a corrupt
  member, a video with a block of garbage in the middle, an S3 object that answers
  HTTP 403 (archived: storage class GLACIER), an S3 video likewise;
* odd but readable: grayscale, 16-bit and RGBA PNGs, an 8x8 image, a JPEG with an EXIF
  orientation; an unsupported extension (skipped and counted);
* good: COCO photos, loose, in the tar and on S3, and the intact frames of the video.

The job must finish; every broken input gets a frames row with status "error" and a
message naming the problem, every frame of the damaged video gets exactly one row,
and the people rows of everything readable equal ``PoseEstimator.estimate`` on the same
pixels, decoded here independently of the job. Separately: an S3 object deleted between
listing and reading (the stage functions in process, no Ray), a 403 from a bucket policy
(stubbed: the loopback server enforces policies only with IAM auth on), and the exit code
of ``openpose-ray run`` with and without ``fail_on_error``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.dataset as pads
import pytest

from people_match import assert_same_person, job_estimator, ran_on_cuda
from synthetic_media import encode, forged_png, jpeg_with_orientation
from openpose_ray.cli import main as cli_main
from openpose_ray.config_loader import load_config
from openpose_ray.jobconfig import JobConfig, S3Config, SourcesConfig
from openpose_ray.outputs.people_table import read_keypoints
from openpose_ray.pipeline.runner import run_job

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = REPO_ROOT / "configs" / "local.yaml"
NET_SIZE = (216, 184)  # half the default: the comparisons below use the same size
VIDEO = "sports_994p_vp9.mp4"  # VP9, 230 frames, a key frame every 60
VIDEO_FRAMES = 230
FRAMES_PER_SEGMENT = 64  # the damage falls in two segments, one of which seeks to the damaged key frame
GARBAGE_BYTES = 16 * 1024
LOOSE_PHOTOS = ("000000000785.jpg", "000000040083.jpg")  # coco_val2017_mini: 1 and 2 people
CONVERTED_FROM = "000000196141.jpg"  # the gray / 16-bit / RGBA / 8x8 images are made from it (4 people)
ROTATED_FROM = "000000197388.jpg"  # the EXIF-rotated JPEG (5 people)
TAR_MEMBERS = ("shard/a.jpg", "shard/broken.jpg", "shard/b.jpg")  # the middle one is corrupt
TAR_PHOTOS = {"shard/a.jpg": "000000196141.jpg", "shard/b.jpg": "000000000785.jpg"}
BUCKET = "bad-inputs"

# Broken inputs: file name -> (source_kind, error_kind, fragments its error message must contain).
EXPECTED_ERRORS = {
    "empty.jpg": ("image", "corrupt", ["cannot decode image: empty file (0 bytes)"]),
    "truncated.jpg": ("image", "corrupt", ["cannot decode JPEG image: truncated", "no end-of-image marker"]),
    "noise.jpg": ("image", "corrupt", ["cannot decode image: not a JPEG/PNG/BMP/WebP/TIFF/GIF/AVIF or truncated"]),
    "notes.mp4": ("video", "unsupported", ["cannot read video: not a readable video", "notes.mp4"]),
    "audio_only.mp4": ("video", "unsupported", ["cannot read video: video has no video stream", "audio_only.mp4"]),
    "huge.png": ("image", "too_large", ["image of 20000x20000 exceeds max_image_pixels (100000000)"]),
    "archived.jpg": ("image", "access_denied", ["cannot read image: access denied (HTTP 403 InvalidObjectState)",
                                                f"s3://{BUCKET}/archived.jpg is archived (GLACIER)", "restore it"]),
    "archived.mp4": ("video", "access_denied", ["cannot read video: access denied (HTTP 403 InvalidObjectState)",
                                                f"s3://{BUCKET}/archived.mp4 is archived (GLACIER)"]),
}
SKIPPED = "readme.xyz"
LATIN1_FILE, LATIN1_TEXT = b"caf\xe9 100%.jpg", "caf%E9 100%25.jpg"  # a name that is not UTF-8, its text form
LATIN1_MEMBER, LATIN1_MEMBER_TEXT = b"\xe9t\xe9/photo.jpg", "%E9t%E9/photo.jpg"


# --- building the inputs ------------------------------------------------------------------


def write_audio_only(path: Path) -> None:
    """Half a second of a 440 Hz sine wave, AAC in MP4: a container without a video stream."""
    rate, samples = 44100, 1024
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        for start in range(0, rate // 2, samples):
            t = (start + np.arange(samples)) / rate
            frame = av.AudioFrame.from_ndarray(np.sin(2 * np.pi * 440 * t).astype(np.float32)[None], format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def damage_video(source: Path, target: Path) -> list[int]:
    """Copy the video with GARBAGE_BYTES of noise in the middle of the file; return the damaged frames.

    The noise starts at the packet holding the middle byte of the file: a decoder only
    reports damage it detects, and VP9 has no checksums, so noise inside a frame's data
    often decodes to wrong pixels without any error; noise over a frame header does not.
    The damaged frames are those whose packet bytes were overwritten and every frame after
    them up to the next key frame (they are predicted from the damaged ones). VP9 has no
    B-frames: packet order is presentation order.
    """
    with av.open(str(source)) as container:
        packets = [(p.pos, p.size, p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]
    assert len(packets) == VIDEO_FRAMES
    middle = source.stat().st_size // 2
    start = next(pos for pos, size, _ in packets if pos <= middle < pos + size)
    shutil.copyfile(source, target)
    with open(target, "r+b") as f:
        f.seek(start)
        f.write(np.random.default_rng(4).integers(0, 256, GARBAGE_BYTES, dtype=np.uint8).tobytes())
    hit = [i for i, (pos, size, _) in enumerate(packets) if pos < start + GARBAGE_BYTES and pos + size > start]
    assert hit, "the garbage must land in the video's packets"
    next_key = next((i for i in range(hit[-1] + 1, len(packets)) if packets[i][2]), len(packets))
    return list(range(hit[0], next_key))


@dataclass
class Inputs:
    root: Path
    expected_images: dict[tuple[str, str | None], np.ndarray]  # (source, member) -> the pixels the job must see
    damaged_frames: list[int]


def build_inputs(root: Path, data_dir: Path) -> Inputs:
    coco = data_dir / "coco_val2017_mini"
    photo = cv2.imread(str(coco / CONVERTED_FROM))
    alpha = np.linspace(0, 255, photo.shape[1], dtype=np.uint8)[None].repeat(photo.shape[0], axis=0)
    sideways = cv2.rotate(cv2.imread(str(coco / ROTATED_FROM)), cv2.ROTATE_90_COUNTERCLOCKWISE)
    jpeg = (coco / LOOSE_PHOTOS[0]).read_bytes()
    files = {
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) * 4 // 10],
        "noise.jpg": np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes(),
        "notes.mp4": b"these are my notes, not a video\n" * 40,
        "huge.png": forged_png(20000, 20000),
        SKIPPED: b"an unsupported extension: listed, skipped, counted",
        "gray.png": encode(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), ".png"),
        "deep16.png": encode(photo.astype(np.uint16) * 257, ".png"),  # 16 bits per channel
        "rgba.png": encode(np.dstack([photo, alpha]), ".png"),
        "tiny.png": encode(cv2.resize(photo, (8, 8), interpolation=cv2.INTER_AREA), ".png"),
        # As a phone camera stores it: the pixels sideways, and EXIF orientation 6 (display
        # rotated 90 degrees clockwise) to show the photo upright.
        "rotated.jpg": jpeg_with_orientation(sideways, 6),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    for name in LOOSE_PHOTOS:
        shutil.copyfile(coco / name, root / name)
    write_audio_only(root / "audio_only.mp4")
    damaged = damage_video(data_dir / "videos" / VIDEO, root / f"damaged_{VIDEO}")
    members = {name: (coco / photo_name).read_bytes() for name, photo_name in TAR_PHOTOS.items()}
    members["shard/broken.jpg"] = files["truncated.jpg"]
    write_tar(root / "shard.tar", {name: members[name] for name in TAR_MEMBERS})
    # Names that are not UTF-8 (Latin-1, as old file servers and tools write them): read, annotated, and
    # stored under their text form (storage.text_form): the bytes that are not UTF-8, and "%", as %XX.
    Path(os.fsdecode(os.path.join(os.fsencode(root), LATIN1_FILE))).write_bytes(jpeg)
    # GNU format: the raw bytes in the header (PAX, tarfile's default, would store the name as UTF-8)
    with tarfile.open(root / "latin1.tar", "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as archive:
        info = tarfile.TarInfo(LATIN1_MEMBER.decode("latin-1"))
        info.size = len(jpeg)
        archive.addfile(info, io.BytesIO(jpeg))

    # The pixels the job must annotate, decoded here without the job's image code.
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    stored = cv2.imdecode(np.frombuffer(files["rotated.jpg"], np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    expected = {
        "gray.png": cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR),
        "deep16.png": photo,  # 16 -> 8 bits drops the low byte: v * 257 >> 8 == v
        "rgba.png": photo,  # alpha dropped
        "tiny.png": cv2.imdecode(np.frombuffer(files["tiny.png"], np.uint8), cv2.IMREAD_COLOR),
        "rotated.jpg": cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE),  # the displayed orientation
        **{name: cv2.imread(str(coco / name)) for name in LOOSE_PHOTOS},
    }
    images = {(str(root / name), None): image for name, image in expected.items()}
    images.update({(str(root / "shard.tar"), member): cv2.imread(str(coco / name)) for member, name in TAR_PHOTOS.items()})
    images[(f"s3://{BUCKET}/photo.jpg", None)] = cv2.imread(str(coco / LOOSE_PHOTOS[1]))
    images[(f"{root}/{LATIN1_TEXT}", None)] = cv2.imread(str(coco / LOOSE_PHOTOS[0]))
    images[(str(root / "latin1.tar"), LATIN1_MEMBER_TEXT)] = cv2.imread(str(coco / LOOSE_PHOTOS[0]))
    return Inputs(root, images, damaged)


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def put_s3_inputs(endpoint: str, data_dir: Path) -> None:
    """A readable photo and two archived objects: S3 answers GETs of those with HTTP 403 (InvalidObjectState)."""
    client = s3_client(endpoint)
    client.create_bucket(Bucket=BUCKET)
    photo = (data_dir / "coco_val2017_mini" / LOOSE_PHOTOS[1]).read_bytes()
    client.put_object(Bucket=BUCKET, Key="photo.jpg", Body=photo)
    client.put_object(Bucket=BUCKET, Key="archived.jpg", Body=photo, StorageClass="GLACIER")
    client.put_object(Bucket=BUCKET, Key="archived.mp4", Body=(data_dir / "videos" / VIDEO).read_bytes(),
                      StorageClass="GLACIER")


# --- the run ------------------------------------------------------------------------------


@dataclass
class Run:
    config: JobConfig
    summary: dict
    inputs: Inputs
    frames: list[dict]  # rows of the frames table
    people: object  # the people table (pyarrow)


def read_table(output: Path, name: str):
    return pads.dataset(str(output / name), format="parquet", partitioning="hive").to_table()


def job_config(inputs: list[str], output: Path, *extra: str) -> JobConfig:
    return load_config(CONFIG, [
        f"input={json.dumps(inputs)}", f"output={output}", f"model.net_size={list(NET_SIZE)}", "model.resize_mode=stretch",
        "write.render_images=false", "write.render_videos=false", *extra,
    ])


@pytest.fixture(scope="module")
def run(ray_session, moto_s3, data_dir, tmp_path_factory) -> Run:
    inputs = build_inputs(tmp_path_factory.mktemp("bad_inputs"), data_dir)
    put_s3_inputs(moto_s3, data_dir)
    output = tmp_path_factory.mktemp("bad_inputs_out")
    config = job_config([str(inputs.root), f"s3://{BUCKET}/"], output, f"s3.endpoint_url={moto_s3}",
                        f"sources.frames_per_segment={FRAMES_PER_SEGMENT}")
    summary = run_job(config)
    return Run(config, summary, inputs, read_table(output, "frames").to_pylist(), read_table(output, "people"))


def frame_rows(run: Run, name: str) -> list[dict]:
    """The frames rows of the input called ``name`` (a file name under the root or an S3 key), by frame index."""
    rows = [f for f in run.frames if f["source"] in (str(run.inputs.root / name), f"s3://{BUCKET}/{name}")]
    return sorted(rows, key=lambda f: (f["frame_index"], f["member"] or ""))


def assert_people_equal_estimate(run: Run, estimator, expected: dict[tuple[str, str | None, int], np.ndarray]):
    """The people rows of these frames are estimate() on these pixels (and no frame has others)."""
    people = run.people
    keypoints, scores = read_keypoints(people), people.column("score").to_numpy()
    columns = [people.column(c).to_pylist() for c in ("source", "member", "frame_index", "person_index")]
    rows: dict[tuple, list[tuple[int, int]]] = {}
    for i, (source, member, frame_index, person_index) in enumerate(zip(*columns)):
        rows.setdefault((source, member, frame_index), []).append((person_index, i))
    same_settings = job_estimator(estimator, run.config)
    found = 0
    for key, image in expected.items():
        persons = same_settings.estimate([image])[0]
        got = [i for _, i in sorted(rows.get(key, []))]
        assert len(got) == len(persons), key
        for row, person in zip(got, persons):
            assert_same_person(keypoints[row], scores[row], person, exact=not ran_on_cuda(run.summary), where=str(key))
        found += len(persons)
    return found


# --- the tests ----------------------------------------------------------------------------


def test_the_job_finishes_and_counts_everything(run: Run):
    summary, frames = run.summary, run.frames
    assert summary["inputs"] == {"images": 14, "videos": 4, "tars": 2, "skipped": 1, "already_done": 0}
    (skipped,) = summary["skipped_inputs"]
    assert skipped["uri"].endswith(SKIPPED) and "not annotated" in skipped["reason"]
    errors = [f for f in frames if f["status"] == "error"]
    assert summary["frames"] == len(frames) == 14 + VIDEO_FRAMES + 3 + len(TAR_MEMBERS) + 1
    assert summary["frames_failed"] == len(errors) == len(EXPECTED_ERRORS) + 1 + len(run.inputs.damaged_frames)
    assert summary["people"] == run.people.num_rows
    keys = [(f["source"], f["member"], f["frame_index"]) for f in frames]
    assert len(set(keys)) == len(keys), "a frame has two rows"
    assert not any(SKIPPED in f["source"] for f in frames)
    assert all(f["num_people"] == 0 and f["error"] for f in errors)
    assert all(f["error"] is None for f in frames if f["status"] == "ok")
    # each frame's num_people is its number of people rows
    people_keys = zip(*(run.people.column(c).to_pylist() for c in ("source", "member", "frame_index")))
    assert Counter(people_keys) == {key: f["num_people"] for key, f in zip(keys, frames) if f["num_people"]}


def test_status_names_the_failures_by_reason_with_examples(run: Run, capsys):
    """`openpose-ray status` of this output: every failed frame under a reason, each broken input named."""
    from openpose_ray.cli import main

    assert main(["status", run.config.output, "--json", "--endpoint-url", run.config.s3.endpoint_url]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["inputs"] == {"images": 14, "tars": 2, "videos_complete": 1, "videos_partial": 0, "videos_unreadable": 3}
    failures = status["failures"]
    assert failures["frames"] == status["frames_failed"] == run.summary["frames_failed"]
    assert sum(r["frames"] for r in failures["by_reason"]) == failures["frames"]
    named = {e["source"].rsplit("/", 1)[-1] for r in failures["by_reason"] for e in r["examples"]}
    assert set(EXPECTED_ERRORS) <= named | {m for r in failures["by_reason"] for e in r["examples"] for m in [e["member"]] if m}
    assert all("<input>" not in e["error"] for r in failures["by_reason"] for e in r["examples"])
    (skipped,) = status["last_summary"]["skipped_inputs"]  # inputs not read are named too, with the reason
    assert skipped["uri"].endswith(SKIPPED) and "not annotated" in skipped["reason"]


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_each_broken_input_has_one_clear_error_row(run: Run, name):
    kind, error_kind, fragments = EXPECTED_ERRORS[name]
    (row,) = frame_rows(run, name)
    assert (row["status"], row["source_kind"], row["frame_index"], row["num_people"]) == ("error", kind, 0, 0)
    assert row["error_kind"] == error_kind
    for fragment in fragments:
        assert fragment in row["error"], row["error"]


def test_oversized_image_is_refused_with_its_size(run: Run):
    (row,) = frame_rows(run, "huge.png")
    assert (row["width"], row["height"]) == (20000, 20000)  # from the header; the pixels were never allocated
    assert "raise sources.max_image_pixels" in row["error"]
    (truncated,) = frame_rows(run, "truncated.jpg")
    assert (truncated["width"], truncated["height"]) == (640, 425)  # known from the header too


def test_damaged_video_keeps_the_frames_before_and_after_the_damage(run: Run, data_dir, estimator):
    from openpose_ray.sources.decoding import decode_frames
    from openpose_ray.sources.listing import SourceObject
    from openpose_ray.sources.planning import plan_video

    rows = frame_rows(run, f"damaged_{VIDEO}")
    assert [f["frame_index"] for f in rows] == list(range(VIDEO_FRAMES))  # every frame once: none lost, none twice
    damaged = run.inputs.damaged_frames
    errors = [f["frame_index"] for f in rows if f["status"] == "error"]
    assert errors == damaged and 0 < damaged[0] and damaged[-1] < VIDEO_FRAMES - 1
    for f in rows:
        assert f["source_kind"] == "video" and f["timestamp"] == pytest.approx(f["frame_index"] / 30, abs=1e-9)
        if f["status"] == "error":
            assert f["error"].startswith("video frame not decoded: corrupt or missing data"), f["error"]
            assert "Invalid data found" in f["error"] and f["error_kind"] == "corrupt"
        else:
            assert (f["height"], f["width"]) == (994, 1768)

    # Every frame the job called ok is the intact video's frame, and is annotated as in a clean run.
    path = data_dir / "videos" / VIDEO
    stat = path.stat()
    (whole,) = plan_video(SourceObject(str(path), "video", stat.st_size, str(stat.st_mtime_ns)), 10_000, S3Config())
    intact = {f.frame_index: f.image for f in decode_frames(whole, SourcesConfig(), S3Config())}
    ok = [f["frame_index"] for f in rows if f["status"] == "ok"]
    source = str(run.inputs.root / f"damaged_{VIDEO}")
    found = assert_people_equal_estimate(run, estimator, {(source, None, i): intact[i] for i in ok})
    assert found > 0
    # ... and what the job's own decoder gives for the damaged file (one sequential segment) agrees.
    path = run.inputs.root / f"damaged_{VIDEO}"
    stat = path.stat()
    (whole,) = plan_video(SourceObject(str(path), "video", stat.st_size, str(stat.st_mtime_ns)), 10_000, S3Config())
    for frame in decode_frames(whole, SourcesConfig(), S3Config()):
        assert frame.status == ("error" if frame.frame_index in damaged else "ok"), frame.frame_index
        if frame.status == "ok":
            assert np.array_equal(frame.image, intact[frame.frame_index]), frame.frame_index


def test_tar_with_a_corrupt_member(run: Run):
    rows = frame_rows(run, "shard.tar")
    assert [(f["member"], f["frame_index"], f["status"]) for f in rows] == [
        ("shard/a.jpg", 0, "ok"), ("shard/broken.jpg", 1, "error"), ("shard/b.jpg", 2, "ok"),
    ]
    assert rows[1]["error"].startswith("cannot decode JPEG image: truncated") and rows[1]["error_kind"] == "corrupt"
    assert {f["source_kind"] for f in rows} == {"tar"}


def test_converted_and_rotated_images_are_annotated(run: Run, estimator):
    root = run.inputs.root
    for name in ("gray.png", "deep16.png", "rgba.png", "tiny.png", "rotated.jpg"):
        (row,) = frame_rows(run, name)
        expected = run.inputs.expected_images[(str(root / name), None)]
        assert row["status"] == "ok" and (row["height"], row["width"]) == expected.shape[:2], name
    (rotated,) = frame_rows(run, "rotated.jpg")
    assert (rotated["width"], rotated["height"]) == (640, 392)  # upright, as displayed; stored as 392x640
    (tiny,) = frame_rows(run, "tiny.png")
    assert tiny["num_people"] == 0
    counts = {name: frame_rows(run, name)[0]["num_people"] for name in ("gray.png", "deep16.png", "rgba.png", "rotated.jpg")}
    assert all(counts.values()), counts  # people found in each
    assert counts["deep16.png"] == counts["rgba.png"]  # both decode to the BGR original


def test_readable_images_equal_a_clean_run(run: Run, estimator):
    """Loose photos, converted images, tar members and the S3 photo: rows equal estimate() on their pixels."""
    expected = {(source, member, TAR_MEMBERS.index(member) if member in TAR_MEMBERS else 0): image
                for (source, member), image in run.inputs.expected_images.items()}
    for source, member, _ in expected:
        (row,) = [f for f in run.frames if (f["source"], f["member"]) == (source, member)]
        assert row["status"] == "ok", (source, member, row["error"])
    assert assert_people_equal_estimate(run, estimator, expected) > 0


def test_names_that_are_not_utf8_are_read_and_stored_as_their_lossless_text_form(run: Run):
    """The file and the tar member above: rows under the text form, which percent-decodes to the exact bytes."""
    from urllib.parse import unquote_to_bytes

    (photo,) = [f for f in run.frames if f["source"].endswith(LATIN1_TEXT)]
    (member,) = [f for f in run.frames if f["member"] == LATIN1_MEMBER_TEXT]
    assert photo["status"] == member["status"] == "ok" and photo["num_people"] == member["num_people"] > 0
    assert os.path.exists(unquote_to_bytes(photo["source"]))
    assert unquote_to_bytes(member["member"]) == LATIN1_MEMBER
    records = pads.dataset(str(Path(run.config.output) / "_manifest" / "inputs.parquet")).to_table().to_pylist()
    assert {r["source"] for r in records} >= {photo["source"], member["source"]}


def test_s3_object_vanishing_between_listing_and_reading(moto_s3, data_dir, tmp_path, estimator, monkeypatch):
    """Listed, then deleted before it is read: an error row, and its shard mate is still annotated.

    The stage functions of the job run here in process, in order, so the objects can be
    deleted exactly between two stages: gone.jpg and gone.mp4 after listing, late.mp4
    after planning (its segments are decoded from a plan of an object that is gone).
    """
    from openpose_ray.models.registry import get_entry
    from openpose_ray.models.weights import resolve_weights
    from openpose_ray.pipeline.listing_source import iter_work_items
    from openpose_ray.pipeline.runner import make_provenance
    from openpose_ray.pipeline.records import from_row
    from openpose_ray.pipeline.inference_actor import InferenceActor
    from openpose_ray.pipeline.stages import plan_shards, postprocess_and_write, prepare_shard

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = s3_client(moto_s3)
    client.create_bucket(Bucket="vanishing")
    photo = data_dir / "coco_val2017_mini" / LOOSE_PHOTOS[1]
    video = (data_dir / "videos" / "street_720p_h264.avi").read_bytes()  # 205 frames
    for key, body in {"kept.jpg": photo.read_bytes(), "gone.jpg": photo.read_bytes(), "gone.mp4": video,
                      "late.mp4": video}.items():
        client.put_object(Bucket="vanishing", Key=key, Body=body)

    output = tmp_path / "out"
    config = job_config(["s3://vanishing/"], output, f"s3.endpoint_url={moto_s3}", "sources.frames_per_segment=64")
    listed = list(iter_work_items("s3://vanishing/", config))
    assert sorted(type(from_row(item)).__name__ for item in listed) == ["Shard", "ToPlan", "ToPlan"]
    client.delete_object(Bucket="vanishing", Key="gone.jpg")
    client.delete_object(Bucket="vanishing", Key="gone.mp4")
    planned = [row for item in listed for row in plan_shards(item, config)]
    client.delete_object(Bucket="vanishing", Key="late.mp4")
    weights = resolve_weights(get_entry(config.model.name))
    actor = InferenceActor(config, weights, "cpu", 2, peaks_on_device=False)
    provenance = make_provenance(config, weights.file_sha256)
    for row in planned:
        postprocess_and_write(actor(prepare_shard(row, config)), config, provenance)

    frames = read_table(output, "frames").to_pylist()
    by_name = {}
    for f in frames:
        by_name.setdefault(f["source"].rsplit("/", 1)[-1], []).append(f)
    assert sorted(by_name) == ["gone.jpg", "gone.mp4", "kept.jpg", "late.mp4"]
    (kept,) = by_name["kept.jpg"]
    assert kept["status"] == "ok" and kept["num_people"] > 0
    (gone,) = by_name["gone.jpg"]
    assert gone["status"] == "error"
    assert gone["error"] == "cannot read image: object disappeared since it was listed: s3://vanishing/gone.jpg"
    assert gone["error_kind"] == "missing"
    (gone_video,) = by_name["gone.mp4"]
    assert gone_video["status"] == "error" and gone_video["source_kind"] == "video"
    assert gone_video["error"] == "cannot read video: object disappeared since it was listed: s3://vanishing/gone.mp4"
    late = sorted(by_name["late.mp4"], key=lambda f: f["frame_index"])
    assert [f["frame_index"] for f in late] == list(range(205))  # one row per planned frame
    assert {(f["status"], f["error"], f["error_kind"]) for f in late} == {
        ("error", "object disappeared since it was listed: s3://vanishing/late.mp4", "missing")}

    people = read_table(output, "people")
    assert set(people.column("source").to_pylist()) == {"s3://vanishing/kept.jpg"}
    expected = job_estimator(estimator, config).estimate([cv2.imread(str(photo))])[0]
    order = np.argsort(people.column("person_index").to_numpy())
    assert np.array_equal(read_keypoints(people)[order], np.stack([p.keypoints for p in expected]))


@pytest.mark.parametrize("operation, code, reason", [("get_object", "AccessDenied", "AccessDenied"),
                                                     ("head_object", "403", "Forbidden")])
def test_access_denied_by_a_policy_is_a_clear_error(monkeypatch, operation, code, reason):
    """HTTP 403 from a bucket policy (the loopback server only enforces policies with IAM auth on: stubbed here)."""
    import boto3
    from botocore.stub import Stubber

    from openpose_ray.sources import AccessDenied, open_uri, read_bytes, s3io

    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    stubber = Stubber(client)
    stubber.add_client_error(operation, service_error_code=code, http_status_code=403)
    monkeypatch.setattr(s3io, "s3_client", lambda s3: client)
    read = read_bytes if operation == "get_object" else open_uri
    with stubber, pytest.raises(AccessDenied) as raised:
        read("s3://private/photo.jpg", S3Config())
    assert str(raised.value) == (f"access denied (HTTP 403 {reason}): s3://private/photo.jpg; check the credentials "
                                 "of the job's workers and the bucket and object policies")


def test_fail_on_error_decides_the_exit_code(ray_session, data_dir, tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    shutil.copyfile(data_dir / "coco_val2017_mini" / LOOSE_PHOTOS[0], root / "good.jpg")
    (root / "empty.jpg").write_bytes(b"")
    common = ["run", "--config", str(CONFIG), "--set", f"input=[{root}]", "--set", f"model.net_size={list(NET_SIZE)}", "--set", "model.resize_mode=stretch",
              "--set", "write.render_images=false", "--set", "write.render_videos=false"]
    assert cli_main(common + ["--set", f"output={tmp_path / 'lenient'}"]) == 0
    assert cli_main(common + ["--set", f"output={tmp_path / 'strict'}", "--set", "fail_on_error=true"]) == 1
    for name in ("lenient", "strict"):  # both wrote the good image and the error row
        frames = read_table(tmp_path / name, "frames").to_pylist()
        assert sorted((Path(f["source"]).name, f["status"]) for f in frames) == [("empty.jpg", "error"), ("good.jpg", "ok")]
    capsys.readouterr()
