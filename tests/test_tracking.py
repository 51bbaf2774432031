"""Tracking (openpose_ray.tracking) on synthetic walks: crossings, gaps, order, ids."""

import dataclasses

import numpy as np
import pytest

from openpose_ray.skeleton import COCO18
from openpose_ray.tracking import FramePeople, TrackingConfig, similarity, track, track_rows, part_sigmas

CONFIG = TrackingConfig()

# A standing person 170 px tall, parts relative to the neck (x right, y down), in COCO18 order.
_FIGURE = np.array([
    (0, -20), (0, 0), (-20, 0), (-25, 30), (-28, 60), (20, 0), (25, 30), (28, 60), (-12, 60), (-12, 100),
    (-12, 140), (12, 60), (12, 100), (12, 140), (-5, -25), (5, -25), (-10, -22), (10, -22)], np.float32)


def person(x: float, y: float = 100.0, scale: float = 1.0, missing: tuple[str, ...] = ()) -> np.ndarray:
    """float32[18, 3]: the figure with its neck at (x, y), every part found except ``missing``."""
    keypoints = np.ones((COCO18.num_parts, 3), np.float32)
    keypoints[:, :2] = _FIGURE * scale + (x, y)
    for name in missing:
        keypoints[COCO18.part_index(name)] = 0.0
    return keypoints


def frames_of(*poses_per_frame) -> list[FramePeople]:
    return [FramePeople(i, np.stack(poses) if poses else np.zeros((0, 18, 3), np.float32))
            for i, poses in enumerate(poses_per_frame)]


def test_one_walking_person_keeps_one_id():
    ids = track(frames_of(*[[person(100 + 6 * i)] for i in range(30)]), COCO18, CONFIG)
    assert [i.tolist() for i in ids] == [[0]] * 30


def test_two_people_crossing_keep_their_ids_through_the_occlusion():
    """A walks right, B walks left at 8 px per frame; they meet at frame 10, where B is hidden behind A
    for 5 frames (only A is found), and come apart again: after the crossing A is still 0 and B 1."""
    frames = []
    for i in range(25):
        a, b = person(100 + 8 * i), person(260 - 8 * i, scale=0.95)
        frames.append([a] if 8 <= i <= 12 else [a, b])
    ids = track(frames_of(*frames), COCO18, CONFIG)
    for i, frame_ids in enumerate(ids):
        assert frame_ids.tolist() == ([0] if 8 <= i <= 12 else [0, 1]), i


def test_crossing_in_listing_order_swapped_keeps_ids():
    """The estimator's person order is by score, not identity: it swaps between frames; ids follow people."""
    frames = []
    for i in range(20):
        a, b = person(100 + 8 * i, y=100), person(250 - 8 * i, y=130, scale=0.8)
        frames.append([a, b] if i % 3 else [b, a])
    ids = track(frames_of(*frames), COCO18, CONFIG)
    a_is = [(frame_ids[0] if i % 3 else frame_ids[1]) for i, frame_ids in enumerate(ids)]
    b_is = [(frame_ids[1] if i % 3 else frame_ids[0]) for i, frame_ids in enumerate(ids)]
    assert a_is == [1] * 20 and b_is == [0] * 20  # frame 0 lists b first: b is the first track


def test_a_short_gap_keeps_the_id_and_a_long_one_starts_a_new_track():
    config = dataclasses.replace(CONFIG, max_gap_frames=5)
    short = [[person(100 + 2 * i)] if not 10 <= i < 15 else [] for i in range(20)]  # missing 5 frames
    assert {int(i) for ids in track(frames_of(*short), COCO18, config) for i in ids} == {0}
    long = [[person(100 + 2 * i)] if not 10 <= i < 16 else [] for i in range(20)]  # missing 6 frames
    ids = track(frames_of(*long), COCO18, config)
    assert ids[9].tolist() == [0] and ids[16].tolist() == [1]  # ids are never reused


def test_someone_appearing_elsewhere_gets_a_new_id():
    frames = [[person(100 + 2 * i)] + ([person(400)] if i >= 5 else []) for i in range(10)]
    ids = track(frames_of(*frames), COCO18, CONFIG)
    assert ids[4].tolist() == [0] and all(f.tolist() == [0, 1] for f in ids[5:])


def test_similarity_is_one_for_the_same_pose_and_counts_parts_only_one_pose_has_as_zero():
    sigmas = part_sigmas(COCO18)
    whole, half = person(100), person(100, missing=COCO18.part_names[9:])
    s = similarity(np.stack([whole, whole]), np.stack([whole, half, person(400)]), sigmas, CONFIG.min_area_px)
    assert s[0, 0] == pytest.approx(1.0)
    assert s[0, 1] == pytest.approx(9 / 18)  # 9 parts shared of 18 found in either
    assert s[0, 2] < 1e-6
    assert similarity(np.zeros((0, 18, 3), np.float32), np.stack([whole]), sigmas, 1.0).shape == (0, 1)


def test_track_rows_ignores_row_order():
    rng = np.random.default_rng(0)
    frame_index, person_index, keypoints = [], [], []
    for i in range(15):
        for p, x in enumerate((100 + 5 * i, 300 - 4 * i, 500)):
            frame_index.append(i)
            person_index.append(p)
            keypoints.append(person(x, y=100 + 40 * p))
    keypoints = np.stack(keypoints)
    ids = track_rows(frame_index, person_index, keypoints, COCO18, CONFIG)
    assert ids.tolist() == [0, 1, 2] * 15
    shuffle = rng.permutation(len(ids))
    shuffled = track_rows(np.array(frame_index)[shuffle], np.array(person_index)[shuffle], keypoints[shuffle], COCO18, CONFIG)
    assert shuffled.tolist() == ids[shuffle].tolist()


def test_frames_out_of_order_are_refused_and_inputs_are_not_modified():
    frames = frames_of([person(100)], [person(104)])
    before = [f.keypoints.copy() for f in frames]
    track(frames, COCO18, CONFIG)
    assert all(np.array_equal(f.keypoints, b) for f, b in zip(frames, before))
    with pytest.raises(ValueError, match="increasing frame_index"):
        track(frames[::-1], COCO18, CONFIG)


@pytest.mark.parametrize("bad", [{"min_similarity": 1.5}, {"max_gap_frames": 0}, {"min_area_px": 0}])
def test_tracking_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TrackingConfig(**bad)


def test_a_people_file_of_an_older_version_gets_track_id_and_bbox_before_it_is_rewritten():
    from openpose_ray.outputs.people_table import PeopleTableBuilder
    from openpose_ray.outputs.tracks import _with_current_columns
    from openpose_ray.person import Person

    builder = PeopleTableBuilder()
    builder.add("v.mp4", 3, [Person(keypoints=person(100), score=0.9), Person(keypoints=person(300, missing=("nose",)), score=0.5)])
    today = builder.to_table()
    older = today.drop_columns(["track_id", "bbox"])
    assert _with_current_columns(older).equals(today)  # read with the skeleton its metadata names
    assert _with_current_columns(today).equals(today)
