"""The sources stage: listing (local, globs, S3), shard planning, image / video / tar decoding.

S3 tests run against a real S3 server (moto) on loopback. Video tests decode real
H.264 and VP9 files; segmented decoding must give exactly the frames (index, timestamp,
pixels) of one sequential decode.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import pickle
import shutil
import struct
import tarfile
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from synthetic_media import encode, forged_png, jpeg_with_orientation
from openpose_ray.jobconfig import S3Config, SourcesConfig
from openpose_ray.sources import (
    Frame,
    Shard,
    SourceObject,
    UnreadableVideo,
    decode_frames,
    group_images,
    iter_objects,
    open_uri,
    plan_tar,
    plan_video,
    probe_image,
    read_bytes,
)
from openpose_ray.sources import listing, s3io
from openpose_ray.sources import images as images_module

SOURCES = SourcesConfig()
LOCAL = S3Config()
STREET = "videos/street_720p_h264.avi"  # H.264 (in an MP4 container despite the name), 205 frames, 50 fps
SPORTS = "videos/sports_994p_vp9.mp4"  # VP9 in MP4, 230 frames, 30 fps


def local_object(path: Path) -> SourceObject:
    (obj,) = iter_objects(str(path), SOURCES, LOCAL)
    return obj


def decode_all(shards, sources=SOURCES, s3=LOCAL) -> list[Frame]:
    return [frame for shard in shards for frame in decode_frames(shard, sources, s3)]


def gradient(height: int = 24, width: int = 40) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 6 % 256, y * 10 % 256, (x + y) * 3 % 256], axis=-1).astype(np.uint8)


# --- listing ------------------------------------------------------------------------------


def make_tree(root: Path) -> list[str]:
    files = ["a.jpg", "B.PNG", "c.mp4", "d.tar", "e.txt", "sub/x.jpeg", "sub/deeper/y.avi", "sub-2/z.webp", "sub0.JPG"]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    return files


def test_local_listing_kinds_order_and_recursive_flag(tmp_path):
    files = make_tree(tmp_path)
    objects = list(iter_objects(str(tmp_path), SOURCES, LOCAL))
    # The order of S3 keys: relative paths sorted as strings ("sub-2/" < "sub/" < "sub0").
    assert [o.uri for o in objects] == [str(tmp_path / name) for name in sorted(files)]
    kinds = {os.path.relpath(o.uri, tmp_path): o.kind for o in objects}
    assert kinds == {
        "a.jpg": "image", "B.PNG": "image", "c.mp4": "video", "d.tar": "tar", "e.txt": "unsupported",
        "sub/x.jpeg": "image", "sub/deeper/y.avi": "video", "sub-2/z.webp": "image", "sub0.JPG": "image",
    }
    first = objects[0]
    assert first.size == len(b"B.PNG") and first.version == str((tmp_path / "B.PNG").stat().st_mtime_ns)

    flat = list(iter_objects(str(tmp_path), SourcesConfig(recursive=False), LOCAL))
    assert [os.path.basename(o.uri) for o in flat] == ["B.PNG", "a.jpg", "c.mp4", "d.tar", "e.txt", "sub0.JPG"]

    assert list(iter_objects(str(tmp_path / "c.mp4"), SOURCES, LOCAL))[0].kind == "video"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(iter_objects(str(tmp_path / "nope"), SOURCES, LOCAL))


def test_local_listing_is_lazy(tmp_path, monkeypatch):
    for d in range(50):  # 10_000 empty images in 50 folders
        folder = tmp_path / f"d{d:02d}"
        folder.mkdir()
        for i in range(200):
            (folder / f"{i:03d}.jpg").touch()
    scanned = []
    real_scandir = os.scandir
    monkeypatch.setattr(listing.os, "scandir", lambda path: scanned.append(path) or real_scandir(path))

    objects = iter_objects(str(tmp_path), SOURCES, LOCAL)
    assert scanned == []  # nothing is listed before the first object is asked for
    (first,) = itertools.islice(objects, 1)
    assert first.uri == str(tmp_path / "d00" / "000.jpg")
    assert scanned == [str(tmp_path), str(tmp_path / "d00")]  # only the folders on the way to it


def test_local_symlinks(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "dir").mkdir(parents=True)
    outside.mkdir()
    (root / "dir" / "in.jpg").write_bytes(b"x")
    (outside / "secret.jpg").write_bytes(b"y")
    (root / "link_in.jpg").symlink_to(root / "dir" / "in.jpg")
    (root / "link_out.jpg").symlink_to(outside / "secret.jpg")
    (root / "link_outdir").symlink_to(outside)
    (root / "broken.jpg").symlink_to(root / "missing.jpg")
    (root / "dir" / "loop").symlink_to(root)

    by_name = {os.path.relpath(o.uri, root): o for o in iter_objects(str(root), SOURCES, LOCAL)}
    assert by_name["link_in.jpg"].kind == "image"
    assert by_name["link_in.jpg"].uri == str(root / "link_in.jpg")  # the link's path, not its target
    assert by_name["link_out.jpg"].kind == "skipped" and "outside the input root" in by_name["link_out.jpg"].reason
    assert by_name["link_outdir"].kind == "skipped"
    assert by_name["broken.jpg"].kind == "skipped" and by_name["broken.jpg"].reason == "broken symlink"
    assert by_name["dir/loop"].kind == "skipped" and "already listed" in by_name["dir/loop"].reason
    assert by_name["dir/in.jpg"].kind == "image"

    followed = {os.path.relpath(o.uri, root): o.kind for o in iter_objects(str(root), SourcesConfig(follow_symlinks=True), LOCAL)}
    assert followed["link_out.jpg"] == "image" and followed["link_outdir/secret.jpg"] == "image"


def test_local_globs(tmp_path):
    make_tree(tmp_path)

    def names(pattern, **kwargs):
        objects = iter_objects(str(tmp_path / pattern), SourcesConfig(**kwargs), LOCAL)
        return [os.path.relpath(o.uri, tmp_path) for o in objects]

    assert names("*.jpg") == ["a.jpg"]  # case-sensitive, one level
    assert names("*/*.jpeg") == ["sub/x.jpeg"]
    assert names("**/*.avi") == ["sub/deeper/y.avi"]
    assert names("[ab].*") == ["a.jpg"]
    assert names("sub?2/*") == ["sub-2/z.webp"]
    assert names("su[!-]") == ["sub/deeper/y.avi", "sub/x.jpeg"]  # a matching folder is expanded
    assert names("su[!-]", recursive=False) == ["sub/x.jpeg"]
    assert names("nothing*") == []


# --- S3 -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server():
    """A real S3 server (moto) on loopback; yields the S3Config to reach it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            yield S3Config(endpoint_url=f"http://127.0.0.1:{server.get_host_and_port()[1]}")
        finally:
            server.stop()


