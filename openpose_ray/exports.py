"""A job's output in the formats other tools read: OpenPose's ``--write_json`` files, COCO keypoint results.

    openpose-ray export OUTPUT --format openpose-json --to DEST
    openpose-ray export OUTPUT --format coco --to DEST/results.json [--annotations person_keypoints.json]

Rows are read through the manifest (:func:`openpose_ray.tables.read_table`), so
each person is exported exactly once, from the current annotation of each
input. OUTPUT and DEST are folders or s3:// prefixes, either way round.

``openpose-json`` (OpenPose's doc/02_output.md): one file per frame annotated
without error, people or not, as OpenPose writes it:

- an image: ``<stem>_keypoints.json``; a tar member:
  ``<tar stem>/<member path without suffix>_keypoints.json``; a video frame:
  ``<video stem>/<video stem>_<frame index, 12 digits>_keypoints.json``;
- when two inputs would get the same name (same stem, different folders), each
  of them gets ``-<8 hex of the source URI's sha256>`` after its stem;
- ``{"version": 1.3, "people": [{"person_id": [track id, or -1],
  "pose_keypoints_2d": [x, y, c] * K, "face_keypoints_2d": [], ...}]}`` with
  the K parts of the model's skeleton in its order, which is OpenPose's
  (COCO-18: OpenPose's COCO order, 54 values; BODY_25: OpenPose's BODY_25
  order, 75 values), a missing part as 0, 0, 0, and positions in source pixels.

``coco``: one JSON list of COCO keypoint results, ``{"image_id",
"category_id": 1, "keypoints": [x, y, v] * 17, "score"}`` (COCO-17 order, by
part name from the model's skeleton: the neck, BODY_25's mid-hip and feet are
dropped; v = 2 for a found part, 0, 0, 0 otherwise), for images and tar members. ``image_id``
comes from ``--annotations`` (the image whose ``file_name`` is the input's file
name), else from the file name's digits (COCO's own names, 000000040083.jpg ->
40083); an input with neither is left out and counted. Video frames have no
COCO image and are left out (counted).

The skeleton is the one the people table's schema metadata names. An output
re-annotated with a model of another skeleton holds rows of both until that
run is complete; it is refused (:class:`MixedSkeletonsError`) rather than
exported half in one layout, half in the other.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .coco import coco_detections
from .jobconfig import S3Config
from .models.registry import get_entry
from .outputs.people_table import read_keypoints, table_skeleton
from .outputs.writer import write_bytes
from .person import Person
from .skeleton import Skeleton
from .storage import parse
from .tables import read_table

FORMATS = ("openpose-json", "coco")
OPENPOSE_JSON_VERSION = 1.3
_EMPTY_ARRAYS = ("face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d",
                 "pose_keypoints_3d", "face_keypoints_3d", "hand_left_keypoints_3d", "hand_right_keypoints_3d")
_WRITERS = 16  # files written at once (S3 PUTs are latency-bound)


def _stem(path: str) -> str:
    name = posixpath.basename(path.rstrip("/"))
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


def _safe(part: str) -> str:
    return re.sub(r'[\x00-\x1f<>:"\\|?*%\s]', "_", part) or "_"


def _short_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:8]


def openpose_json_names(frames: pa.Table) -> dict[tuple[str, str | None, int], str]:
    """{(source, member, frame_index): relative file name} for every ok frame (see the module docstring)."""
    rows = frames.select(["source", "member", "source_kind", "frame_index", "status"]).to_pylist()
    rows = [r for r in rows if r["status"] == "ok"]
    stem_of = {source: _safe(_stem(parse(source).key)) for source in sorted({r["source"] for r in rows})}
    uses = Counter(stem_of.values())
    # per source, the stem it is written under
    folder_of = {source: stem if uses[stem] == 1 else f"{stem}-{_short_hash(source)}" for source, stem in stem_of.items()}
    names = {}
    for r in rows:
        stem = folder_of[r["source"]]
        if r["source_kind"] == "video":
            name = f"{stem}/{stem}_{r['frame_index']:012d}_keypoints.json"
        elif r["source_kind"] == "tar":
            member = "/".join(_safe(p) for p in (r["member"] or "").split("/") if p not in ("", ".", ".."))
            name = f"{stem}/{member.rsplit('.', 1)[0] if '.' in member else member}_keypoints.json"
        else:
            name = f"{stem}_keypoints.json"
        names[(r["source"], r["member"], r["frame_index"])] = name
    return names


class MixedSkeletonsError(ValueError):
    """The people rows come from models of different skeletons (an output in the middle of a model change)."""


def people_skeleton(people: pa.Table) -> Skeleton:
    """The skeleton of a job's people rows: the one the table's metadata names, checked against the
    models the rows name (their ``model`` column, where there is one)."""
    skeleton = table_skeleton(people)
    if "model" in people.column_names:
        skeletons = {}
        for model in pc.unique(people["model"]).to_pylist():
            try:
                skeletons[model] = get_entry(model).skeleton.name
            except KeyError:  # a model this version does not know: its rows are taken as the metadata says
                continue
        if any(name != skeleton.name for name in skeletons.values()):
            named = ", ".join(f"{model} ({name})" for model, name in sorted(skeletons.items()))
            raise MixedSkeletonsError(
                f"the people rows come from models of different skeletons: {named}; the output is being "
                "annotated again with a new model (a new generation): let that run complete, then export")
    return skeleton


def openpose_json_documents(people: pa.Table, frames: pa.Table,
                            skeleton: Skeleton | None = None) -> Iterator[tuple[str, dict]]:
    """(relative file name, document) per ok frame, people in person_index order.

    skeleton: of the people table; None: its own (:func:`people_skeleton`). Each person's
    ``pose_keypoints_2d`` holds ``skeleton.num_parts`` x 3 values in the skeleton's part order.
    """
    keypoints = read_keypoints(people, skeleton or people_skeleton(people)) if people.num_rows else None
    by_frame: dict[tuple, list[tuple[int, int | None, np.ndarray]]] = {}
    columns = [people[name].to_pylist() for name in ("source", "member", "frame_index", "person_index", "track_id")]
    for row, (source, member, frame, person, track) in enumerate(zip(*columns)):
        by_frame.setdefault((source, member, frame), []).append((person, track, keypoints[row]))
    for key, name in sorted(openpose_json_names(frames).items(), key=lambda item: item[1]):
        persons = sorted(by_frame.get(key, []), key=lambda p: p[0])
        yield name, {"version": OPENPOSE_JSON_VERSION, "people": [openpose_person(k, track) for _, track, k in persons]}


def openpose_person(keypoints: np.ndarray, track_id: int | None = None) -> dict:
    """One person as OpenPose's --write_json writes it: keypoints float32[K, 3] (x, y, confidence, source
    pixels; missing parts 0, 0, 0) flattened in the skeleton's part order; person_id [track id or -1]."""
    return {"person_id": [-1 if track_id is None else int(track_id)],
            "pose_keypoints_2d": [float(v) for v in np.where(keypoints[:, 2:3] > 0, keypoints, 0.0).ravel()],
            **{array: [] for array in _EMPTY_ARRAYS}}


