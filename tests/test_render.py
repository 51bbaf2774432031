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
