"""The `openpose-ray` command, run in-process through `main` on the real photos (one subprocess test for the script)."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from openpose_ray.cli import _render_names, main
from openpose_ray.outputs.people_table import read_keypoints

# Annotated people per coco_val2017_mini photo; the default estimator finds exactly these.
PEOPLE_PER_PHOTO = {"000000000785.jpg": 1, "000000040083.jpg": 2, "000000196141.jpg": 4, "000000197388.jpg": 5}


def _assert_rows_match_estimator(table: pa.Table, source: str, image: np.ndarray, estimator) -> int:
    """Assert the rows of ``source`` equal ``estimator.estimate([image])`` exactly, in order; return their number."""
    rows = table.filter(pc.equal(table.column("source"), source))
    expected = estimator.estimate([image])[0]
    assert rows.num_rows == len(expected), source
    assert rows.column("person_index").to_pylist() == list(range(len(expected)))
    assert set(rows.column("frame_index").to_pylist()) <= {0}
    assert np.array_equal(read_keypoints(rows), np.stack([p.keypoints for p in expected]))
    assert np.array_equal(rows.column("score").to_numpy(), np.array([p.score for p in expected], dtype=np.float32))
    return rows.num_rows


def test_predict_writes_the_estimators_people_and_renders_each_photo(tmp_path, estimator, labelled_photos, capsys):
    out, render_dir = tmp_path / "people.parquet", tmp_path / "render"

    code = main(["predict", *map(str, labelled_photos), "--out", str(out), "--render", str(render_dir)])

    assert code == 0
    table = pq.read_table(out)
    assert list(dict.fromkeys(table.column("source").to_pylist())) == [str(p) for p in labelled_photos]
    for photo in labelled_photos:
        image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        assert _assert_rows_match_estimator(table, str(photo), image, estimator) == PEOPLE_PER_PHOTO[photo.name]
        rendered = cv2.imread(str(render_dir / photo.name), cv2.IMREAD_COLOR)
        assert rendered is not None and rendered.shape == image.shape
    assert sorted(p.name for p in render_dir.iterdir()) == sorted(PEOPLE_PER_PHOTO)
    assert capsys.readouterr().out.strip() == f"4 images, 12 people, 0 failed; wrote {out}"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_net_size_and_scales_reach_the_estimator(tmp_path, estimator, labelled_photos):
    photo, out = labelled_photos[1], tmp_path / "people.parquet"

    code = main(["predict", str(photo), "--out", str(out), "--net-size", "656x368", "--scales", "1.0,0.5"])

    assert code == 0
    image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    configured = estimator.with_config(net_size=(656, 368), scales=(1.0, 0.5))
    assert _assert_rows_match_estimator(pq.read_table(out), str(photo), image, configured) > 0


def test_an_undecodable_file_is_reported_and_the_others_are_written(tmp_path, labelled_photos, capsys, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in labelled_photos[:2]:
        shutil.copy(photo, photos / photo.name)
    corrupt = photos / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    (photos / "notes.txt").write_text("not an image suffix, so not an input")
    out = tmp_path / "people.parquet"

    with caplog.at_level(logging.ERROR, logger="openpose_ray.cli"):
        code = main(["predict", str(photos), "--out", str(out)])

    assert code == 1
    sources = pq.read_table(out).column("source").to_pylist()
    assert list(dict.fromkeys(sources)) == [str(photos / p.name) for p in labelled_photos[:2]]
    assert str(corrupt) in caplog.text
    assert capsys.readouterr().out.strip() == f"2 images, 3 people, 1 failed; wrote {out}"


def test_inputs_sharing_a_file_name_get_one_rendered_image_each(tmp_path, labelled_photos):
    image = cv2.imread(str(labelled_photos[0]), cv2.IMREAD_COLOR)
    inputs = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "a" / "x.png"]
    for path in inputs:
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), image)
    render_dir = tmp_path / "render"

    code = main(["predict", *map(str, inputs), "--out", str(tmp_path / "p.parquet"), "--render", str(render_dir)])

    assert code == 0
    assert sorted(p.name for p in render_dir.iterdir()) == ["0_x.jpg", "1_x.jpg", "x.png"]


def test_render_names_are_distinct_ignoring_case_and_keep_writable_suffixes():
    names = _render_names(["a/x.jpg", "b/X.JPG", "c/0_x.jpg", "d/clip.gif", "e/y.png"])
    assert names == ["0_x.jpg", "1_X.JPG", "2_0_x.jpg", "clip.gif.jpg", "y.png"]
    assert len({n.lower() for n in names}) == len(names)


def test_rendering_into_the_input_folder_is_refused(tmp_path, labelled_photos, capsys):
    photo = tmp_path / labelled_photos[0].name
    shutil.copy(labelled_photos[0], photo)

    code = main(["predict", str(photo), "--out", str(tmp_path / "p.parquet"), "--render", str(tmp_path)])

    assert code == 2
    assert "overwrite" in capsys.readouterr().err
    assert not (tmp_path / "p.parquet").exists()


def test_weights_list_shows_every_model_and_whether_it_has_default_weights(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_thin: " in out and "default weights: " in out
    assert "cmu_body: " in out and "no default weights: pass --weights" in out


def test_weights_fetch_reports_the_cached_files(estimator, capsys):
    assert main(["weights", "fetch"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_thin.pt" in out and "graph_opt.pb" in out
    assert estimator.entry.source.sha256 in out


@pytest.mark.parametrize("argv", [["weights", "fetch", "--model", "nope"], ["predict", "x.jpg", "--out", "p.parquet", "--model", "nope"]])
def test_unknown_model_exits_2_and_lists_the_known_models(argv, capsys):
    assert main(argv) == 2
    assert "known models: body_25, cmu_body, mobilenet_thin" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--net-size", "432"), ("--net-size", "432x"), ("--net-size", "ax368"),
                                           ("--net-size", "8x8"), ("--scales", "1.0,x"), ("--scales", "0")])
def test_bad_option_values_are_argparse_errors(option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "x.jpg", "--out", "p.parquet", option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_no_images_found_exits_2(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "p.parquet")]) == 2
    assert "no image files" in capsys.readouterr().err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "predict" in capsys.readouterr().out


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("openpose-ray")
    assert script.is_file(), f"{script} missing: install the package (pip install -e .)"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"openpose-ray {importlib.metadata.version('openpose_ray')}"


def test_evaluate_prints_the_ap_of_the_accuracy_test(estimator, data_dir, capsys):
    """`openpose-ray evaluate` on coco_val2017_mini: a line `AP <value>` equal to what
    openpose_ray.coco.evaluate_keypoints gives the estimator (test_accuracy asserts >= 0.60)."""
    from openpose_ray.coco import evaluate_keypoints

    mini = data_dir / "coco_val2017_mini"
    assert main(["evaluate", "--annotations", str(mini / "person_keypoints.json"), "--images", str(mini)]) == 0
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert set(lines) == {"AP", "AP50", "AP75", "APm", "APl", "AR"}
    want = evaluate_keypoints(mini / "person_keypoints.json", lambda p: estimator.estimate([cv2.imread(p)])[0], mini)
    assert float(lines["AP"]) == pytest.approx(want["AP"], abs=5e-4) and float(lines["AP"]) >= 0.60
    assert main(["evaluate", "--annotations", str(mini / "nothing.json"), "--images", str(mini)]) == 2


def test_predict_renders_pose_maps_on_request(tmp_path, estimator, labelled_photos):
    """--render-style pose_map: each rendered file is the photo's pose map (drawing.pose_map of its people), not
    the photo: black where no one is (JPEG's ringing aside)."""
    from openpose_ray.drawing import pose_map

    photo, out, render_dir = labelled_photos[2], tmp_path / "people.parquet", tmp_path / "maps"
    assert main(["predict", str(photo), "--out", str(out), "--render", str(render_dir),
                 "--render-style", "pose_map"]) == 0
    image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    expected = pose_map(*image.shape[:2], estimator.estimate([image])[0], estimator.skeleton)
    rendered = cv2.imread(str(render_dir / photo.name), cv2.IMREAD_COLOR)
    assert rendered.shape == expected.shape and expected.any()
    assert np.abs(rendered.astype(int) - expected).mean() < 2.0
    assert np.percentile(rendered[expected.sum(2) == 0], 99) < 40  # the photo itself is nowhere