@pytest.fixture(scope="module")
def bucket(s3_server, data_dir):
    """Bucket "media": 1003 tiny objects under many/, a nested folder, and real media."""
    client = s3io.s3_client(s3_server)
    client.create_bucket(Bucket="media")
    keys = [f"many/img{i:04d}.jpg" for i in range(1000)] + ["many/clip.mp4", "many/notes.txt", "many/sub/deep.png"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: client.put_object(Bucket="media", Key=key, Body=key.encode()), keys))
    client.put_object(Bucket="media", Key="many/folder-marker/", Body=b"")
    for name in (STREET, "coco_val2017_mini/000000000785.jpg"):
        client.put_object(Bucket="media", Key=f"real/{name}", Body=(data_dir / name).read_bytes())
    return client, sorted(keys)


def test_s3_listing_paginates_in_key_order(bucket, s3_server):
    _, keys = bucket
    objects = list(iter_objects("s3://media/many/", SOURCES, s3_server))
    assert [o.uri for o in objects] == [f"s3://media/{key}" for key in keys]  # > 1000: two pages
    kinds = {o.uri.rsplit("/", 1)[-1]: o.kind for o in objects}
    assert kinds["clip.mp4"] == "video" and kinds["notes.txt"] == "unsupported" and kinds["img0000.jpg"] == "image"
    assert objects[0].size == len(keys[0]) and len(objects[0].version) == 32  # the ETag, unquoted

    flat = list(iter_objects("s3://media/many", SourcesConfig(recursive=False), s3_server))  # no slash: a prefix
    assert len(flat) == len(keys) - 1 and not any("/sub/" in o.uri for o in flat)

    (single,) = iter_objects("s3://media/many/img0007.jpg", SOURCES, s3_server)
    assert single == next(o for o in objects if o.uri == single.uri)
    globbed = list(iter_objects("s3://media/many/img00[0-1]?.jpg", SOURCES, s3_server))
    assert [o.uri for o in globbed] == [f"s3://media/many/img{i:04d}.jpg" for i in range(20)]
    assert [o.uri for o in iter_objects("s3://media/**/*.png", SOURCES, s3_server)] == ["s3://media/many/sub/deep.png"]


def test_s3_range_reader_seeks_without_reading_everything(bucket, s3_server, data_dir):
    local = (data_dir / STREET).read_bytes()
    with open_uri(f"s3://media/real/{STREET}", s3_server, block_size=64 * 1024, cache_blocks=2) as reader:
        assert reader.seekable() and reader.size == len(local)
        reader.seek(-1000, io.SEEK_END)
        assert reader.read() == local[-1000:]
        reader.seek(100_000)
        assert reader.read(200_000) == local[100_000:300_000]
        assert reader.tell() == 300_000
        assert reader.requests == 1 + 4  # the last block, then blocks 1..4: not the whole object
    assert read_bytes(f"s3://media/real/{STREET}", s3_server) == local


