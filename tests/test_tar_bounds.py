"""Tar shards are bounded in member count and total size: past a bound, one error row and no more reading."""

from __future__ import annotations

import io
import tarfile

import numpy as np

from openpose_ray.jobconfig import S3Config, SourcesConfig
from openpose_ray.sources.decoding import decode_frames
from openpose_ray.sources.listing import SourceObject
from openpose_ray.sources.planning import plan_tar
from synthetic_media import encode


def _tar(path, members: dict[str, bytes]) -> SourceObject:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return SourceObject(str(path), "tar", path.stat().st_size, str(path.stat().st_mtime_ns))


def _frames(obj: SourceObject, sources: SourcesConfig):
    return [frame for shard in plan_tar(obj) for frame in decode_frames(shard, sources, S3Config())]


def test_member_count_bound(tmp_path):
    image = encode(np.full((16, 16, 3), 128, np.uint8), ".png")
    members = {f"{i:03d}.png": image for i in range(3)} | {f"junk{i:03d}.txt": b"" for i in range(50)}
    obj = _tar(tmp_path / "bomb.tar", members)
    frames = _frames(obj, SourcesConfig(max_tar_members=10))
    assert [f.status for f in frames] == ["ok", "ok", "ok", "error"]
    assert "exceeds max_tar_members (10)" in frames[-1].error and frames[-1].member == "junk007.txt"
    assert [f.status for f in _frames(obj, SourcesConfig())] == ["ok"] * 3


def test_total_size_bound(tmp_path):
    image = encode(np.full((64, 64, 3), 200, np.uint8), ".png")
    obj = _tar(tmp_path / "big.tar", {f"{i}.png": image for i in range(4)})
    frames = _frames(obj, SourcesConfig(max_tar_bytes=2 * len(image) + 1))
    assert [f.status for f in frames] == ["ok", "ok", "error"]
    assert "exceeds max_tar_bytes" in frames[-1].error and frames[-1].member == "2.png"
