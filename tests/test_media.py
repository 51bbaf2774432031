"""Rendered media: H.264 segments joined without re-encoding, image encoding, safe media paths."""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath

import av
import cv2
import numpy as np
import pytest

from openpose_ray.jobconfig import S3Config
from openpose_ray.outputs.media import concat_segments, encode_image, encode_segment, media_path_for, write_bytes

FPS = 25.0
HEIGHT, WIDTH = 241, 321  # odd on purpose: H.264 4:2:0 needs even sizes


def _frames(first: int, count: int) -> list[np.ndarray]:
    """BGR frames with their frame number written large, on a gradient background."""
    frames = []
    for number in range(first, first + count):
        image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        image[:, :, 0] = np.linspace(0, 200, WIDTH, dtype=np.uint8)[None, :]
        image[:, :, 1] = np.linspace(30, 120, HEIGHT, dtype=np.uint8)[:, None]
        cv2.putText(image, str(number), (30, 170), cv2.FONT_HERSHEY_SIMPLEX, 4, (255, 255, 255), 8)
        frames.append(image)
    return frames


def _decode(data: bytes) -> tuple[av.video.stream.VideoStream, list[tuple[float, np.ndarray]]]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [(frame.time, frame.to_ndarray(format="bgr24")) for frame in container.decode(stream)]
        return stream, frames


def _top_level_atoms(data: bytes) -> list[bytes]:
    atoms, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        if size == 1:  # 64-bit size follows the type
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        atoms.append(data[offset + 4:offset + 8])
        assert size >= 8, f"bad atom size {size} at {offset}"
        offset += size
    return atoms


@pytest.fixture(scope="module")
def source_frames() -> list[np.ndarray]:
    return _frames(0, 17)


@pytest.fixture(scope="module")
def segments(source_frames) -> list[bytes]:
    timestamps = [index / FPS for index in range(17)]
    return [encode_segment(source_frames[:10], timestamps[:10], FPS),
            encode_segment(iter(source_frames[10:]), timestamps[10:], FPS)]


def test_concatenated_segments_are_one_playable_h264_mp4(segments, source_frames):
    video = concat_segments(segments)
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.profile in ("High", "Main")
        assert stream.format.name == "yuv420p"
        assert (stream.width, stream.height) == (WIDTH + 1, HEIGHT + 1), "odd sizes are padded by one pixel"
        decoded = [(frame.time, frame.format.name, frame.to_ndarray(format="bgr24")) for frame in container.decode(stream)]

    assert len(decoded) == 17
    times = np.array([time for time, _, _ in decoded])
    assert np.all(np.diff(times) > 0)
    np.testing.assert_allclose(times, np.arange(17) / FPS, atol=0.5 / FPS)
    assert {pix_fmt for _, pix_fmt, _ in decoded} == {"yuv420p"}
    for index, (_, _, image) in enumerate(decoded):
        # The padding repeats the last row and column; the source pixels are where they were.
        np.testing.assert_array_equal(image.shape, (HEIGHT + 1, WIDTH + 1, 3))
        errors = [np.abs(image[:HEIGHT, :WIDTH].astype(int) - source.astype(int)).mean() for source in source_frames]
        assert errors[index] < 4, f"frame {index}: mean abs difference {errors[index]:.2f}"
        assert int(np.argmin(errors)) == index, f"frame {index} looks most like source frame {np.argmin(errors)}"


def test_mp4s_are_faststart(segments):
    for data in [*segments, concat_segments(segments)]:
        atoms = _top_level_atoms(data)
        assert b"moov" in atoms and b"mdat" in atoms
        assert atoms.index(b"moov") < atoms.index(b"mdat"), f"moov after mdat: {atoms}"


def test_segments_keep_their_source_timestamps(segments):
    _, frames = _decode(segments[1])
    np.testing.assert_allclose([time for time, _ in frames], np.arange(10, 17) / FPS, atol=1e-6)


def test_segments_that_each_start_at_zero_are_placed_one_after_the_other(source_frames):
    first = encode_segment(source_frames[:4], [0.0, 0.04, 0.08, 0.12], FPS)
    second = encode_segment(source_frames[4:7], [0.0, 0.04, 0.08], FPS)
    _, frames = _decode(concat_segments([first, second, first]))
    np.testing.assert_allclose([time for time, _ in frames], np.arange(11) * 0.04, atol=1e-6)