def test_s3_video_plan_and_decode_equal_local(bucket, s3_server, data_dir, monkeypatch):
    monkeypatch.setattr(s3io, "DEFAULT_BLOCK_SIZE", 256 * 1024)  # many ranged GETs and seeks
    (remote,) = iter_objects(f"s3://media/real/{STREET}", SOURCES, s3_server)
    remote_plan = plan_video(remote, 64, s3_server, segment_cut="frames")  # the last segment starts mid-GOP
    local_plan = plan_video(local_object(data_dir / STREET), 64, LOCAL, segment_cut="frames")
    strip = lambda s: (s.start_frame, s.end_frame, s.frame_pts, s.time_base, s.seek_ts, s.stream_index)  # noqa: E731
    assert [strip(s) for s in remote_plan] == [strip(s) for s in local_plan]
    last = remote_plan[-1]
    assert last.seek_ts is not None  # decoded after a seek to the key frame at 150
    remote_frames = decode_all([last], s3=s3_server)
    local_frames = decode_all([local_plan[-1]])
    assert len(remote_frames) == 205 - 192 and all(f.status == "ok" for f in remote_frames)
    for a, b in zip(remote_frames, local_frames):
        assert (a.frame_index, a.timestamp) == (b.frame_index, b.timestamp)
        assert np.array_equal(a.image, b.image)


def test_s3_images_tar_and_changed_objects(bucket, s3_server, data_dir, tmp_path):
    client, _ = bucket
    photo = data_dir / "coco_val2017_mini/000000000785.jpg"
    (obj,) = iter_objects("s3://media/real/coco_val2017_mini/000000000785.jpg", SOURCES, s3_server)
    (shard,) = group_images([obj], 8)
    (frame,) = decode_all([shard], s3=s3_server)
    assert frame.status == "ok" and np.array_equal(frame.image, cv2.imread(str(photo)))

    odd = "odd/photo #1?.jpg"  # "#" and "?" are part of an S3 key, not a fragment or query
    client.put_object(Bucket="media", Key=odd, Body=photo.read_bytes())
    (listed,) = iter_objects("s3://media/odd/", SOURCES, s3_server)
    assert listed.uri == f"s3://media/{odd}"
    assert decode_all(group_images([listed], 1), s3=s3_server)[0].status == "ok"

    client.put_object(Bucket="media", Key="t/a.tar", Body=make_tar(tmp_path / "a.tar", [("x.png", encode(gradient(), ".png"))]))
    (tar,) = iter_objects("s3://media/t/a.tar", SOURCES, s3_server)
    (member,) = decode_all(plan_tar(tar), s3=s3_server)
    assert member.status == "ok" and member.member == "x.png" and np.array_equal(member.image, gradient())

    client.put_object(Bucket="media", Key="t/a.tar", Body=b"replaced")  # after listing: another version
    (changed,) = decode_all(plan_tar(tar), s3=s3_server)
    assert changed.status == "error" and "changed since it was listed" in changed.error
    client.delete_object(Bucket="media", Key="t/a.tar")
    (gone,) = decode_all(plan_tar(tar), s3=s3_server)
    assert gone.status == "error" and "disappeared" in gone.error


# --- video planning and decoding ----------------------------------------------------------


@pytest.mark.parametrize("name, count, fps, key_frame_bounds", [(STREET, 205, 50, [0, 64, 150, 205]),
                                                                (SPORTS, 230, 30, [0, 60, 120, 180, 230])])
def test_plan_video_frames_and_timestamps(data_dir, name, count, fps, key_frame_bounds):
    """Segments tile the video with its own pts; cut "frames" every 64 frames, cut "key_frames" (the
    default) at the key frames near those cuts (street: key frames 0 and 150, none within 32-128
    frames of 0, so the cut at 64 stays; sports: every 60). A segment that starts at a key
    frame is decoded from it."""
    shards = plan_video(local_object(data_dir / name), 64, LOCAL, segment_cut="frames")
    assert [(s.start_frame, s.end_frame) for s in shards] == [(i, min(i + 64, count)) for i in range(0, count, 64)]
    at_keys = plan_video(local_object(data_dir / name), 64, LOCAL)
    assert [s.start_frame for s in at_keys] + [at_keys[-1].end_frame] == key_frame_bounds
    assert [s.frame_pts for s in at_keys] != [s.frame_pts for s in shards]
    assert sum((s.frame_pts for s in at_keys), ()) == sum((s.frame_pts for s in shards), ())
    seeks = {s.start_frame: s.seek_ts for s in at_keys}  # the pts of the key frame decoding starts at
    if name == STREET:
        assert seeks == {0: None, 64: None, 150: at_keys[2].frame_pts[0]}  # 64: decoded from frame 0
    else:
        assert seeks == {0: None, **{s.start_frame: s.frame_pts[0] for s in at_keys[1:]}}
    assert {s.segment_cut for s in at_keys} == {"key_frames"} and {s.segment_cut for s in shards} == {"frames"}
    all_pts = [p for s in shards for p in s.frame_pts]
    with av.open(str(data_dir / name)) as container:  # the container's own view, independently
        stream = container.streams.video[0]
        expected = sorted(p.pts for p in container.demux(stream) if p.size)
        time_base = stream.time_base
    assert all_pts == expected and len(all_pts) == count
    timestamps = [float(p * Fraction(*shards[0].time_base)) for p in all_pts]
    assert Fraction(*shards[0].time_base) == time_base
    assert timestamps == [i / fps for i in range(count)]  # constant-rate files: frame i at i / fps
    assert len({s.shard_id for s in shards}) == len(shards)


