import numpy as np
import pytest

from openpose_ray.person import Person
from openpose_ray.drawing import render
from openpose_ray.skeleton import COCO18

NECK = COCO18.part_index("neck")
R_SHOULDER = COCO18.part_index("r_shoulder")
R_EAR = COCO18.part_index("r_ear")


def _person(parts: dict[int, tuple[float, float]], confidence: float = 0.9) -> Person:
    keypoints = np.zeros((COCO18.num_parts, 3), dtype=np.float32)
    for index, (x, y) in parts.items():
        keypoints[index] = (x, y, confidence)
    return Person(keypoints=keypoints, score=confidence)


def _limb_index(part_a: str, part_b: str) -> int:
    return next(i for i, limb in enumerate(COCO18.limbs) if (limb.part_a, limb.part_b) == (part_a, part_b))


def _pixel(image: np.ndarray, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in image[y, x])


def test_output_is_a_new_bgr_image_of_the_same_size():
    image = np.zeros((120, 200, 3), dtype=np.uint8)
    out = render(image, [_person({NECK: (50, 60), R_SHOULDER: (150, 60)})])
    assert out.shape == image.shape
    assert out.dtype == np.uint8
    assert not np.shares_memory(out, image)


def test_input_is_not_modified():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(100, 100, 3), dtype=np.uint8)
    before = image.copy()
    render(image, [_person({NECK: (20, 30), R_SHOULDER: (80, 30)})])
    np.testing.assert_array_equal(image, before)


def test_keypoints_and_limb_are_drawn_in_their_colours():
    image = np.zeros((400, 400, 3), dtype=np.uint8)
    # Non-integer coordinates are rounded to the nearest pixel centre.
    person = _person({NECK: (100.4, 200.2), R_SHOULDER: (299.6, 199.8)})
    out = render(image, [person], thickness=5, radius=4)

    assert _pixel(out, 100, 200) == COCO18.part_colors_bgr[NECK]
    assert _pixel(out, 300, 200) == COCO18.part_colors_bgr[R_SHOULDER]
    assert _pixel(out, 200, 200) == COCO18.part_colors_bgr[_limb_index("neck", "r_shoulder")]
    # Far from the person nothing is drawn.
    assert _pixel(out, 200, 50) == (0, 0, 0)
    assert _pixel(out, 200, 350) == (0, 0, 0)


def test_limb_needs_both_parts():
    image = np.zeros((400, 400, 3), dtype=np.uint8)
    out = render(image, [_person({NECK: (100, 200)})], thickness=5, radius=4)
    assert _pixel(out, 100, 200) == COCO18.part_colors_bgr[NECK]
    assert _pixel(out, 200, 200) == (0, 0, 0)


def test_redundant_limbs_are_not_drawn():
    # r_shoulder -> r_ear is scored for grouping but not drawn, as in OpenPose.
    image = np.zeros((400, 400, 3), dtype=np.uint8)
    out = render(image, [_person({R_SHOULDER: (100, 200), R_EAR: (300, 200)})], thickness=5, radius=4)
    assert _pixel(out, 100, 200) == COCO18.part_colors_bgr[R_SHOULDER]
    assert _pixel(out, 300, 200) == COCO18.part_colors_bgr[R_EAR]
    assert _pixel(out, 200, 200) == (0, 0, 0)


def test_missing_parts_draw_nothing():
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    nobody = Person(keypoints=np.zeros((COCO18.num_parts, 3), dtype=np.float32), score=0.0)
    np.testing.assert_array_equal(render(image, [nobody]), image)
    np.testing.assert_array_equal(render(image, []), image)


