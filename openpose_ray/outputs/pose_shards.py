"""Pose shards: for each annotated tar (a WebDataset shard), a tar of the same keys, in the same order,
holding each sample's people (``write.pose_shards``).

For the image members of an input tar, in archive order (the frames of its one shard), the pose
shard holds ``<key>.pose.json`` (the frame's people as OpenPose's ``--write_json`` writes them,
exports.openpose_person, plus ``width``, ``height`` and ``status``; a frame that failed has no
people and its ``error`` and ``error_kind``) and, with ``write.pose_shard_maps``, ``<key>.pose.png``
(the pose map of its people, drawing.pose_map; none for a failed frame). ``<key>`` is the member's
WebDataset key (sources.webdataset), so ``webdataset`` reads the input shard and its pose shard as
the same samples; a second image member of one sample (``0001.jpg`` and ``0001.png``) is named by
its file name (``0001.png.pose.json``: still sample ``0001``), a member without a key by its path.

The shard is published at ``media/webdataset/<tar name>-<hash>.pose.tar`` in one atomic write
(outputs.writer.write_bytes: a rename, or one S3 PUT) before the shard commits: a killed run leaves
none or the whole of it, a shard done again writes the same bytes, and a finished one is not
annotated again by the next run (the manifest), so each pose shard is written exactly once.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Sequence

import numpy as np

from ..drawing import pose_map
from ..exports import OPENPOSE_JSON_VERSION, openpose_person
from ..person import Person
from ..skeleton import Skeleton
from ..sources.webdataset import sample_key
from .media import encode_image, media_path_for


def pose_shard_path(source: str) -> str:
    """Where, relative to the output, the pose shard of the tar ``source`` goes."""
    return media_path_for(source, None, kind="webdataset", ext=".pose.tar")


def pose_shard_bytes(frames: Sequence, people: Sequence[list[Person]], skeleton: Skeleton, *,
                     with_maps: bool) -> bytes:
    """The pose shard of one tar: frames are its shard's FrameMeta (archive order), people theirs."""
    buffer = io.BytesIO()
    used: set[str] = set()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for meta, persons in zip(frames, people):
            name = _name(meta.member, meta.frame_index, used)
            document = {"version": OPENPOSE_JSON_VERSION, "member": meta.member, "width": meta.width,
                        "height": meta.height, "status": meta.status,
                        "people": [openpose_person(np.asarray(p.keypoints)) for p in persons]}
            if meta.status != "ok":
                document.update(people=[], error=meta.error, error_kind=meta.error_kind)
            _add(archive, f"{name}.pose.json", json.dumps(document).encode())
            if with_maps and meta.status == "ok":
                _add(archive, f"{name}.pose.png", encode_image(pose_map(meta.height, meta.width, persons, skeleton),
                                                              ".png"))
    return buffer.getvalue()


def _name(member: str | None, index: int, used: set[str]) -> str:
    key = sample_key(member) or (member or f"{index:06d}")
    if key in used:  # a second image member of one sample keeps the sample's key before its first dot
        folder, base = posixpath.split(member or f"{index:06d}")
        key = posixpath.join(folder, base) if folder else base
    used.add(key)
    return key


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644  # mtime 0: the same shard gives the same bytes
    archive.addfile(info, io.BytesIO(data))