def test_segment_bounds_move_cuts_to_key_frames_between_half_and_twice_a_segment():
    from openpose_ray.sources.planning import segment_bounds

    every_250 = list(range(0, 1000, 250))  # x264's default key frame interval
    assert segment_bounds(range(1000), 1000, every_250, 128, "frames") == [0, 128, 256, 384, 512, 640, 768, 896, 1000]
    # no key frame after 750, whose 250 frames are less than two segments: one segment
    assert segment_bounds(range(1000), 1000, every_250, 128, "key_frames") == [0, 250, 500, 750, 1000]
    assert segment_bounds(range(300), 300, [0, 96, 160], 128, "key_frames") == [0, 96, 160, 300]  # a tie: the earlier
    # 63 is less than half a segment in, 257 more than two: neither moves the cut at 128; after 257 no
    # key frame: a cut every 128 frames until the rest (215) fits in two segments
    assert segment_bounds(range(600), 600, [0, 63, 257], 128, "key_frames") == [0, 128, 257, 385, 600]
    assert segment_bounds(range(10), 10, list(range(10)), 3, "key_frames") == [0, 3, 6, 9, 10]  # all key frames
    kept = list(range(0, 1000, 5))  # sampled: frames_per_segment counts kept frames
    assert segment_bounds(kept, 1000, every_250, 16, "key_frames")[:5] == [0, 80, 160, 250, 330]
    rng = np.random.default_rng(0)
    for _ in range(200):  # segments tile the video and keep 1 .. 2 x frames_per_segment kept frames
        frames, per_segment = int(rng.integers(1, 400)), int(rng.integers(1, 40))
        kept = sorted(rng.choice(frames, int(rng.integers(1, frames + 1)), replace=False).tolist())
        keys = sorted(rng.choice(frames, int(rng.integers(0, frames + 1)), replace=False).tolist())
        bounds = segment_bounds(kept, frames, keys, per_segment, "key_frames")
        assert bounds[0] == 0 and bounds[-1] == frames and all(a < b for a, b in zip(bounds, bounds[1:]))
        counts = [sum(a <= k < b for k in kept) for a, b in zip(bounds, bounds[1:])]
        assert all(1 <= c <= 2 * per_segment for c in counts) and sum(counts) == len(kept)
        assert all(b in keys or b in kept for b in bounds[1:-1])
    with pytest.raises(ValueError, match="segment_cut"):
        segment_bounds(range(10), 10, [], 3, "gop")


def test_sample_frames_by_step_and_by_rate():
    from openpose_ray.sources.planning import sample_frames

    seconds = [i / 30 for i in range(20)]
    assert sample_frames(seconds, frame_step=5) == [0, 5, 10, 15]
    assert sample_frames(seconds, target_fps=10) == [0, 3, 6, 9, 12, 15, 18]
    assert sample_frames(seconds, target_fps=7) == [0, 4, 9, 13, 17]  # the nearest frames
    assert sample_frames(seconds, target_fps=30) == sample_frames(seconds, target_fps=100) == list(range(20))
    assert sample_frames(seconds, frame_step=2, target_fps=10) == [0, 6, 12, 18]
    irregular = [0.0, 0.01, 0.5, 0.52, 1.7, 2.0]  # a variable frame rate: real times decide
    assert sample_frames(irregular, target_fps=2) == [0, 2, 3, 4, 5]  # 1.0 s: 0.52 is nearer than 1.7
    assert sample_frames([], target_fps=5) == []


@pytest.mark.parametrize("name, step, rate, per_segment", [(STREET, 5, None, 100), (SPORTS, 1, 10.0, 16)])
def test_sampled_video_decodes_the_kept_frames_only_with_their_own_index_and_time(data_dir, name, step, rate, per_segment):
    """Segments of a sampled video tile it, yield only the kept frames, with the frame's true index,
    timestamp and pixels (as decoding every frame gives them)."""
    obj = local_object(data_dir / name)
    (whole,) = plan_video(obj, 10_000, LOCAL)
    every = {f.frame_index: f for f in decode_frames(whole, SOURCES, LOCAL)}
    segments = plan_video(obj, per_segment, LOCAL, frame_step=step, target_fps=rate)
    assert segments[0].start_frame == 0 and segments[-1].end_frame == len(every)
    assert all(a.end_frame == b.start_frame for a, b in zip(segments, segments[1:]))
    assert all(len(s.sampled) <= 2 * per_segment for s in segments)  # moved to key frames: at most twice
    frames = decode_all(segments)
    want = list(range(0, len(every), step if rate is None else 3))  # 10 fps of a 30 fps video: every 3rd
    assert [f.frame_index for f in frames] == want
    for frame in frames:
        full = every[frame.frame_index]
        assert frame.status == "ok" and frame.timestamp == full.timestamp
        assert np.array_equal(frame.image, full.image), frame.frame_index
    unsampled = {s.shard_id for s in plan_video(obj, per_segment, LOCAL)}
    assert not unsampled & {s.shard_id for s in segments}  # sampled segments are other shards


