"""The job's inference stage: an actor holding the network, PreparedShard -> InferredShard.

The one stage that imports torch (and OpenVINO): the CPU stages
(pipeline.stages) stay without it, so a worker process that only decodes,
groups or writes imports them in ~1 s and ~185 MiB instead of ~2.1 s and
~365 MiB (docs/benchmarks.md; tests/test_worker_imports.py).
"""

from __future__ import annotations

import os
import time

import torch

from ..config import resolve_precision
from ..estimator import PoseEstimator
from ..frame_outputs import FrameFields, FramePeaks
from ..jobconfig import JobConfig
from ..models.weights import ResolvedWeights
from .records import InferredShard, PreparedShard, from_row, to_row
from .shipped_weights import ShippedWeights


class InferenceActor:
    """Holds the network on its device; turns a PreparedShard into an InferredShard (fields, or peaks and limbs).

    weights: ShippedWeights from the driver (the actor never fetches weights itself), or
        ResolvedWeights in memory when the class is used without Ray (benchmarks/gpu_check.py).
    peaks_on_device: find peaks and score limbs here (see InferenceEngine.peaks).
    """

    def __init__(self, config: JobConfig, weights: ShippedWeights | ResolvedWeights, device: str, torch_threads: int,
                 peaks_on_device: bool):
        if device == "cpu":  # the driver's share of the cores, at most this machine's
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            torch.set_num_threads(max(1, min(torch_threads, cores)))
        self.config = config
        self.weights = weights
        self.device = device
        self.peaks_on_device = peaks_on_device
        self._estimator: PoseEstimator | None = None

    @property
    def estimator(self) -> PoseEstimator:
        """The network, loaded on first use: a run with nothing left to do loads no weights."""
        if self._estimator is None:
            model = self.config.model
            self._estimator = PoseEstimator.from_state_dict(
                model.name, self.weights.load(), source=self.weights.source, device=self.device,
                net_size=model.net_size, resize_mode=model.resize_mode, aspect_buckets=model.aspect_buckets,
                scales=model.scales,
                postprocess=self.config.postprocess,
                weights_sha256=self.weights.file_sha256,
                # the runner resolves "auto" before the actors start; an actor built without it (tests, benchmarks) too
                precision=resolve_precision(self.config.inference.precision, torch.device(self.device).type),
                backend=self.config.inference.backend if self.device == "cpu" else "torch",
                compile=self.config.inference.compile,
            )
        return self._estimator

    def __call__(self, row: dict) -> dict:
        record = from_row(row)
        if not isinstance(record, PreparedShard):
            return row
        start = time.perf_counter()
        ok = [i for i, item in enumerate(record.inputs) if item is not None]
        results: list[FrameFields | FramePeaks | None] = [None] * len(record.inputs)
        if ok:
            engine, batch_size = self.estimator.engine, self.config.inference.batch_size
            items = [record.inputs[i] for i in ok]
            found = (engine.peaks(items, self.config.postprocess, batch_size) if self.peaks_on_device
                     else engine.fields(items, batch_size))
            for i, frame_result in zip(ok, found):
                results[i] = frame_result
        seconds = record.seconds.plus(infer=time.perf_counter() - start)
        ended = record.ended.plus(infer=time.time())
        return to_row(InferredShard(record.frames, tuple(results), len(ok), seconds, ended), row["key"])