def test_default_thickness_grows_with_image_size():
    def drawn_pixels(size: int) -> int:
        image = np.zeros((size, size, 3), dtype=np.uint8)
        out = render(image, [_person({NECK: (size * 0.25, size * 0.5), R_SHOULDER: (size * 0.75, size * 0.5)})])
        column = out[:, size // 2]
        return int(np.count_nonzero(column.any(axis=1)))

    assert drawn_pixels(1600) > drawn_pixels(160)


def test_grayscale_input_is_converted_to_bgr():
    image = np.full((200, 200), 40, dtype=np.uint8)
    out = render(image, [_person({NECK: (50, 100), R_SHOULDER: (150, 100)})], thickness=5, radius=4)
    assert out.shape == (200, 200, 3)
    assert out.dtype == np.uint8
    assert _pixel(out, 5, 5) == (40, 40, 40)
    assert _pixel(out, 50, 100) == COCO18.part_colors_bgr[NECK]
    assert (image == 40).all()


def test_bgra_input_drops_alpha():
    image = np.zeros((50, 60, 4), dtype=np.uint8)
    image[..., 3] = 255
    out = render(image, [])
    assert out.shape == (50, 60, 3)
    assert not out.any()


@pytest.mark.parametrize(
    "image",
    [np.zeros((10, 10, 3), dtype=np.float32), np.zeros((10, 10, 2), dtype=np.uint8)],
    ids=["float image", "two channels"],
)
def test_unsupported_images_are_rejected(image):
    with pytest.raises(ValueError, match="render expects"):
        render(image, [])


def test_keypoints_of_another_skeleton_are_rejected():
    person = Person(keypoints=np.zeros((17, 3), dtype=np.float32), score=0.0)
    with pytest.raises(ValueError, match=r"person 0: keypoints have shape \(17, 3\)"):
        render(np.zeros((10, 10, 3), dtype=np.uint8), [person])


def _standing(skeleton, scale: float = 1.0) -> np.ndarray:
    """A person with every part found, spread over ~200 x 260 px (x, y times scale), keypoints [K, 3]."""
    names = skeleton.part_names
    layout = {"nose": (200, 40), "neck": (200, 80), "r_shoulder": (150, 80), "r_elbow": (130, 140),
              "r_wrist": (120, 200), "l_shoulder": (250, 80), "l_elbow": (270, 140), "l_wrist": (280, 200),
              "mid_hip": (200, 170), "r_hip": (170, 170), "r_knee": (165, 230), "r_ankle": (160, 290),
              "l_hip": (230, 170), "l_knee": (235, 230), "l_ankle": (240, 290), "r_eye": (190, 32),
              "l_eye": (210, 32), "r_ear": (178, 38), "l_ear": (222, 38), "l_big_toe": (255, 300),
              "l_small_toe": (262, 298), "l_heel": (236, 300), "r_big_toe": (145, 300), "r_small_toe": (138, 298),
              "r_heel": (164, 300)}
    keypoints = np.zeros((skeleton.num_parts, 3), np.float32)
    for i, name in enumerate(names):
        keypoints[i] = (layout[name][0] * scale, layout[name][1] * scale, 0.9)
    return keypoints


@pytest.mark.parametrize("skeleton_name", ["coco18", "body25"])
def test_pose_map_draws_openposes_skeleton_on_black(skeleton_name):
    """Limb midpoints in the limb's colour, part centres in the part's, the rest black; sizes as OpenPose's:
    a 400x320 image, a person 160 px wide and 260 high -> r = 260/320, t = round(sqrt(400*320)/75*r) = 5,
    limbs round(0.75*5) = 4 px wide, discs of radius 2."""
    from openpose_ray.drawing import draw, pose_map
    from openpose_ray.skeleton import BODY25

    skeleton = COCO18 if skeleton_name == "coco18" else BODY25
    keypoints = _standing(skeleton)
    canvas = pose_map(320, 400, [Person(keypoints=keypoints, score=1.0)], skeleton)
    assert canvas.shape == (320, 400, 3) and canvas.dtype == np.uint8
    pixels = np.floor(keypoints[:, :2] + 0.5).astype(int)
    for part, color in enumerate(skeleton.part_colors_bgr):
        x, y = pixels[part]
        assert tuple(canvas[y, x]) == tuple(color), skeleton.part_names[part]
    checked = 0
    for limb, color, (a, b) in zip(skeleton.limbs, skeleton.limb_colors_bgr(), skeleton.limb_part_indices()):
        middle = (pixels[a] + pixels[b]) // 2
        if not limb.drawn or np.abs(pixels - middle).max(1).min() <= 4 or np.hypot(*(pixels[a] - pixels[b])) < 20:
            continue  # a part's disc (drawn after the limbs) may cover a short limb's middle
        assert tuple(canvas[middle[1], middle[0]]) == tuple(color), (limb.part_a, limb.part_b)
        checked += 1
    assert checked >= 8
    assert (canvas.sum(2) > 0).mean() < 0.1  # mostly black
    # the r_shoulder (150, 80) -> r_elbow (130, 140) limb is 4 px wide: 4 / cos(18.4 deg) ~ 4.2 px along a row
    arm = [i for i, pair in enumerate(skeleton.limb_part_indices())
           if tuple(pair) == (skeleton.part_names.index("r_shoulder"), skeleton.part_names.index("r_elbow"))][0]
    across = (canvas[110, 125:156] == skeleton.limb_colors_bgr()[arm]).all(1).sum()
    assert 4 <= across <= 5, across
    assert np.array_equal(draw(np.full((320, 400, 3), 99, np.uint8), [Person(keypoints=keypoints, score=1.0)],
                               skeleton, "pose_map"), canvas)  # the image's pixels never reach a pose map


def test_pose_map_sizes_follow_the_persons_extent_and_skip_what_openpose_skips():
    from openpose_ray.drawing import draw, pose_map

    big = _standing(COCO18, scale=2.0)  # 320 x 520 px on a 800 x 640 image: r = 520/640
    small = _standing(COCO18, scale=0.25)  # 40 x 65 px: r = 65/640 ~ 0.10 -> t = max(round(0.96), 2) = 2
    canvas = pose_map(640, 800, [Person(keypoints=big, score=1.0), Person(keypoints=small, score=1.0)], COCO18)
    # t = max(round(sqrt(800 * 640) / 75 * 520 / 640), 2) = 8: the big person's limbs are round(6) = 6 px wide;
    # its r_shoulder (300, 160) -> r_elbow (260, 280) crosses row 220 at x = 280, 6 / cos(18.4 deg) ~ 6.3 px
    arm_color = COCO18.limb_colors_bgr()[2]  # COCO-18 limb 2: r_shoulder -> r_elbow
    assert 6 <= (canvas[220, 265:296] == arm_color).all(1).sum() <= 7
    # the small person's: t = max(round(sqrt(800 * 640) / 75 * 65 / 640), 2) = 2, lines 2 px (round(1.5) = 2)
    assert 2 <= (canvas[28, 30:40] == arm_color).all(1).sum() <= 3  # its arm (37.5, 20) -> (32.5, 35), row 28
    flat = np.zeros((18, 3), np.float32)
    flat[1], flat[2] = (100, 100, 0.9), (150, 100, 0.9)  # two parts on one row: a box without area
    assert not pose_map(200, 200, [Person(keypoints=flat, score=1.0)], COCO18).any()
    assert not pose_map(200, 200, [], COCO18).any()
    with pytest.raises(ValueError, match="render style must be one of overlay, pose_map"):
        draw(np.zeros((4, 4, 3), np.uint8), [], COCO18, "sketch")
