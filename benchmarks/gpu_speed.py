"""The speed sections of benchmarks/gpu_check.py that go beyond the model's own frames/s.

Each answers one question the project's defaults or docs depend on:

7. cuDNN autotuning (``torch.backends.cudnn.benchmark``): does it pay for this
   network at the batch sizes the job uses?
8. ``PoseEstimator.estimate`` on a list vs a loop of one-frame calls on the
   device (issue 10: a list is never slower than a loop), peaks on the CPU
   and on the device, with the default batch size and others.
9. The host's CPU work per frame on ONE thread (decode, resize, grouping
   from device peaks, grouping from fields on the CPU): the inputs of the
   "GPU node's CPU-side ceiling" projection in docs/benchmarks.md.
10. The OpenPose networks (cmu_body, body_25) on the device, random weights
    (their frames/s does not depend on the values): what a user bringing
    OpenPose's own model files gets.
11. ``inference.compile`` (openpose_ray.compiled) of mobilenet_thin: compile time and frames/s vs eager.
12. mobilenet_thin's forms (issue 24): the registered network (what the engine ran
    before), the tidy form for CPUs and the one for CUDA (each stage's input read
    once): model-only frames/s and the fields' largest difference from the registered's.

Every section takes the time budget into account: one that would start past
``deadline`` (time.perf_counter()) is skipped and says so, so the results of
the earlier ones are never lost to the machine's time limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from openpose_ray.estimator import PoseEstimator
from openpose_ray.inference import InferenceEngine
from openpose_ray.models.registry import get_entry, resolve


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.startswith("cuda") else None


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def frames_per_s(engine: InferenceEngine, batch: torch.Tensor, seconds: float, device: str) -> float:
    """Model-only frames/s of ``engine`` on ``batch`` (already on the device): 2 warm-up calls, then ``seconds``."""
    for _ in range(2):
        engine.network_fields(batch)
    synchronize(device)
    runs, start = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - start < seconds:
        engine.network_fields(batch)
        runs += 1
        if runs % 8 == 0 or device == "cpu":
            synchronize(device)
    synchronize(device)
    return round(runs * batch.shape[0] / (time.perf_counter() - start), 1)


def cudnn_autotune(estimators: dict, device: str, batches: list[int], seconds: float, say: Callable,
                   record: Callable) -> None:
    """Model-only frames/s with cuDNN's autotuner off (PyTorch's default) and on, per size and precision."""
    say("7. cuDNN autotuning (torch.backends.cudnn.benchmark): model-only frames/s off -> on")
    out = {}
    before = torch.backends.cudnn.benchmark
    try:
        for size, by_precision in estimators.items():
            for precision, estimator in by_precision.items():
                for batch_size in batches:
                    batch = torch.randint(0, 256, (batch_size, size[1], size[0], 3), dtype=torch.uint8, device=device)
                    rates = []
                    for autotune in (False, True):
                        torch.backends.cudnn.benchmark = autotune
                        rates.append(frames_per_s(estimator.engine, batch, seconds, device))
                    key = f"{size[0]}x{size[1]} {precision} batch {batch_size}"
                    out[key] = {"off": rates[0], "on": rates[1], "on_over_off": round(rates[1] / rates[0], 3)}
                    say(f"   {key}: {out[key]}")
    finally:
        torch.backends.cudnn.benchmark = before
    record("cudnn_autotune", out)


def list_vs_loop(estimator: PoseEstimator, frames: list[np.ndarray], device: str, say: Callable,
                 record: Callable, batch_sizes: tuple = (None, 8, 32, 128)) -> None:
    """estimate(frames) at several batch sizes vs a loop of estimate([frame]), peaks on the CPU and the device."""
    say(f"8. estimate() on a list vs a loop of one-frame calls ({len(frames)} frames, "
        f"{estimator.resize_mode} {estimator.net_size}, {estimator.network_config.precision})")
    out = {"frames": len(frames), "default_batch_size": estimator.engine.default_batch_size}
    for peaks_on in ("cpu", "device"):
        estimator.estimate(frames[:4], peaks_on=peaks_on)  # warm
        synchronize(device)
        start = time.perf_counter()
        for frame in frames:
            estimator.estimate([frame], peaks_on=peaks_on)
        loop = len(frames) / (time.perf_counter() - start)
        row = {"loop": round(loop, 1)}
        for batch_size in batch_sizes:
            estimator.estimate(frames, peaks_on=peaks_on, batch_size=batch_size)  # warm: first-call costs of a shape
            synchronize(device)
            start = time.perf_counter()
            estimator.estimate(frames, peaks_on=peaks_on, batch_size=batch_size)
            synchronize(device)
            row[f"list batch {batch_size or 'default'}"] = round(len(frames) / (time.perf_counter() - start), 1)
        out[f"peaks on {peaks_on}"] = row
        say(f"   peaks on {peaks_on}: frames/s {row}")
    record("list_vs_loop", out)


def _pin(cpus: set[int]) -> None:
    """Every thread of this process onto ``cpus`` (sched_setaffinity of pid 0 moves the calling thread only)."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except OSError:  # a thread that ended meanwhile
            pass