def test_a_video_with_a_display_matrix_is_decoded_as_players_show_it(data_dir, tmp_path):
    """A phone-style portrait video (pixels stored turned, a display matrix turning them back) decodes
    to the upright frames: the source clip's pixels (within the 4:4:4 round trip), width and height."""
    from synthetic_media import rotated_clip, video_clip

    from openpose_ray.sources.decoding import displayed

    upright = video_clip(data_dir / STREET, tmp_path / "upright.mp4", 6, width=160)
    turned = rotated_clip(upright, tmp_path / "turned.mp4")
    with av.open(str(turned)) as container:
        stored = next(container.decode(video=0))
        assert (stored.width, stored.height, stored.rotation) == (90, 160, -90)  # stored portrait, shown turned
    want = decode_all(plan_video(local_object(upright), 64, LOCAL))
    got = decode_all(plan_video(local_object(turned), 4, LOCAL))
    assert len(got) == len(want) == 6
    for a, b in zip(got, want):
        assert (a.status, a.frame_index, a.width, a.height) == ("ok", b.frame_index, 160, 90)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 1.0
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(displayed(image, -90), np.rot90(image, -1))  # clockwise
    assert np.array_equal(displayed(image, 90), np.rot90(image, 1))
    assert np.array_equal(displayed(image, 180), displayed(image, -180)) and displayed(image, 0) is image


