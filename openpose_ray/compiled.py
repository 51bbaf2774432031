"""The network through ``torch.compile``, with static shapes: compiled once per shape, never mid-run again.

``inference.compile`` (a job's actors; default "auto") / ``NetworkConfig.compile`` (PoseEstimator; default
"off": a few photos of many shapes never repay a compile per shape): "on", "off", or "auto" (on for CUDA,
off on a CPU, where OpenVINO is faster and inductor's compile costs 8-12 s a shape on 2 cores).

:class:`StaticCompiled` wraps the module the engine runs (and its peak finder,
postprocess.device_fixed). A batch of ``n`` frames is padded with zero frames up to the next power
of two (the buckets 1, 2, 4, ... 64 for the default CUDA batch), so that a run of chunks of any size
compiles at most log2(batch) + 1 graphs per input geometry and each is reused: nothing recompiles
after the first chunk of each bucket (``torch.compile(dynamic=False)``; dynamo's recompile limit is
raised so that every bucket of every geometry fits). On CUDA the graphs are captured as CUDA graphs
(mode "reduce-overhead": one launch a call); their outputs live in memory the next replay
overwrites, so they are cloned. Compiled artefacts are cached on the node's disk (inductor's and
Triton's caches under ``<cache>/inductor``, models.weights.cache_dir, unless TORCHINDUCTOR_CACHE_DIR
names another folder) so that a restarted actor compiles from cache. A compile or compiled-call
failure logs one line and the network runs eager
from then on: compiling is an optimisation, never a reason for a job to fail.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch

from .config import check_compile

log = logging.getLogger(__name__)

# Enough graphs for every bucket (1..256) of a dozen input geometries (fit's aspect buckets, scales).
_RECOMPILE_LIMIT = 128


def compile_wanted(setting: str, device_type: str) -> bool:
    """Whether ``setting`` ("auto", "on", "off") compiles the network on a ``device_type`` device."""
    check_compile(setting)
    return setting == "on" or (setting == "auto" and device_type == "cuda")


def bucket(n: int) -> int:
    """The batch a call of ``n`` frames is padded to: the next power of two."""
    return 1 << max(n - 1, 0).bit_length()


class StaticCompiled:
    """``function`` compiled with static shapes; called like it, e.g. the network: float [N, 3, H, W] ->
    (heatmaps, pafs), or the peak finder: (heatmaps, pafs, *tables) -> packed [N, F].

    The first ``batched`` arguments are a batch of N along dim 0 (padded to the bucket; the rest go as
    they are), and every output tensor is one (cut back to N). backend: torch.compile's backend
    (inductor; tests pass others). name: what is compiled, for the log. compile_seconds: {(bucket,
    *first argument's frame shape, dtype): seconds of the call that compiled it}. failed: the failure
    that turned compiling off, or None.
    """

    def __init__(self, function: Callable, device: torch.device, backend: str | Callable = "inductor",
                 batched: int = 1, name: str = "network"):
        self.network = function
        self.batched = batched
        self.name = name
        self.cuda_graphs = device.type == "cuda"
        self.compile_seconds: dict[tuple, float] = {}
        self.failed: str | None = None
        if backend == "inductor":
            _use_node_cache()
        _raise_recompile_limit()
        try:
            self._compiled = torch.compile(function, backend=backend, dynamic=False,
                                           mode="reduce-overhead" if self.cuda_graphs and backend == "inductor" else None)
        except Exception as exc:  # noqa: BLE001 - an unusable compiler means eager, said once
            self._give_up(exc)

    def __call__(self, *inputs: torch.Tensor):
        if self.failed is not None:
            return self.network(*inputs)
        n = inputs[0].shape[0]
        size = bucket(n)
        padded = inputs if size == n else tuple(_padded(x, size) if i < self.batched else x
                                                 for i, x in enumerate(inputs))
        key = (size, *inputs[0].shape[1:], str(inputs[0].dtype))
        start = time.perf_counter()
        try:
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            outputs = self._compiled(*padded)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self._give_up(exc)
            return self.network(*inputs)
        if key not in self.compile_seconds:
            self.compile_seconds[key] = round(time.perf_counter() - start, 2)
            log.info("torch.compile: %s compiled for a [%s] input in %.1f s", self.name,
                     ", ".join(map(str, key[:-1])), self.compile_seconds[key])
        # the next replay of a CUDA graph overwrites its outputs: they are cloned
        cut = (lambda t: t[:n].clone()) if self.cuda_graphs else (lambda t: t[:n])  # noqa: E731
        return tuple(map(cut, outputs)) if isinstance(outputs, tuple) else cut(outputs)

    def _give_up(self, exc: BaseException) -> None:
        lines = str(exc).strip().splitlines()
        self.failed = f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
        cause = getattr(exc, "inner_exception", None) or exc.__cause__  # a backend's own error, wrapped by dynamo
        if cause is not None:
            self.failed += f" {type(cause).__name__}: {str(cause)[:300]}"
        log.warning("torch.compile of the %s failed (%s); running it eager", self.name, self.failed)


def _padded(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` followed by zero frames up to ``size``, in x's memory format: strides are part of a compiled
    graph's guards, so a padded batch must look like an unpadded one (channels-last from the engine)."""
    layout = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else \
        torch.contiguous_format
    padded = torch.empty((size, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=layout)
    padded[: x.shape[0]].copy_(x)
    padded[x.shape[0]:].zero_()
    return padded


def _use_node_cache() -> None:
    """Inductor's (and Triton's) compiled artefacts under <cache>/inductor, unless the user chose a folder.

    Importing parts of torch's compiler sets TORCHINDUCTOR_CACHE_DIR to its default (a per-user folder in
    /tmp, lost on a node's reboot), so that value counts as not chosen; inductor reads the variable at
    every use."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from .models.weights import cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed between torch versions
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), _RECOMPILE_LIMIT))