def coco_results(people: pa.Table, image_ids: Mapping[str, int] | None = None,
                 skeleton: Skeleton | None = None) -> tuple[list[dict], Counter]:
    """COCO keypoint results of the image and tar-member rows; and counts of the rows left out, by reason.

    skeleton: of the people table; None: its own (:func:`people_skeleton`).
    """
    left_out: Counter = Counter()
    results = []
    if people.num_rows == 0:
        return results, left_out
    skeleton = skeleton or people_skeleton(people)
    keypoints = read_keypoints(people, skeleton)
    columns = [people[name].to_pylist() for name in ("source", "member", "source_kind", "score")]
    for row, (source, member, kind, score) in enumerate(zip(*columns)):
        if kind == "video":
            left_out["video frames have no COCO image"] += 1
            continue
        file_name = posixpath.basename(member if member else (parse(source).key))
        image_id = _image_id(file_name, image_ids)
        if image_id is None:
            left_out["no image id for the file name" + (" in --annotations" if image_ids is not None else "")] += 1
            continue
        results.extend(coco_detections(image_id, [Person(keypoints=keypoints[row], score=float(score))], skeleton))
    return results, left_out


def _image_id(file_name: str, image_ids: Mapping[str, int] | None) -> int | None:
    if image_ids is not None:
        return image_ids.get(file_name)
    digits = re.fullmatch(r"\D*?(\d+)\.[^.]+", file_name)
    return int(digits.group(1)) if digits else None


def annotation_image_ids(annotations: dict) -> dict[str, int]:
    """{file name: image id} of a COCO annotation file's images."""
    return {posixpath.basename(image["file_name"]): int(image["id"]) for image in annotations.get("images", [])}


def export(output: str, fmt: str, dest: str, s3: S3Config | None = None,
           annotations: dict | None = None) -> dict:
    """Export the output at ``output`` in format ``fmt`` to ``dest`` (folder / s3:// prefix for openpose-json,
    a file / object for coco). Returns counts: files written, people exported, rows left out by reason."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    s3 = s3 or S3Config()
    people = read_table(output, "people", s3)
    if fmt == "coco":
        image_ids = annotation_image_ids(annotations) if annotations is not None else None
        results, left_out = coco_results(people, image_ids)
        write_bytes(parse(dest).uri, json.dumps(results).encode(), s3)
        return {"files": 1, "people": len(results), "left_out": dict(left_out)}
    frames = read_table(output, "frames", s3, columns=["source", "member", "source_kind", "frame_index", "status"])
    root = parse(dest)
    documents = list(openpose_json_documents(people, frames))
    with ThreadPoolExecutor(_WRITERS) as pool:
        list(pool.map(lambda item: write_bytes(root.join(item[0]).uri, json.dumps(item[1]).encode(), s3), documents))
    return {"files": len(documents), "people": sum(len(d["people"]) for _, d in documents), "left_out": {}}
