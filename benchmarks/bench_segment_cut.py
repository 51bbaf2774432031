"""Decoding work by how videos are cut into segments: CPU seconds to decode every segment of a video.

A segment that does not start at a key frame is decoded from the key frame before it:
the frames in between are decoded twice (by this segment's task and by the one before),
and the seek that reaches the key frame may land a whole GOP early. This benchmark
plans each video with ``sources.frames_per_segment`` (default 128) cut every N frames
("frames") and cut at key frames ("key_frames", the job's default), then decodes every
segment in this process (one thread for Python, FFmpeg's own slice threads as in the
job) and prints CPU seconds per video and cut (the fastest of ``--rounds``), frames
decoded to pixels, and the segments.

Videos: the shared ones (street: H.264 in AVI with B-frames, a key frame at 0 and 150;
sports: VP9, a key frame every 60) and a synthetic 1280x720 H.264 MP4 with x264's
default key frame interval (250) and B-frames, 1,000 frames made of the street video's
frames (written to a temporary folder; the kind of file cameras and encoders give).

    .venv/bin/python benchmarks/bench_segment_cut.py [--frames-per-segment 128] [--rounds 3]

Runs against the code beside it; PYTHONPATH=<another checkout> runs that checkout's
(an older one without ``segment_cut`` is measured as "frames" only).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
sys.path.append(str(REPO))  # after PYTHONPATH: another checkout's code wins
sys.path.append(str(REPO / "benchmarks"))

import av  # noqa: E402

from openpose_ray.jobconfig import S3Config, SourcesConfig  # noqa: E402
from openpose_ray.sources.decoding import decode_frames  # noqa: E402
from openpose_ray.sources.listing import SourceObject  # noqa: E402
from openpose_ray.sources.planning import plan_video  # noqa: E402

from bench_backends import cpu_description  # noqa: E402  (after the package: it puts this checkout first)


def long_gop_video(folder: Path, frames: int = 1000) -> Path:
    """1280x720 H.264 MP4, key frame every 250 frames (x264's default keyint, no scene cuts), B-frames."""
    path = folder / "long_gop_720p_h264.mp4"
    with av.open(str(DATA / "videos" / "street_720p_h264.avi")) as source:
        images = [frame.to_ndarray(format="yuv420p") for frame in source.decode(video=0)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"g": "250", "keyint_min": "250", "sc_threshold": "0", "bf": "3", "preset": "veryfast",
                          "crf": "23"}
        for i in range(frames):
            k = i % (2 * len(images) - 2)  # back and forth through the street video: no jump cuts
            frame = av.VideoFrame.from_ndarray(images[k if k < len(images) else 2 * len(images) - 2 - k],
                                               format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def decode_seconds(path: Path, frames_per_segment: int, cut: str | None, rounds: int) -> tuple[float, int, list]:
    stat = path.stat()
    obj = SourceObject(str(path), "video", stat.st_size, str(stat.st_mtime_ns))
    kwargs = {"segment_cut": cut} if cut else {}
    shards = plan_video(obj, frames_per_segment, S3Config(), **kwargs)
    best, frames = float("inf"), 0
    for _ in range(rounds):
        start = time.process_time()
        frames = sum(1 for shard in shards for frame in decode_frames(shard, SourcesConfig(), S3Config())
                     if frame.status == "ok")
        best = min(best, time.process_time() - start)
    return best, frames, [(s.start_frame, s.end_frame) for s in shards]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-per-segment", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cuts = ["frames", "key_frames"] if "segment_cut" in inspect.signature(plan_video).parameters else [None]
    print(f"CPU: {cpu_description()}; code: {Path(inspect.getfile(plan_video)).parent.parent.parent}")
    print("\n| video | cut | segments | frames | decode CPU s | CPU ms / frame |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        videos = [DATA / "videos" / "street_720p_h264.avi", DATA / "videos" / "sports_994p_vp9.mp4",
                  long_gop_video(Path(folder))]
        for path in videos:
            for cut in cuts:
                seconds, frames, bounds = decode_seconds(path, args.frames_per_segment, cut, args.rounds)
                starts = ", ".join(str(start) for start, _ in bounds)
                print(f"| {path.name} | {cut or 'frames (before segment_cut)'} | {len(bounds)} (at {starts}) | {frames} | "
                      f"{seconds:.2f} | {1000 * seconds / frames:.1f} |", flush=True)


if __name__ == "__main__":
    main()