def _cpu_time_of(work: Callable) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process, every thread) that ``work()`` takes."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def host_stages_one_thread(estimator: PoseEstimator, videos: list[Path], frames_per_video: int, say: Callable,
                           record: Callable) -> None:
    """Milliseconds per frame of each CPU stage on ONE CPU of this host.

    The process is pinned to one CPU (sched_setaffinity) and OpenCV and torch
    set to one thread, since FFmpeg's decoder threads follow neither setting:
    wall ms is then the work of one core. CPU ms (every thread's CPU time)
    is reported beside it as a check: where the two differ, a stage waited.
    """
    say("9. host CPU work per frame on one CPU (ms): decode, resize, group from device peaks, group from fields")
    out = {}
    threads = (cv2.getNumThreads(), torch.get_num_threads())
    affinity = os.sched_getaffinity(0) if os.path.isdir("/proc/self/task") else None
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        for video in videos:
            frames: list[np.ndarray] = []
            prepared: list = []
            people: list = []

            def decode() -> None:
                capture = cv2.VideoCapture(str(video))
                while len(frames) < frames_per_video:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    frames.append(frame)
                capture.release()

            if affinity:
                _pin({min(affinity)})
            decode_s = _cpu_time_of(decode)
            if not frames:
                say(f"   {video.name}: OpenCV decoded no frame, skipped")
                continue
            resize_s = _cpu_time_of(lambda: prepared.extend(estimator.prepare(frame) for frame in frames))
            if affinity:
                _pin(affinity)  # the device work between the timed stages needs no pinning
            torch.set_num_threads(threads[1])
            found = estimator.infer_peaks(prepared)
            fields = estimator.infer_fields(prepared)
            torch.set_num_threads(1)
            if affinity:
                _pin({min(affinity)})
            group_peaks_s = _cpu_time_of(lambda: people.extend(
                estimator.people_from_peaks(f, p.base_transform) for f, p in zip(found, prepared)))
            group_fields_s = _cpu_time_of(lambda: [estimator.people_from_fields(heat, paf, item.base_transform)
                                                   for (heat, paf), item in zip(fields, prepared)])
            ms = lambda seconds: round(seconds * 1e3 / len(frames), 2)  # noqa: E731
            row = {"frames": len(frames), "source": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
                   "net_input": "x".join(map(str, prepared[0].inputs[0].shape[1::-1])),
                   "people_per_frame": round(sum(map(len, people)) / len(frames), 2), "pinned_to_one_cpu": bool(affinity)}
            for name, (wall, cpu) in {"decode": decode_s, "resize": resize_s, "group_from_device_peaks": group_peaks_s,
                                      "group_from_fields_on_cpu": group_fields_s}.items():
                row[f"{name}_ms"], row[f"{name}_cpu_ms"] = ms(wall), ms(cpu)
            cpu_side = (decode_s[0] + resize_s[0] + group_peaks_s[0]) / len(frames)
            row["frames_per_s_per_core_peaks_on_device"] = round(1 / cpu_side, 1)
            out[video.name] = row
            say(f"   {video.name}: {row}")
    finally:
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])
        if affinity:
            _pin(affinity)
    record("host_stages_one_thread", out)


