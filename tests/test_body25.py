"""BODY_25 downstream of the network: decoding, the people table, COCO-17 and OpenPose JSON exports,
rendering and tracking, all following skeleton.BODY25 (pure numpy: no Ray, no network forward).

Positions given to :func:`synthesize_fields` are stride-8 field pixels; a field point (x, y) is the
source pixel ((x + 0.5) * 8 - 0.5, (y + 0.5) * 8 - 0.5) of a 480x368 image fed at its size
(project convention: pixel centres at integer coordinates, x right, y down).
"""

from __future__ import annotations

import dataclasses
import io
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from openpose_ray.coco import coco_detections, to_coco17
from openpose_ray.config import PostprocessConfig, TrackingConfig
from openpose_ray.exports import MixedSkeletonsError, coco_results, openpose_json_documents, people_skeleton
from openpose_ray.models.registry import get_entry
from openpose_ray.outputs.frames_table import ShardTablesBuilder
from openpose_ray.outputs.people_table import PEOPLE_EXTRA_FIELDS, read_keypoints, table_skeleton
from openpose_ray.outputs.provenance import Provenance
from openpose_ray.outputs.tracks import _with_current_columns
from openpose_ray.person import Person, people_from_fields
from openpose_ray.preprocess import ResizeTransform
from openpose_ray.drawing import render
from openpose_ray.skeleton import (BODY25, BODY25_OPENPOSE_NAMES, COCO17_PART_NAMES, COCO18, Limb, Skeleton,
                                   coco17_indices, skeleton_by_name)
from openpose_ray.tracking import FramePeople, part_sigmas, track, track_rows
from synthetic_fields import FIELD_SIZE, ON_UPSAMPLED_PIXEL, STANDING_FIGURE_BODY25, figure_at, synthesize_fields

# OpenPose's BODY_25 output order, as its doc/02_output.md lists it (written out here, not taken from the code).
OPENPOSE_BODY25_ORDER = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip", "RHip", "RKnee",
    "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LBigToe", "LSmallToe", "LHeel",
    "RBigToe", "RSmallToe", "RHeel",
)
FEET = ("l_big_toe", "l_small_toe", "l_heel", "r_big_toe", "r_small_toe", "r_heel")

BODY25_ENTRY = get_entry("body_25")  # decoding reads its skeleton and its fields' stride
STRIDE = BODY25_ENTRY.input_spec.stride

PROVENANCE = Provenance(
    run_id="run-0001", model="body_25", weights_sha256="ab" * 32, net_size=(656, 368), scales=(1.0,),
    code_version="0.1.0", config_fingerprint="cfg123", created_at="2024-05-01T23:59:30+00:00", resize_mode="fit",
)


def distinct_person(skeleton=BODY25, missing: tuple[str, ...] = ()) -> Person:
    """A person whose every part has its own values: part k at (100 + 10 k, 300 + k), confidence 0.5 + k / 100."""
    keypoints = np.zeros((skeleton.num_parts, 3), np.float32)
    k = np.arange(skeleton.num_parts)
    keypoints[:, 0], keypoints[:, 1], keypoints[:, 2] = 100 + 10 * k, 300 + k, 0.5 + k / 100
    for name in missing:
        keypoints[skeleton.part_index(name)] = 0.0
    return Person(keypoints=keypoints, score=0.75)


def body25_tables(persons_per_frame: dict[str, list[Person]], provenance: Provenance = PROVENANCE):
    """(people, frames) of one shard of images, {source: persons}, made by the job's table builder."""
    builder = ShardTablesBuilder(provenance, "shard-0", BODY25)
    for source, persons in persons_per_frame.items():
        builder.add_frame(source, 0, persons, source_kind="image", width=640, height=480)
    return builder.to_tables()


# --- the skeleton ----------------------------------------------------------------------------


def test_body25_parts_are_openposes_in_openposes_order():
    assert BODY25_OPENPOSE_NAMES == OPENPOSE_BODY25_ORDER
    # this project's names are OpenPose's in snake case: RShoulder -> r_shoulder, MidHip -> mid_hip, LBigToe -> l_big_toe
    assert list(BODY25.part_names) == [re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() for name in OPENPOSE_BODY25_ORDER]
    assert BODY25.part_names[8] == "mid_hip" and BODY25.part_names[19:] == FEET


def test_the_body_25_model_decodes_to_body25():
    assert BODY25_ENTRY.skeleton is BODY25 and STRIDE == 8


