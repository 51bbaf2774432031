"""`inference.compile`: the network through torch.compile with static shapes equals the eager network,
compiles once per batch bucket and never again, and a compiler that fails means eager, said once."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from openpose_ray.compiled import StaticCompiled, bucket, compile_wanted
from openpose_ray.config import NetworkConfig
from openpose_ray.jobconfig import InferencePoolConfig

SIZE = (80, 64)  # small frames: inductor compiles this network in ~15-30 s a shape on 2 cores


def test_settings():
    assert [compile_wanted(s, d) for s in ("auto", "on", "off") for d in ("cpu", "cuda")] == \
        [False, True, True, True, False, False]
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 63, 64, 65)] == [1, 2, 4, 4, 8, 64, 64, 128]
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        NetworkConfig(compile="yes")
    assert InferencePoolConfig().compile == "auto" and NetworkConfig().compile == "off"  # jobs compile on CUDA


def test_compiled_equals_eager_and_compiles_once_per_bucket(estimator, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a cold cache: really compiles
    eager = estimator.with_config(net_size=SIZE, backend="torch", compile="off").engine
    compiled = estimator.with_config(net_size=SIZE, backend="torch", compile="on").engine
    assert eager.compiled_network is None and isinstance(compiled.compiled_network, StaticCompiled)
    generator = np.random.default_rng(0)
    frames = {n: torch.from_numpy(generator.integers(0, 256, (n, SIZE[1], SIZE[0], 3), dtype=np.uint8))
              for n in (1, 3, 4)}
    from torch._dynamo.utils import counters

    caplog.set_level(logging.INFO, logger="openpose_ray.compiled")
    graphs_before = counters["stats"]["unique_graphs"]
    for n in (3, 1, 4, 3, 1, 4):  # a run of chunks of mixed sizes: 3 is padded to 4, so 2 graphs, not 3
        ours, theirs = compiled.network_fields(frames[n]), eager.network_fields(frames[n])
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape and a.shape[0] == n
            assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max()) + 1e-5
    network = compiled.compiled_network
    assert network.failed is None
    assert sorted(network.compile_seconds) == [(1, 3, SIZE[1], SIZE[0], "torch.float32"),
                                               (4, 3, SIZE[1], SIZE[0], "torch.float32")]
    assert counters["stats"]["unique_graphs"] - graphs_before == 2  # one graph per bucket, none recompiled
    assert sum("network compiled for a [4, 3, 64, 80] input" in r.getMessage() for r in caplog.records) == 1


def _failing_backend(graph_module, example_inputs):
    raise RuntimeError("this compiler cannot compile")


@pytest.mark.parametrize("backend", ["no-such-backend", _failing_backend], ids=["at-wrap", "at-first-call"])
def test_a_compiler_that_fails_logs_one_line_and_runs_eager(estimator, backend, caplog):
    caplog.set_level(logging.WARNING, logger="openpose_ray.compiled")
    network = estimator.engine.network
    compiled = StaticCompiled(network, torch.device("cpu"), backend=backend)
    x = torch.rand(1, 3, SIZE[1], SIZE[0]) * 255
    with torch.inference_mode():
        for _ in range(3):
            ours, theirs = compiled(x), network(x)
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert compiled.failed is not None and compiled.compile_seconds == {}
    warnings = [r.getMessage() for r in caplog.records if r.name == "openpose_ray.compiled"]
    assert len(warnings) == 1 and "torch.compile of the network failed" in warnings[0], warnings
    assert "running it eager" in warnings[0] and (backend == "no-such-backend" or "cannot compile" in warnings[0])


def test_compiled_artefacts_are_kept_in_the_node_cache_unless_the_user_chose_a_folder(tmp_path, monkeypatch):
    """torch sets TORCHINDUCTOR_CACHE_DIR to its /tmp default as its compiler loads: that is no choice, and the
    artefacts go to <cache>/inductor, where a restarted actor finds them; a folder the user set is kept."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("OPENPOSE_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    torch._dynamo.reset()
    compiled = StaticCompiled(lambda x: (x * 2 + 1).relu(), torch.device("cpu"), name="test function")
    x = torch.arange(-3.0, 5.0).reshape(8, 1)
    assert torch.equal(compiled(x), (x * 2 + 1).relu()) and compiled.failed is None
    assert (tmp_path / "cache" / "inductor").is_dir() and any((tmp_path / "cache" / "inductor").rglob("*.py"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    StaticCompiled(lambda x: x + 1, torch.device("cpu"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