def test_variable_frame_rate_timestamps_are_kept(source_frames):
    timestamps = [0.0, 0.04, 0.2, 0.21, 1.5]
    _, frames = _decode(encode_segment(source_frames[:5], timestamps, FPS))
    np.testing.assert_allclose([time for time, _ in frames], timestamps, atol=1e-4)


def test_segments_of_different_sizes_are_not_joined(source_frames):
    small = encode_segment([frame[:100, :100] for frame in source_frames[:2]], [0.0, 0.04], FPS)
    large = encode_segment(source_frames[:2], [0.08, 0.12], FPS)
    with pytest.raises(ValueError, match="segment 1 is h264 100x100"):
        concat_segments([large, small])
    with pytest.raises(ValueError, match="at least one"):
        concat_segments([])


def test_encode_segment_rejects_bad_input(source_frames):
    with pytest.raises(ValueError, match="2 frames for 3 timestamps"):
        encode_segment(source_frames[:2], [0.0, 0.04, 0.08], FPS)
    with pytest.raises(ValueError, match="more frames"):
        encode_segment(source_frames[:3], [0.0, 0.04], FPS)
    with pytest.raises(ValueError, match="strictly increasing"):
        encode_segment(source_frames[:2], [0.04, 0.04], FPS)
    with pytest.raises(ValueError, match="first frame"):
        encode_segment([source_frames[0], source_frames[1][:50]], [0.0, 0.04], FPS)
    with pytest.raises(ValueError, match="uint8"):
        encode_segment([source_frames[0].astype(np.float32)], [0.0], FPS)


@pytest.mark.parametrize("source, member", [
    ("s3://b/../../etc/passwd", None),
    ("/abs/x.jpg", None),
    ("dir/..\\..\\x.jpg", None),
    ("C:\\Users\\me\\photo.jpg", None),
    ("file:///../../x.jpg", None),
    ("s3://bucket/été/Ünïcödé 名前\u200b\x00\x1b.JPG", None),
    ("..", None),
    ("", None),
    ("/data/album.tar", "../../../etc/cron.d/x.jpg"),
    ("/data/album.tar", "/abs/member.png"),
    ("/data/..tar", "..\\..\\a/./b/名前\n.jpg"),
    ("/data/album.tar", "a/" * 50 + "deep.jpg"),
])
@pytest.mark.parametrize("kind", ["images", "videos"])
def test_media_paths_never_leave_media(source, member, kind, tmp_path):
    relative = media_path_for(source, member, kind=kind)
    path = PurePosixPath(relative)
    assert not path.is_absolute() and "\\" not in relative
    assert path.parts[:2] == ("media", kind)
    assert all(part not in ("", ".", "..") and not part.startswith(".") for part in path.parts)
    assert all(ch.isprintable() and not ch.isspace() for ch in relative)
    assert all(len(part.encode()) <= 120 for part in path.parts)
    assert media_path_for(source, member, kind=kind) == relative, "deterministic"
    target = (tmp_path / relative).resolve()
    assert target.is_relative_to((tmp_path / "media" / kind).resolve())


def test_media_paths_are_readable_and_distinct():
    a = media_path_for("s3://bucket/cam1/clip.mp4", kind="videos")
    b = media_path_for("s3://bucket/cam2/clip.mp4", kind="videos")
    assert a.startswith("media/videos/clip-") and a.endswith(".mp4")
    assert a != b, "same name in different folders"
    assert media_path_for("/d/Été 2024.jpg") .startswith("media/images/Été_2024-")
    member = media_path_for("/data/album.tar", "people/p1.jpg", ext=".png")
    assert member.startswith("media/images/album/people/p1-") and member.endswith(".png")
    assert media_path_for("/data/album.tar", "p1.jpg") != media_path_for("/data/other/album.tar", "p1.jpg")


def test_encode_image_and_write_bytes(source_frames, tmp_path):
    png = encode_image(source_frames[3], ".png")
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), source_frames[3])
    jpeg = encode_image(source_frames[3], "jpg")
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(decoded.astype(int) - source_frames[3].astype(int)).mean() < 3
    with pytest.raises(ValueError, match="uint8"):
        encode_image(source_frames[3][:, :, 0], ".jpg")

    relative = media_path_for("/data/x.jpg")
    write_bytes(str(tmp_path / relative), jpeg, S3Config())
    assert (tmp_path / relative).read_bytes() == jpeg
    assert [p.name for p in Path(tmp_path).rglob("*") if p.is_file()] == [PurePosixPath(relative).name]