def openpose_networks(device: str, size: tuple[int, int], batches: list[int], precisions: list[str], seconds: float,
                      say: Callable, record: Callable) -> None:
    """Model-only frames/s of cmu_body and body_25 (random weights) at ``size``."""
    say(f"10. OpenPose networks, model-only frames/s at {size[0]}x{size[1]} (random weights)")
    out = {}
    for name in ("cmu_body", "body_25"):
        entry = get_entry(name)
        network = resolve(entry.network)().to(device, memory_format=torch.channels_last).eval()
        for precision in precisions:
            engine = InferenceEngine(network, entry, device, precision, "torch")
            for batch_size in batches:
                key = f"{name} {precision} batch {batch_size}"
                try:
                    reset_peak_memory(device)
                    batch = torch.randint(0, 256, (batch_size, size[1], size[0], 3), dtype=torch.uint8, device=device)
                    out[key] = {"frames_per_s": frames_per_s(engine, batch, seconds, device),
                                "peak_mib": peak_memory_mib(device)}
                except torch.OutOfMemoryError:
                    out[key] = {"frames_per_s": None, "error": "out of memory"}
                say(f"   {key}: {out[key]}")
        del network
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    record("openpose_networks", out)


def compiled_network(estimator: PoseEstimator, device: str, size: tuple[int, int], batches: list[int], seconds: float,
                     say: Callable, record: Callable) -> None:
    """inference.compile (openpose_ray.compiled: static shapes, CUDA graphs) vs eager: compile seconds and frames/s."""
    precision = estimator.network_config.precision
    say(f"11. inference.compile of mobilenet_thin ({precision}, {size[0]}x{size[1]}): frames/s eager -> compiled")
    eager = estimator.with_config(net_size=size, compile="off").engine
    compiled = estimator.with_config(net_size=size, compile="on").engine
    out = {}
    for batch_size in batches:
        batch = torch.randint(0, 256, (batch_size, size[1], size[0], 3), dtype=torch.uint8, device=device)
        start = time.perf_counter()
        compiled.network_fields(batch)
        synchronize(device)
        first_s = round(time.perf_counter() - start, 1)
        fast = frames_per_s(compiled, batch, seconds, device)
        plain = frames_per_s(eager, batch, seconds, device)
        key = f"batch {batch_size}"
        out[key] = {"eager": plain, "compiled": fast, "first_call_s": first_s,
                    "compiled_over_eager": round(fast / plain, 3), "failed": compiled.compiled_network.failed}
        say(f"   {key}: {out[key]}")
    out["compile_seconds"] = {"x".join(map(str, key[:4])): s for key, s in compiled.compiled_network.compile_seconds.items()}
    record("torch_compile", out)


def graph_forms(estimators: dict, device: str, batches: list[int], seconds: float, say: Callable,
                record: Callable) -> None:
    """Model-only frames/s of each form of mobilenet_thin at each size, fp16 where the device has it."""
    from openpose_ray.models.mobilenet_thin_tidy import TidyMobilenetThin

    out = {}
    for size, by_precision in estimators.items():
        precision = "fp16" if "fp16" in by_precision else "fp32"
        engine = by_precision[precision].engine
        running = engine.network
        forms = {"registered": engine.registered}
        for name, share in (("tidy", False), ("tidy-shared", True)):
            forms[name] = TidyMobilenetThin.from_network(engine.registered, share_stage_input=share).to(
                memory_format=torch.channels_last)
        say(f"12. mobilenet_thin's forms, {size[0]}x{size[1]} {precision}: model-only frames/s")
        try:
            for batch_size in batches:
                batch = torch.randint(0, 256, (batch_size, size[1], size[0], 3), dtype=torch.uint8, device=device)
                fields = {}
                for name, module in forms.items():
                    engine.network = module
                    key = f"{size[0]}x{size[1]} {precision} batch {batch_size} {name}"
                    try:
                        fields[name] = engine.network_fields(batch)
                        out[key] = {"frames_per_s": frames_per_s(engine, batch, seconds, device)}
                        if name != "registered":
                            out[key]["max_rel_diff"] = round(max(
                                float((ours.float() - theirs.float()).abs().max() / theirs.float().abs().max())
                                for ours, theirs in zip(fields[name], fields["registered"])), 6)
                    except torch.OutOfMemoryError:
                        out[key] = {"frames_per_s": None, "error": "out of memory"}
                    say(f"   {key}: {out[key]}")
                del fields
        finally:
            engine.network = running
    record("graph_forms", out)


def section_fits(name: str, deadline: float, say: Callable) -> bool:
    """Whether a section may start: False (and said) once the run's time budget is spent."""
    if time.perf_counter() < deadline:
        return True
    say(f"   {name}: skipped, the time budget (--budget-s) is spent")
    return False
