"""Section 13 of benchmarks/gpu_check.py (issue 24): does the inference actor keep the device fed?

At each size, in fp16 (fp32 on a CPU), at the actor's batch size:

- model-only frames/s of the network the engine runs (its inference form), eager and compiled
  (``inference.compile``), inputs already on the device: the ceiling;
- the job's InferenceActor called directly (no Ray) on decoded video frames, peaks on the device,
  compile on (the CUDA default) and off: frames/s and the ratio to compiled model-only (goal >= 0.9),
  with the seconds each compile took;
- the device's peak finding on one chunk of real frames' fields: the fixed-size buffers
  (postprocess.device_fixed) eager and compiled, and the exact data-dependent path
  (postprocess.device), ms a chunk, and how many frames overflowed the buffers;
- synchronising calls per chunk while the engine finds peaks (``torch.cuda.set_sync_debug_mode("warn")``;
  the one event wait per chunk is not such a call);
- batch 1, ``estimate()`` of one frame at a time, eager vs compiled (frames/s).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from gpu_speed import frames_per_s, synchronize
from openpose_ray.estimator import PoseEstimator
from openpose_ray.postprocess.device import peaks_and_candidates
from openpose_ray.postprocess.device_fixed import PEAKS_PER_PART, peak_tables


def _ms_per_call(work: Callable, device: str, repeat: int) -> float:
    work()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        work()
    synchronize(device)
    return round(1000 * (time.perf_counter() - start) / repeat, 3)


def peak_finding(estimator: PoseEstimator, frames: list[np.ndarray], device: str, batch_size: int,
                 repeat: int) -> dict:
    """ms per chunk of ``batch_size`` real frames: fixed buffers eager / compiled, the exact path."""
    from openpose_ray.inference import peak_finder

    engine, config, skeleton = estimator.engine, estimator.postprocess, estimator.entry.skeleton
    prepared = [estimator.prepare(frames[i % len(frames)]) for i in range(batch_size)]
    batch = torch.from_numpy(np.stack([p.inputs[0] for p in prepared])).to(device)
    with torch.inference_mode():
        heatmaps, pafs = engine.network_fields(batch)
        valid_w, valid_h = prepared[0].base_transform.valid_field_size(estimator.input_spec.stride)
        heatmaps, pafs = heatmaps[..., :valid_h, :valid_w], pafs[..., :valid_h, :valid_w]
        tables = peak_tables(*heatmaps.shape[-2:], skeleton, config, heatmaps.device)
        function = peak_finder(skeleton.num_parts, config, PEAKS_PER_PART, torch.device(device), compiled=False)
        compiled = peak_finder(skeleton.num_parts, config, PEAKS_PER_PART, torch.device(device), compiled=True)
        compiled(heatmaps, pafs, *tables)  # compiles
        out = {"fixed_eager_ms": _ms_per_call(lambda: function(heatmaps, pafs, *tables), device, repeat),
               "fixed_compiled_ms": _ms_per_call(lambda: compiled(heatmaps, pafs, *tables), device, repeat),
               "exact_ms": _ms_per_call(lambda: peaks_and_candidates(heatmaps, pafs, skeleton, config), device,
                                        repeat),
               "compile_s": list(compiled.compile_seconds.values()), "compile_failed": compiled.failed}
    return out


def synchronisations_per_chunk(estimator: PoseEstimator, frames: list[np.ndarray], batch_size: int,
                               chunks: int) -> float | None:
    """Synchronising CUDA calls per chunk of engine.peaks (after a warm-up call); None off CUDA."""
    if estimator.device.type != "cuda":
        return None
    prepared = [estimator.prepare(frames[i % len(frames)]) for i in range(batch_size * chunks)]
    estimator.infer_peaks(prepared, batch_size)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            estimator.infer_peaks(prepared, batch_size)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return round(sum("synchronizing" in str(w.message) for w in caught) / chunks, 2)


def batch_one(estimator: PoseEstimator, frames: list[np.ndarray], count: int) -> dict:
    """estimate() of one frame at a time, peaks on the device: frames/s eager and compiled."""
    out = {}
    for setting in ("off", "on"):
        sized = estimator.with_config(compile=setting)
        for frame in frames[:3]:  # compiles bucket 1 and warms up
            sized.estimate([frame], peaks_on="device")
        start = time.perf_counter()
        for i in range(count):
            sized.estimate([frames[i % len(frames)]], peaks_on="device")
        out[f"compile {setting}"] = round(count / (time.perf_counter() - start), 1)
    out["compiled_over_eager"] = round(out["compile on"] / out["compile off"], 2)
    return out


def actor_against_model(estimators: dict, frames: list[np.ndarray], device: str, batch_size: int, seconds: float,
                        actor_rate: Callable, say: Callable, record: Callable, quick: bool) -> None:
    """Section 13 (see the module docstring). estimators: {size: {precision: PoseEstimator}} (eager);
    actor_rate(size, precision, batch_size, compile) -> {"frames_per_s": ...} of the InferenceActor."""
    precision = "fp16" if device.startswith("cuda") else "fp32"
    say(f"13. the actor against the model ({precision}, batch {batch_size}): model-only eager / compiled, "
        "actor eager / compiled, peak finding per chunk, synchronisations, batch 1")
    out: dict = {}
    for size, by_precision in estimators.items():
        name = f"{size[0]}x{size[1]} {precision} batch {batch_size}"
        eager = by_precision[precision]
        compiled = eager.with_config(compile="on")
        batch = torch.randint(0, 256, (batch_size, size[1], size[0], 3), dtype=torch.uint8, device=device)
        row = {"model_eager": frames_per_s(eager.engine, batch, seconds, device),
               "model_compiled": frames_per_s(compiled.engine, batch, seconds, device),
               "network_compile_s": list(compiled.engine.compiled_network.compile_seconds.values())}
        for setting in ("on", "off"):
            result = actor_rate(size, precision, batch_size, setting)
            row[f"actor_compile_{setting}"] = result["frames_per_s"]
            row[f"actor_compile_{setting}_detail"] = result
        row["actor_over_model"] = round(row["actor_compile_on"] / row["model_compiled"], 3)
        row["peak_finding"] = peak_finding(eager, frames, device, batch_size, 3 if quick else 20)
        row["syncs_per_chunk"] = synchronisations_per_chunk(eager, frames, batch_size, 2 if quick else 4)
        out[name] = row
        say(f"   {name}: {row}")
        record("actor_against_model", out)
    size = next(iter(estimators))
    out["batch 1"] = batch_one(estimators[size][precision], frames, 4 if quick else 100)
    say(f"   batch 1 at {size[0]}x{size[1]}: {out['batch 1']}")
    record("actor_against_model", out)