def test_skeletons_are_found_by_the_name_a_table_records():
    assert skeleton_by_name("body25") is BODY25 and skeleton_by_name("coco18") is COCO18
    with pytest.raises(KeyError, match="did you mean 'body25'"):
        skeleton_by_name("body_25")


# --- 1. decoding -----------------------------------------------------------------------------

TWO_PEOPLE_WITH_FEET = [
    figure_at(15 + ON_UPSAMPLED_PIXEL, 8 + ON_UPSAMPLED_PIXEL, figure=STANDING_FIGURE_BODY25),
    # A second figure: a raised left arm, and the right foot turned out.
    {**figure_at(44 + ON_UPSAMPLED_PIXEL, 9 + ON_UPSAMPLED_PIXEL, figure=STANDING_FIGURE_BODY25),
     "l_elbow": (51 + ON_UPSAMPLED_PIXEL, 5 + ON_UPSAMPLED_PIXEL),
     "l_wrist": (53 + ON_UPSAMPLED_PIXEL, 2 + ON_UPSAMPLED_PIXEL),
     "r_big_toe": (38 + ON_UPSAMPLED_PIXEL, 42 + ON_UPSAMPLED_PIXEL),
     "r_small_toe": (36 + ON_UPSAMPLED_PIXEL, 41 + ON_UPSAMPLED_PIXEL)},
]


def to_source(xy) -> np.ndarray:
    """Field pixels -> source pixels of a 480x368 image fed at its size (stride 8)."""
    return (np.asarray(xy, np.float64) + 0.5) * STRIDE - 0.5


def test_two_body25_people_are_decoded_as_two_with_their_feet():
    heatmaps, pafs = synthesize_fields(TWO_PEOPLE_WITH_FEET, FIELD_SIZE, BODY25)
    assert heatmaps.shape == (26, 46, 60) and pafs.shape == (52, 46, 60)
    size = (FIELD_SIZE[0] * STRIDE, FIELD_SIZE[1] * STRIDE)
    transform = ResizeTransform(source_size=size, valid_size=size, input_size=size)
    people = people_from_fields(heatmaps, pafs, transform, BODY25_ENTRY, PostprocessConfig())
    assert len(people) == 2
    people = sorted(people, key=lambda p: p.keypoints[BODY25.part_index("neck"), 0])
    # every part of each person, the feet included, where that person's part was drawn: no foot went
    # to the other person (they stand 29 field pixels = 232 source pixels apart)
    for person, drawn in zip(people, TWO_PEOPLE_WITH_FEET):
        assert person.keypoints.shape == (25, 3) and person.num_parts == 25
        assert set(drawn) == set(BODY25.part_names)
        for name, xy in drawn.items():
            got = person.keypoints[BODY25.part_index(name), :2]
            assert np.abs(got - to_source(xy)).max() <= 1.0, (name, got, to_source(xy))


# --- 2. the people table ---------------------------------------------------------------------


def test_body25_people_table_has_25_part_columns_and_reads_back_exactly():
    persons = [distinct_person(), distinct_person(missing=("l_heel", "mid_hip"))]
    people, _ = body25_tables({"/data/a.jpg": persons})
    person_columns = ["source", "frame_index", "person_index", "track_id", "score", "num_parts", "bbox"]
    assert people.column_names == [*person_columns, *BODY25.part_names, *(f.name for f in PEOPLE_EXTRA_FIELDS)]
    assert people.schema.field("r_heel").type == people.schema.field("nose").type
    assert people["num_parts"].to_pylist() == [25, 23]
    expected = np.stack([p.keypoints for p in persons])
    assert np.array_equal(read_keypoints(people, BODY25), expected)
    # through Parquet: the metadata names the skeleton, so a reader needs nothing else
    sink = io.BytesIO()
    pq.write_table(people, sink)
    read_back = pq.read_table(io.BytesIO(sink.getvalue()))
    assert table_skeleton(read_back) is BODY25
    assert np.array_equal(read_keypoints(read_back), expected)
    # the box covers the feet: the lowest part is the last one, r_heel (y = 300 + 24)
    assert read_back["bbox"].to_pylist()[0] == {"x": 100.0, "y": 300.0, "width": 240.0, "height": 24.0}


def test_a_table_without_skeleton_metadata_needs_its_skeleton_named():
    people, _ = body25_tables({"/data/a.jpg": [distinct_person()]})
    bare = people.replace_schema_metadata({})
    with pytest.raises(KeyError, match="names no skeleton"):
        read_keypoints(bare)
    assert np.array_equal(read_keypoints(bare, BODY25), read_keypoints(people))


