"""The YAML job configurations and their strict loader (no Ray, no network)."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import pytest

from openpose_ray.config_loader import (
    ConfigError,
    config_fingerprint,
    config_to_dict,
    dotted_keys,
    load_config,
    redacted_dict,
)
from openpose_ray.jobconfig import JobConfig, resolve_decoder

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CONFIG_FILES = ("local.yaml", "s3.yaml", "gpu-cluster.yaml")
MINIMAL = ("input=in", "output=out")
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")


def _key_lines(text: str) -> list[tuple[str, int, str]]:
    """(dotted key, line number, line) of every mapping key line of a block-style YAML text."""
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing sections
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        match = _KEY_LINE.match(line)
        if not match:
            continue  # blank, comment, or "- item" of a block list
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        found.append((".".join([key for _, key in stack] + [match["key"]]), number, line))
        stack.append((indent, match["key"]))
    return found


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_shipped_config_loads(name):
    config = load_config(CONFIGS / name)
    assert isinstance(config, JobConfig)
    assert config.input and config.output


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_shipped_config_lists_every_key_each_with_a_comment(name):
    text = (CONFIGS / name).read_text(encoding="utf-8")
    lines = text.splitlines()
    keys = _key_lines(text)
    leaves = {key for key, _, _ in keys if not any(other.startswith(key + ".") for other, _, _ in keys)}
    assert leaves == set(dotted_keys()), f"{name}: missing {set(dotted_keys()) - leaves}, extra {leaves - set(dotted_keys())}"
    for key, number, line in keys:
        commented_above = number >= 2 and lines[number - 2].lstrip().startswith("#")
        assert "#" in line or commented_above, f"{name}:{number}: key {key!r} has no comment"


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_set_overrides_input_and_output(name, tmp_path):
    config = load_config(CONFIGS / name, [f"input={tmp_path / 'media'}", f"output={tmp_path / 'out'}"])
    assert config.input == (str(tmp_path / "media"),)
    assert config.output == str(tmp_path / "out")


def test_local_config_reads_the_shared_test_media():
    config = load_config(CONFIGS / "local.yaml")
    assert config.input == ("../shared/data/coco_val2017_mini", "../shared/data/coco_val2014_samples", "../shared/data/videos")
    assert config.ray.address is None and config.inference.device == "auto"


def test_gpu_cluster_config_uses_one_gpu_per_actor():
    pool = load_config(CONFIGS / "gpu-cluster.yaml").inference
    assert (pool.device, pool.gpus_per_actor, pool.max_actors, pool.cpus_per_actor) == ("cuda", 1.0, None, 1.0)
    assert isinstance(pool.gpus_per_actor, float)  # YAML 1 converted for a float field


def test_set_values_are_parsed_as_yaml():
    config = load_config(None, [*MINIMAL, "inference.batch_size=8", "model.net_size=[656,368]",
                                "write.partition_by=null", "input=s3://bucket/prefix/", "postprocess.peak_threshold=0.1"])
    assert config.inference.batch_size == 8
    assert config.model.net_size == (656, 368)
    assert config.write.partition_by is None
    assert config.input == ("s3://bucket/prefix/",)
    assert config.postprocess.peak_threshold == 0.1


def test_input_takes_a_string_or_a_list(tmp_path):
    assert load_config(_write(tmp_path, "input: a\noutput: o\n")).input == ("a",)
    assert load_config(_write(tmp_path, "input: [a, b]\noutput: o\n")).input == ("a", "b")


@pytest.mark.parametrize("missing", ["input", "output"])
def test_input_and_output_are_required(missing):
    given = [item for item in MINIMAL if not item.startswith(missing)]
    with pytest.raises(ConfigError, match=f"{missing} is required: set it in the YAML or pass --set {missing}=PATH"):
        load_config(None, given)


def test_unknown_top_level_key_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("unknown key 'ouptut'; did you mean 'output'?")):
        load_config(_write(tmp_path, "input: a\nouptut: o\n"))


def test_unknown_nested_key_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("unknown key 'inference.batchsize'; did you mean 'inference.batch_size'?")):
        load_config(_write(tmp_path, "input: a\noutput: o\ninference:\n  batchsize: 8\n"))


def test_key_in_the_wrong_section_suggests_where_it_belongs(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("unknown key 'batch_size'; did you mean 'inference.batch_size'?")):
        load_config(_write(tmp_path, "input: a\noutput: o\nbatch_size: 8\n"))


def test_unknown_set_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=re.escape("unknown key 'inference.batchsize'; did you mean 'inference.batch_size'?")):
        load_config(None, [*MINIMAL, "inference.batchsize=8"])
    with pytest.raises(ConfigError, match=re.escape("unknown key 'modle'; did you mean 'model'?")):
        load_config(None, [*MINIMAL, "modle.name=cmu_body"])


def test_set_needs_key_equals_value():
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(None, [*MINIMAL, "inference.batch_size"])


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("inference.batch_size=many", "inference.batch_size", "int"),
        ("model.net_size=[1,2,3]", "model.net_size", "list of 2 values"),
        ("inference.device=tpu", "inference.device", "one of 'auto', 'cpu', 'cuda'"),
        ("write.render_images='yes'", "write.render_images", "bool"),
        ("inference.batch_size=8.5", "inference.batch_size", "int"),
        ("write.partition_by=month", "write.partition_by", "one of"),
        ("model.scales=[1, fast]", "model.scales", "float"),
        ("model=cmu_body", "model", "a mapping"),
    ],
)
def test_wrong_type_names_the_key_and_the_expected_type(override, key, expected):
    with pytest.raises(ConfigError, match=re.escape(key)) as raised:
        load_config(None, [*MINIMAL, override])
    assert expected in str(raised.value)


def test_wrong_types_in_yaml_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"inference\.batch_size: expected int or null, got 'many'"):
        load_config(_write(tmp_path, "input: a\noutput: o\ninference:\n  batch_size: many\n"))
    with pytest.raises(ConfigError, match=r"write\.render_videos: expected bool .*'yes'"):
        load_config(_write(tmp_path, "input: a\noutput: o\nwrite:\n  render_videos: 'yes'\n"))


def test_dataclass_checks_become_config_errors():
    with pytest.raises(ConfigError, match="postprocess: nms_window must be an odd number"):
        load_config(None, [*MINIMAL, "postprocess.nms_window=4"])


@pytest.mark.parametrize("override", ["model.net_size=[8,8]", "model.scales=[]", "model.scales=[.nan]", "model.scales=[5]"])
def test_model_input_spec_is_checked_at_load_time(override):
    with pytest.raises(ConfigError, match="^model: (net_size|scales) must be"):
        load_config(None, [*MINIMAL, override])


def test_duplicate_keys_and_bad_yaml_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="given twice"):
        load_config(_write(tmp_path, "input: a\noutput: o\noutput: p\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "input: [a\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_empty_section_keeps_defaults(tmp_path):
    config = load_config(_write(tmp_path, "input: a\noutput: o\nmodel:\n"))
    assert config.model == JobConfig(input=("a",), output="o").model


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_is_frozen_and_pickles(name):
    config = load_config(CONFIGS / name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.output = "elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.inference.batch_size = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(config)) == config


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_to_dict_round_trips_through_yaml(name, tmp_path):
    import yaml

    config = load_config(CONFIGS / name)
    path = _write(tmp_path, yaml.safe_dump(config_to_dict(config)))
    assert load_config(path) == config


def test_fingerprint_ignores_key_order_and_where_results_go(tmp_path):
    forward = _write(tmp_path, "input: a\noutput: o\npostprocess:\n  peak_threshold: 0.1\n  min_parts: 3\n")
    base = config_fingerprint(load_config(forward))
    backward = tmp_path / "backward.yaml"
    backward.write_text("postprocess:\n  min_parts: 3\n  peak_threshold: 0.1\noutput: o\ninput: a\n", encoding="utf-8")
    assert config_fingerprint(load_config(backward)) == base
    assert config_fingerprint(load_config(forward, ["output=s3://elsewhere/", "inference.batch_size=64"])) == base
    assert config_fingerprint(load_config(forward, ["postprocess.peak_threshold=0.2"])) != base
    assert re.fullmatch(r"[0-9a-f]{16}", base)


def test_decoder_yuv_is_a_generation_of_its_own_and_auto_follows_the_actors():
    """yuv and gpu pixels are converted on the device (other rounding than swscale): another fingerprint, one
    for both; cpu keeps the one runs had before the key existed; auto is gpu on CUDA actors and cpu on CPU ones."""
    base = load_config(None, MINIMAL)
    assert config_fingerprint(load_config(None, [*MINIMAL, "sources.decoder=cpu"])) == config_fingerprint(base)
    yuv = config_fingerprint(load_config(None, [*MINIMAL, "sources.decoder=yuv"]))
    assert yuv != config_fingerprint(base)
    auto = load_config(None, [*MINIMAL, "sources.decoder=auto"])
    assert config_fingerprint(auto, "cpu") == config_fingerprint(base)
    assert config_fingerprint(auto, "cuda") == config_fingerprint(load_config(None, [*MINIMAL, "sources.decoder=gpu"]),
                                                                  "cuda")
    assert config_fingerprint(load_config(None, [*MINIMAL, "sources.decoder=gpu"])) == yuv  # NVDEC: the same planes
    assert resolve_decoder("auto", "cuda") == "gpu" and resolve_decoder("auto", "cpu") == "cpu"
    assert resolve_decoder("yuv", "cpu") == "yuv"  # on a CPU actor too: the conversion runs in its threads
    with pytest.raises(ConfigError, match="decoder"):
        load_config(None, [*MINIMAL, "sources.decoder=nvdec"])


def test_fingerprint_treats_an_int_like_its_float():
    assert config_fingerprint(load_config(None, [*MINIMAL, "model.scales=[1]"])) == config_fingerprint(load_config(None, MINIMAL))


def test_redacted_dict_masks_signed_urls_and_passwords():
    config = load_config(None, ["input=https://host/a.jpg?X-Amz-Signature=abc123&token=t0k", "output=out",
                                "s3.endpoint_url=http://user:hunter2@minio:9000"])
    shown = repr(redacted_dict(config))
    assert "abc123" not in shown and "t0k" not in shown and "hunter2" not in shown
    assert redacted_dict(config)["output"] == "out"
    assert "minio:9000" in redacted_dict(config)["s3"]["endpoint_url"]