@pytest.mark.parametrize("main_is_default", [True, False])
def test_of_several_video_streams_the_largest_is_annotated(tmp_path, main_is_default):
    """A camera file with a small preview stream first and the main stream second: the main one is read,
    whether it is marked default or not (the muxer then marks the preview default)."""
    path = tmp_path / "two_streams.mp4"
    with av.open(str(path), "w") as out:
        streams = []
        for width, height, default in ((160, 90, False), (320, 180, main_is_default)):
            stream = out.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.disposition = av.stream.Disposition.default if default else av.stream.Disposition(0)
            streams.append(stream)
        for index in range(4):
            for stream in streams:
                image = np.full((stream.height, stream.width, 3), 40 * index, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                    out.mux(packet)
        for stream in streams:
            for packet in stream.encode():
                out.mux(packet)
    (shard,) = plan_video(local_object(path), 64, LOCAL)
    frames = decode_all([shard])
    assert shard.stream_index == 1 and len(frames) == 4
    assert {(f.status, f.width, f.height) for f in frames} == {("ok", 320, 180)}


def test_an_mp4_cut_short_says_so_in_one_error_row(data_dir, tmp_path):
    """The sports MP4 (moov first) cut in half: the frames that are there, however the video is cut into
    segments, then one error row at the next index naming the truncation; complete files get none."""
    data = (data_dir / SPORTS).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    whole = plan_video(local_object(cut), 10_000, LOCAL)
    segments = plan_video(local_object(cut), 40, LOCAL)
    present = whole[-1].end_frame
    assert 0 < present < 230 and segments[-1].end_frame == present
    assert [s.truncated is not None for s in segments] == [False] * (len(segments) - 1) + [True]
    rows = [(f.frame_index, f.status) for f in decode_all(segments)]
    assert rows == [(f.frame_index, f.status) for f in decode_all(whole)]
    assert rows[-1] == (present, "error") and len(rows) == present + 1
    (last,) = [f for f in decode_all(whole) if f.frame_index == present]
    assert f"ends after {present} of the 230 frames" in last.error
    assert all(s.truncated is None for s in plan_video(local_object(data_dir / SPORTS), 64, LOCAL))


@pytest.mark.parametrize("name, compared", [(STREET, 205), (SPORTS, 192)])
@pytest.mark.parametrize("cut", ["frames", "key_frames"])
def test_segmented_decode_equals_sequential(data_dir, name, compared, cut):
    obj = local_object(data_dir / name)
    segments = [s for s in plan_video(obj, 64, LOCAL, segment_cut=cut) if s.start_frame < compared]
    assert len(segments) >= 3 and any(s.seek_ts is not None for s in segments)
    compared = segments[-1].end_frame
    (whole,) = plan_video(obj, 10_000, LOCAL)
    sequential = list(itertools.islice(decode_frames(whole, SOURCES, LOCAL), compared))
    segmented = decode_all(segments)
    assert len(segmented) == len(sequential) == compared
    for a, b in zip(segmented, sequential):
        assert a.status == b.status == "ok"
        assert (a.source, a.frame_index, a.timestamp, a.width, a.height) == (b.source, b.frame_index, b.timestamp, b.width, b.height)
        assert a.image.dtype == np.uint8 and a.image.shape[2] == 3
        assert np.array_equal(a.image, b.image), f"frame {a.frame_index} differs"


def make_long_gop_video(path: Path, count: int = 200, gop: int = 50) -> None:
    """H.264 with B-frames and a key frame exactly every ``gop`` frames; frame i is a distinct pattern."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "2", "crf": "18"}
        ramp = np.add.outer(np.arange(48), np.arange(64))
        for i in range(count):
            image = (np.dstack([ramp + 3 * i, np.full((48, 64), 7 * i), ramp[::-1] + i]) % 256).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_segments_cut_at_key_frames_are_decoded_from_them(tmp_path, monkeypatch, suffix):
    """A key frame every 50 frames and B-frames, segments of 40 asked: the cut moves to the key frames
    (50, 100, 150) and each segment's first seek lands on its own key frame (Matroska indexes key
    frames by pts, MP4 by dts: seeking to the key frame's pts lands on it in both; its smaller dts
    lands a GOP early in Matroska). The frames equal a sequential decode."""
    from openpose_ray.sources import decoding

    path = tmp_path / f"long_gop{suffix}"
    make_long_gop_video(path)
    landings = []

    def landed(packet, shard):
        ok = real(packet, shard)
        landings.append((shard.start_frame, packet.pts, ok))
        return ok

    real = decoding._landed_at_or_before
    monkeypatch.setattr(decoding, "_landed_at_or_before", landed)
    segments = plan_video(local_object(path), 40, LOCAL)
    assert [s.start_frame for s in segments] == [0, 50, 100, 150]
    frames = decode_all(segments)
    starts = {s.start_frame: s.frame_pts[0] for s in segments}
    assert landings == [(start, starts[start], True) for start in (50, 100, 150)]
    (whole,) = plan_video(local_object(path), 10_000, LOCAL)
    sequential = decode_all([whole])
    assert [f.frame_index for f in frames] == [f.frame_index for f in sequential] == list(range(200))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, sequential))
    landings.clear()  # cut every 40 frames: decoded from the key frame before each start, correct all the same
    every_40 = decode_all(plan_video(local_object(path), 40, LOCAL, segment_cut="frames"))
    assert [start for start, _, ok in landings if ok] == [80, 120, 160]  # 40: from the start (key frame 0)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(every_40, sequential))


def test_corrupt_packet_gives_error_frames_not_a_crash(data_dir, tmp_path):
    path = tmp_path / "corrupt.mp4"
    shutil.copy(data_dir / SPORTS, path)
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    with open(path, "r+b") as f:  # scramble the payload of frames 70 and 71
        for pos, size in packets[70:72]:
            f.seek(pos)
            f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    segment = plan_video(local_object(path), 64, LOCAL, segment_cut="frames")[1]
    frames = decode_all([segment])
    assert sorted(f.frame_index for f in frames) == list(range(64, 128))  # one Frame per planned frame
    status = {f.frame_index: f.status for f in frames}
    assert all(status[i] == "ok" for i in [*range(64, 70), *range(120, 128)])  # before, and from the next key frame
    assert status[70] == status[71] == "error"
    assert all(f.status == "ok" or f.error.startswith("video frame not decoded: corrupt or missing data") for f in frames)


def make_avi_with_b_frames(path: Path, count: int = 40) -> None:
    """An AVI (no pts in the container) of H.264 with B-frames; frame i is uniformly 6 * i grey."""
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "10", "bf": "2", "crf": "10"}
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 6 * i, np.uint8), format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_avi_with_b_frames_is_numbered_in_output_order(tmp_path):
    path = tmp_path / "bframes.avi"
    make_avi_with_b_frames(path)
    shards = plan_video(local_object(path), 16, LOCAL)
    assert len(shards) == 1 and shards[0].order_by_output  # the container's pts cannot be trusted
    frames = decode_all(shards)
    assert [f.frame_index for f in frames] == list(range(40)) and all(f.status == "ok" for f in frames)
    brightness = [float(f.image.mean()) for f in frames]
    assert all(abs(b - 6 * i) < 4 for i, b in enumerate(brightness)), brightness
    assert all(a < b for a, b in zip([f.timestamp for f in frames], [f.timestamp for f in frames][1:]))


def test_unreadable_videos_raise_clear_errors(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(UnreadableVideo, match="not a readable video"):
        plan_video(local_object(text), 64, LOCAL)

    audio_only = tmp_path / "audio.mp4"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(UnreadableVideo, match="no video stream"):
        plan_video(local_object(audio_only), 64, LOCAL)


def test_video_changed_after_planning(data_dir, tmp_path):
    path = tmp_path / "v.mp4"
    shutil.copy(data_dir / STREET, path)
    shard = plan_video(local_object(path), 64, LOCAL)[0]
    os.utime(path, ns=(1, 1))
    frames = decode_all([shard])
    assert len(frames) == 64 and all(f.status == "error" and "changed since it was listed" in f.error for f in frames)
    assert frames[10].frame_index == 10 and frames[10].timestamp == pytest.approx(0.2)


# --- images -------------------------------------------------------------------------------


def image_frames(tmp_path, named_bytes: dict[str, bytes], sources=SOURCES) -> dict[str, Frame]:
    for name, data in named_bytes.items():
        (tmp_path / name).write_bytes(data)
    shards = list(group_images(iter_objects(str(tmp_path), sources, LOCAL), 3))
    return {os.path.basename(f.source): f for f in decode_all(shards, sources)}


def test_real_photo_matches_imread(data_dir):
    photos = sorted((data_dir / "coco_val2017_mini").glob("*.jpg"))
    shards = list(group_images(iter_objects(str(data_dir / "coco_val2017_mini"), SOURCES, LOCAL), 3))
    assert [len(s.uris) for s in shards] == [3, 1]  # the .json is not an image
    frames = decode_all(shards)
    assert [f.source for f in frames] == [str(p) for p in photos]
    for frame, photo in zip(frames, photos):
        expected = cv2.imread(str(photo))
        assert frame.status == "ok" and (frame.frame_index, frame.timestamp, frame.member) == (0, None, None)
        assert (frame.height, frame.width) == expected.shape[:2] and np.array_equal(frame.image, expected)
        assert probe_image(photo.read_bytes())[1:3] == (frame.width, frame.height)


def test_broken_images_become_error_frames(tmp_path, data_dir):
    jpeg = (data_dir / "coco_val2017_mini/000000000785.jpg").read_bytes()
    frames = image_frames(tmp_path, {
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) * 2 // 3],
        "random.jpg": np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "truncated.png": encode(gradient(), ".png")[:300],
        "tiny.png": encode(gradient(8, 8), ".png"),
    })
    assert frames["tiny.png"].status == "ok" and frames["tiny.png"].image.shape == (8, 8, 3)
    assert frames["empty.jpg"].error == "cannot decode image: empty file (0 bytes)"
    assert "cannot decode JPEG image: truncated" in frames["truncated.jpg"].error
    assert (frames["truncated.jpg"].width, frames["truncated.jpg"].height) == (640, 425)  # known from the header
    assert "not a JPEG/PNG/BMP/WebP/TIFF/GIF/AVIF or truncated" in frames["random.jpg"].error
    assert "cannot decode PNG image: corrupt or truncated" in frames["truncated.png"].error
    for name in ("empty.jpg", "truncated.jpg", "random.jpg", "truncated.png"):
        assert frames[name].status == "error" and frames[name].image is None


def test_grey_16bit_and_rgba_become_bgr_uint8(tmp_path):
    grey = gradient()[:, :, 1]
    deep = grey.astype(np.uint16) * 257 + 3  # 16-bit, low byte noise
    rgba = np.dstack([gradient(), np.full(grey.shape, 128, np.uint8)])
    frames = image_frames(tmp_path, {"grey.png": encode(grey, ".png"), "deep.png": encode(deep, ".png"), "rgba.png": encode(rgba, ".png")})
    for frame in frames.values():
        assert frame.status == "ok" and frame.image.dtype == np.uint8 and frame.image.shape == (24, 40, 3)
    assert np.array_equal(frames["grey.png"].image, np.dstack([grey] * 3))
    assert np.array_equal(frames["deep.png"].image, np.dstack([grey] * 3))  # 16 -> 8 bits: value // 256
    assert np.array_equal(frames["rgba.png"].image, gradient())  # alpha dropped


def test_oversized_image_refused_before_decoding(tmp_path, monkeypatch):
    calls = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(images_module.cv2, "imdecode", lambda *args: calls.append(1) or real_imdecode(*args))
    frames = image_frames(tmp_path, {"huge.png": forged_png(20000, 20000), "ok.png": encode(gradient(8, 8), ".png")})
    huge = frames["huge.png"]
    assert huge.status == "error" and huge.error.startswith("image of 20000x20000 exceeds max_image_pixels (100000000)")
    assert (huge.width, huge.height) == (20000, 20000)
    assert frames["ok.png"].status == "ok" and len(calls) == 1  # only the small one reached the decoder


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tiff", ".gif", ".avif"])
def test_header_probe_reads_dimensions(ext):
    fmt, width, height, complete = probe_image(encode(gradient(23, 37), ext))
    assert (width, height, complete) == (37, 23, True)


def test_gif_and_avif_are_read_by_default_and_a_huge_gif_is_refused_before_decoding(tmp_path):
    image = gradient(30, 44)
    gif = encode(image, ".gif")
    huge = bytearray(gif)
    huge[6:10] = struct.pack("<HH", 30000, 30000)  # a 9e8-pixel screen: refused from the header
    frames = image_frames(tmp_path, {"a.gif": gif, "b.avif": encode(image, ".avif"), "huge.gif": bytes(huge)})
    assert {name: (f.status, f.width, f.height) for name, f in frames.items() if name != "huge.gif"} == {
        "a.gif": ("ok", 44, 30), "b.avif": ("ok", 44, 30)}
    assert frames["huge.gif"].error.startswith("image of 30000x30000 exceeds max_image_pixels")
    assert {".gif", ".avif"} <= set(SourcesConfig().image_extensions)


def test_exif_orientation_is_applied(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = 255  # left half white
    frames = image_frames(tmp_path, {"o1.jpg": jpeg_with_orientation(image, 1), "o6.jpg": jpeg_with_orientation(image, 6)})
    assert frames["o1.jpg"].image.shape == (20, 40, 3)
    rotated = frames["o6.jpg"].image  # 6: rotate 90 degrees clockwise -> the white half is on top
    assert rotated.shape == (40, 20, 3) and (frames["o6.jpg"].width, frames["o6.jpg"].height) == (20, 40)
    assert rotated[:18].min() > 200 and rotated[22:].max() < 50


# --- tar ----------------------------------------------------------------------------------


def make_tar(path: Path, members: list[tuple[str, bytes]]) -> bytes:
    with tarfile.open(path, "w") as archive:
        directory = tarfile.TarInfo("imgs")
        directory.type = tarfile.DIRTYPE
        archive.addfile(directory)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def test_tar_members_in_archive_order(tmp_path):
    good = [encode(gradient(10 + i, 12), ext) for i, ext in enumerate([".jpg", ".png", ".png"])]
    make_tar(tmp_path / "set.tar", [
        ("imgs/z_first.jpg", good[0]),
        ("imgs/broken.jpg", b"\xff\xd8 not really a jpeg"),
        ("readme.txt", b"skipped: not an image"),
        ("imgs/b.png", good[1]),
        ("imgs/a.png", good[2]),
    ])
    frames = decode_all(plan_tar(local_object(tmp_path / "set.tar")))
    assert [(f.member, f.frame_index, f.status) for f in frames] == [
        ("imgs/z_first.jpg", 0, "ok"), ("imgs/broken.jpg", 1, "error"), ("imgs/b.png", 2, "ok"), ("imgs/a.png", 3, "ok"),
    ]
    assert "cannot decode" in frames[1].error
    assert np.array_equal(frames[3].image, gradient(12, 12)) and frames[0].image.shape == (10, 12, 3)
    assert all(f.source == str(tmp_path / "set.tar") and f.timestamp is None for f in frames)


def test_truncated_and_fake_tars(tmp_path):
    data = make_tar(tmp_path / "full.tar", [(f"{i}.png", encode(gradient(30, 30 + i), ".png")) for i in range(3)])
    with tarfile.open(tmp_path / "full.tar") as archive:
        third = archive.getmember("2.png")
    for cut, where in [(third.offset_data + 100, " at member '2.png'"), (third.offset, "")]:  # in its data, before its header
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        frames = decode_all(plan_tar(local_object(tmp_path / "cut.tar")))
        assert [f.status for f in frames] == ["ok", "ok", "error"]
        assert frames[-1].frame_index == 2 and f"cannot read tar archive{where}: " in frames[-1].error

    (tmp_path / "fake.tar").write_bytes(b"not a tar at all" * 100)
    (fake,) = decode_all(plan_tar(local_object(tmp_path / "fake.tar")))
    assert fake.status == "error" and fake.error.startswith("cannot read tar archive")


# --- determinism and pickling -------------------------------------------------------------


def test_shard_ids_are_deterministic(data_dir, tmp_path):
    objects = list(iter_objects(str(data_dir), SOURCES, LOCAL))
    videos = [o for o in objects if o.kind == "video"]

    def plan():
        return [s.shard_id for s in group_images(objects, 5)] + [s.shard_id for v in videos for s in plan_video(v, 100, LOCAL)]

    first = plan()
    assert first == plan() and len(set(first)) == len(first)
    assert first[0].startswith("images-") and len(first[0]) == len("images-") + 16
    touched = [SourceObject(o.uri, o.kind, o.size, o.version + "0") for o in objects]
    assert next(group_images(touched, 5)).shard_id != first[0]  # a new version is a new shard


def test_values_survive_pickling(data_dir):
    (obj,) = iter_objects(str(data_dir / STREET), SOURCES, LOCAL)
    shard = plan_video(obj, 64, LOCAL)[-1]
    for value in (obj, shard, SOURCES, LOCAL):
        assert pickle.loads(pickle.dumps(value)) == value
    (frame,) = itertools.islice(decode_frames(shard, SOURCES, LOCAL), 1)
    copy = pickle.loads(pickle.dumps(frame))
    assert copy.frame_index == frame.frame_index and np.array_equal(copy.image, frame.image)


def test_malformed_shard_gives_one_error_frame():
    (frame,) = decode_all([Shard("x-1", "parquet", ("/nowhere",), ("",))])
    assert frame.status == "error" and "unknown shard kind" in frame.error


@pytest.mark.parametrize("partition_by, shard_sizes", [(None, [4, 4, 2]), ("source_dir", [1] * 10)])
def test_image_shards_span_folders_unless_partitioned_by_folder(tmp_path, partition_by, shard_sizes):
    """A dataset with one image per folder gets full shards; partitioned by folder, one per folder."""
    from openpose_ray.config_loader import load_config
    from openpose_ray.pipeline.listing_source import iter_work_items
    from openpose_ray.pipeline.records import from_row

    for i in range(10):
        (tmp_path / f"person{i:02d}").mkdir()
        cv2.imwrite(str(tmp_path / f"person{i:02d}" / "photo.png"), gradient())
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "local.yaml", [
        f"input=[\"{tmp_path}\"]", f"output={tmp_path / 'out'}", "sources.images_per_shard=4",
        f"write.partition_by={'null' if partition_by is None else partition_by}"])
    shards = [from_row(row) for row in iter_work_items(str(tmp_path), config)]
    assert [len(shard.uris) for shard in shards] == shard_sizes
    assert [uri for shard in shards for uri in shard.uris] == [
        str(tmp_path / f"person{i:02d}" / "photo.png") for i in range(10)]


def test_a_multi_page_tiff_gives_its_first_page(tmp_path):
    """As documented (docs/guide.md, what it reads): one image per file, the first page."""
    pages = [np.full((20, 30, 3), value, np.uint8) for value in (10, 200)]
    assert cv2.imwritemulti(str(tmp_path / "pages.tiff"), pages)
    (frame,) = decode_all(group_images([local_object(tmp_path / "pages.tiff")], 1))
    assert frame.status == "ok" and np.array_equal(frame.image, pages[0])