# --- 3. COCO-17 ------------------------------------------------------------------------------


def test_coco17_of_a_body25_person_drops_mid_hip_and_feet_and_reorders():
    person = distinct_person()
    coco = to_coco17(person)
    assert coco.shape == (17, 3)
    assert np.array_equal(coco, to_coco17(person, BODY25))
    # Part k of BODY_25 has x = 100 + 10 k; COCO-17 order by BODY_25 index, written out:
    # nose, l_eye, r_eye, l_ear, r_ear, l_shoulder, r_shoulder, l_elbow, r_elbow, l_wrist, r_wrist,
    # l_hip, r_hip, l_knee, r_knee, l_ankle, r_ankle.
    body25_index = [0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11]
    assert ((coco[:, 0] - 100) / 10).astype(int).tolist() == body25_index
    assert np.array_equal(coco, person.keypoints[body25_index])
    dropped = {BODY25.part_index(name) for name in ("mid_hip", *FEET)}
    assert dropped == {8, 19, 20, 21, 22, 23, 24}
    assert not dropped & set(((coco[:, 0] - 100) / 10).astype(int).tolist())
    # COCO-18 keeps working, by the same rule
    assert [COCO18.part_names[i] for i in coco17_indices(COCO18)] == list(COCO17_PART_NAMES)


def test_coco17_needs_a_skeleton_with_every_coco_part():
    partial = Skeleton("head", ("nose", "neck"), (Limb("neck", "nose", 0, 1),), ((0, 0, 255), (0, 255, 0)))
    with pytest.raises(ValueError, match="l_eye"):
        coco17_indices(partial)
    with pytest.raises(ValueError, match="no single known skeleton has 2 parts"):
        to_coco17(Person(keypoints=np.ones((2, 3), np.float32), score=1.0))
    with pytest.raises(ValueError, match="skeleton 'coco18' has 18"):
        to_coco17(distinct_person(), COCO18)


def test_coco_results_of_a_body25_people_table():
    person = distinct_person(missing=("l_eye",))
    people, _ = body25_tables({"/data/000000040083.jpg": [person]})
    results, left_out = coco_results(people)
    assert not left_out and len(results) == 1
    assert results == coco_detections(40083, [person], BODY25)
    values = np.array(results[0]["keypoints"]).reshape(17, 3)
    assert values[1].tolist() == [0, 0, 0]  # l_eye, missing
    assert values[0].tolist() == [100, 300, 2] and values[16].tolist() == [210, 311, 2]  # nose; r_ankle = part 11


# --- 4. OpenPose JSON ------------------------------------------------------------------------


def test_openpose_json_of_a_body25_person_has_75_values_in_openposes_order():
    person = distinct_person(missing=("r_small_toe",))
    people, frames = body25_tables({"/data/walk.jpg": [person], "/data/empty.jpg": []})
    documents = dict(openpose_json_documents(people, frames))
    assert set(documents) == {"walk_keypoints.json", "empty_keypoints.json"}
    assert documents["empty_keypoints.json"]["people"] == []
    [entry] = documents["walk_keypoints.json"]["people"]
    values = entry["pose_keypoints_2d"]
    assert len(values) == 75 and entry["person_id"] == [-1]
    triples = np.array(values).reshape(25, 3)
    k = OPENPOSE_BODY25_ORDER.index("MidHip")
    assert k == 8 and triples[8].tolist() == pytest.approx([180, 308, 0.58])
    # 19..24: LBigToe, LSmallToe, LHeel, RBigToe, RSmallToe (missing: 0, 0, 0), RHeel
    assert triples[19:25, 0].tolist() == [290, 300, 310, 320, 0, 340]
    assert triples[23].tolist() == [0, 0, 0]
    np.testing.assert_allclose(triples[:, 2], np.where(np.arange(25) == 23, 0, 0.5 + np.arange(25) / 100), rtol=1e-6)


