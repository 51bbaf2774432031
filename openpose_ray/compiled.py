"""The network through ``torch.compile``, with static shapes: compiled once per shape, never mid-run again.

``inference.compile`` (a job's actors; default "auto") / ``NetworkConfig.compile`` (PoseEstimator; default
"off": a few photos of many shapes never repay a compile per shape): "on", "off", or "auto" (on for CUDA,
off on a CPU, where OpenVINO is faster and inductor's compile costs 8-12 s a shape on 2 cores).

:class:`CompiledNetwork` wraps the module the engine runs. A batch of ``n`` frames is padded with
zero frames up to the next power of two (the buckets 1, 2, 4, ... 64 for the default CUDA batch),
so that a run of chunks of any size compiles at most log2(batch) + 1 graphs per input geometry and
each is reused: nothing recompiles after the first chunk of each bucket (``torch.compile(dynamic=False)``;
dynamo's recompile limit is raised so that every bucket of every geometry fits). On CUDA the graphs
are captured as CUDA graphs (mode "reduce-overhead": one launch a call); their outputs live in
memory the next replay overwrites, so they are cloned. Compiled artefacts are cached on the node's
disk (inductor's cache, ``<cache>/inductor``, models.weights.cache_dir) so that a restarted actor
compiles from cache. A compile or compiled-call failure logs one line and the network runs eager
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


class CompiledNetwork:
    """``network`` compiled with static shapes; call it like the network: float [N, 3, H, W] -> (heatmaps, pafs).

    backend: torch.compile's backend (inductor; tests pass others). compile_seconds: {(bucket, C, H, W,
    dtype): seconds of the call that compiled it}. failed: the failure that turned compiling off, or None.
    """

    def __init__(self, network: torch.nn.Module, device: torch.device, backend: str | Callable = "inductor"):
        self.network = network
        self.cuda_graphs = device.type == "cuda"
        self.compile_seconds: dict[tuple, float] = {}
        self.failed: str | None = None
        _raise_recompile_limit()
        if backend == "inductor":
            from .models.weights import cache_dir

            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
        try:
            self._compiled = torch.compile(network, backend=backend, dynamic=False,
                                           mode="reduce-overhead" if self.cuda_graphs and backend == "inductor" else None)
        except Exception as exc:  # noqa: BLE001 - an unusable compiler means eager, said once
            self._give_up(exc)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.failed is not None:
            return self.network(x)
        n = x.shape[0]
        size = bucket(n)
        padded = x if size == n else _padded(x, size)
        key = (size, *x.shape[1:], str(x.dtype))
        start = time.perf_counter()
        try:
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            heatmaps, pafs = self._compiled(padded)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self._give_up(exc)
            return self.network(x)
        if key not in self.compile_seconds:
            self.compile_seconds[key] = round(time.perf_counter() - start, 2)
            log.info("torch.compile: network compiled for a [%s] input in %.1f s", ", ".join(map(str, key[:4])),
                     self.compile_seconds[key])
        if self.cuda_graphs:  # the next replay overwrites a CUDA graph's outputs
            return heatmaps[:n].clone(), pafs[:n].clone()
        return heatmaps[:n], pafs[:n]

    def _give_up(self, exc: BaseException) -> None:
        lines = str(exc).strip().splitlines()
        self.failed = f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
        cause = getattr(exc, "inner_exception", None) or exc.__cause__  # a backend's own error, wrapped by dynamo
        if cause is not None:
            self.failed += f" {type(cause).__name__}: {str(cause)[:300]}"
        log.warning("torch.compile of the network failed (%s); running it eager", self.failed)


def _padded(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` followed by zero frames up to ``size``, in x's memory format: strides are part of a compiled
    graph's guards, so a padded batch must look like an unpadded one (channels-last from the engine)."""
    layout = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else \
        torch.contiguous_format
    padded = torch.empty((size, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=layout)
    padded[: x.shape[0]].copy_(x)
    padded[x.shape[0]:].zero_()
    return padded


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed between torch versions
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), _RECOMPILE_LIMIT))