def test_people_of_a_model_of_another_skeleton_are_not_exported_together():
    """Rows whose model has another skeleton than the table's metadata (an output read in the middle of a
    model change) are refused; rows of an unregistered model are taken as the metadata says."""
    coco_model = dataclasses.replace(PROVENANCE, model="mobilenet_thin")
    people, frames = body25_tables({"/data/walk.jpg": [distinct_person()]}, coco_model)
    with pytest.raises(MixedSkeletonsError, match=r"mobilenet_thin \(coco18\)"):
        list(openpose_json_documents(people, frames))
    unknown = dataclasses.replace(PROVENANCE, model="my_own_body25")
    people, _ = body25_tables({"/data/walk.jpg": [distinct_person()]}, unknown)
    assert people_skeleton(people) is BODY25


# --- 5. rendering ----------------------------------------------------------------------------


def test_rendering_a_body25_person_draws_the_feet():
    image = np.full((400, 300, 3), 40, np.uint8)
    figure = {name: (150 + 6 * x, 60 + 8 * y) for name, (x, y) in STANDING_FIGURE_BODY25.items()}
    keypoints = np.zeros((25, 3), np.float32)
    for name, xy in figure.items():
        keypoints[BODY25.part_index(name)] = (*xy, 0.9)
    out = render(image, [Person(keypoints=keypoints, score=1.0)], BODY25)
    changed = np.any(out != image, axis=2)
    for name in FEET:
        x, y = figure[name]
        assert changed[y - 1 : y + 2, x - 1 : x + 2].all(), name
    # the same person without feet leaves everything a few pixels below the ankles as it was
    below_ankles = slice(figure["l_ankle"][1] + 5, None)
    no_feet = keypoints.copy()
    no_feet[[BODY25.part_index(name) for name in FEET]] = 0
    assert not np.any(render(image, [Person(keypoints=no_feet, score=1.0)], BODY25) != image, axis=2)[below_ankles].any()
    assert changed[below_ankles].sum() > 100


def test_body25_limbs_take_the_colour_of_their_second_part():
    colors = BODY25.limb_colors_bgr()
    assert len(colors) == BODY25.num_limbs == 26
    assert colors == tuple(BODY25.part_colors_bgr[BODY25.part_index(limb.part_b)] for limb in BODY25.limbs)
    # COCO-18 as before: limb i in part i's colour (19 limbs, 18 colours: the palette repeats)
    assert COCO18.limb_colors_bgr() == tuple(COCO18.part_colors_bgr[i % 18] for i in range(COCO18.num_limbs))
    keypoints = np.zeros((25, 3), np.float32)
    keypoints[BODY25.part_index("l_ankle")] = (40, 100, 1)
    keypoints[BODY25.part_index("l_big_toe")] = (160, 100, 1)
    out = render(np.zeros((200, 200, 3), np.uint8), [Person(keypoints=keypoints, score=1.0)], BODY25,
                 thickness=5, radius=3)
    assert tuple(int(v) for v in out[100, 100]) == BODY25.part_colors_bgr[BODY25.part_index("l_big_toe")]


# --- 6. tracking -----------------------------------------------------------------------------


def walker(x: float, scale: float = 1.0) -> np.ndarray:
    """float32[25, 3]: the BODY_25 figure 5 px per field pixel, neck at (x, 100), every part found."""
    keypoints = np.ones((25, 3), np.float32)
    for name, (dx, dy) in STANDING_FIGURE_BODY25.items():
        keypoints[BODY25.part_index(name), :2] = (x + 5 * dx * scale, 100 + 5 * dy * scale)
    return keypoints


def test_tracking_body25_people_through_a_crossing():
    assert part_sigmas(BODY25).shape == (25,) and part_sigmas(BODY25)[BODY25.part_index("l_heel")] == 0.066
    frames = []
    for i in range(25):
        a, b = walker(100 + 8 * i), walker(260 - 8 * i, scale=0.95)
        frames.append(FramePeople(i, np.stack([a] if 8 <= i <= 12 else [a, b])))
    ids = track(frames, BODY25, TrackingConfig())
    for i, frame_ids in enumerate(ids):
        assert frame_ids.tolist() == ([0] if 8 <= i <= 12 else [0, 1]), i
    rows = track_rows([0, 0, 1, 1], [0, 1, 0, 1], np.stack([walker(100), walker(300), walker(304), walker(104)]),
                      BODY25, TrackingConfig())
    assert rows.tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match=r"expected \[P, 18, 3\]"):
        track(frames, COCO18, TrackingConfig())


def test_an_older_body25_people_file_gets_its_box_from_its_own_skeleton():
    people, _ = body25_tables({"/data/v.mp4": [distinct_person()]})
    older = people.drop_columns(["track_id", "bbox"])
    assert _with_current_columns(older).equals(people)
