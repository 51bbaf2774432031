"""Which runtime executes the network on a CPU: PyTorch itself, or the same module compiled by OpenVINO.

Both take the normalised float batch [N, 3, H, W] and return the raw fields
(heatmaps [N, K+1, H/s, W/s], pafs [N, 2L, H/s, W/s]) as torch tensors, so the
rest of :class:`~openpose_ray.inference.InferenceEngine` does not know which
one ran. ``backend: auto`` takes OpenVINO on a CPU whenever it is installed
(a dependency of the package) and torch everywhere else, on measurements of
mobilenet_thin at 432x368, batch 1, 2 threads (benchmarks/bench_backends.py,
2-core Xeon, 2026-11-30; fields equal to torch's, AP unchanged):

    CPU features                        torch fp32   OpenVINO fp32   torch bf16   OpenVINO bf16
    AVX-512 + AMX (this machine)          129 ms         70 ms          86 ms        40 ms
    AVX2 only (oneDNN capped: ONEDNN_MAX_CPU_ISA=AVX2)
                                          177 ms        120 ms            -      (not supported)

OpenVINO fp32 runs with its precision hint pinned to f32 (on CPUs with bf16
units its default would be bf16); bf16 needs AVX-512 BF16 or AMX, elsewhere
``auto`` falls back to torch. The module is converted by tracing at one input
size with the batch, height and width left dynamic; the networks' only
size-dependent arithmetic (TensorFlow SAME padding) is constant for inputs
whose sides are multiples of the stride, which pre-processing guarantees;
other sizes run on torch. Converting takes ~5 s, compiling ~0.3 s: the
converted model is kept per network module in the process (estimators made
with ``with_config`` share it) and, for known weights, on disk under
``<cache>/openvino/`` (models.weights.cache_dir), keyed by the model, the
weights' sha256, the network's source code and the OpenVINO version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import tempfile
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

from .config import Backend, check_backend


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def has_bf16_units(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX), which OpenVINO's bf16 needs."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose_backend(backend: Backend, device_type: str, precision: str, flags: set[str] | None = None) -> str:
    """The runtime for ``backend`` on ``device_type`` ("cpu", "cuda") at ``precision``: "torch" or "openvino".

    Raises ValueError when "openvino" is asked for where it cannot run.
    """
    check_backend(backend)
    usable = device_type == "cpu" and openvino_installed() and precision in ("fp32", "bf16")
    if precision == "bf16":
        usable = usable and has_bf16_units(flags)
    if backend == "openvino" and not usable:
        raise ValueError(f"backend openvino runs fp32 (and bf16 on CPUs with AVX-512 BF16 / AMX) on a CPU with the "
                         f"openvino package installed; here: device {device_type}, precision {precision}, "
                         f"openvino {'installed' if openvino_installed() else 'not installed'}")
    return "openvino" if backend == "openvino" or (backend == "auto" and usable) else "torch"


class OpenVINONetwork:
    """A network compiled by OpenVINO for this CPU; called like the module on a float NCHW batch.

    Build with :func:`openvino_network`. stride: the network's; inputs whose sides are
    not multiples of it do not ``fit`` (the traced padding would be wrong).

    A batch of one frame runs on a latency-compiled model (one inference, every
    thread on it). A batch of several runs frame by frame on a throughput-compiled
    model (OpenVINO's THROUGHPUT hint: the threads split into streams, each
    running its own frame; compiled on the first such batch). Each frame's fields
    are the same either way (equal on the shared photos; tests allow 1e-5).

    Why: one inference spread over every thread stalls whenever one of its
    threads is preempted, and in the job the decode and post-processing tasks
    share the actor's cores; a stream of one thread only slows down by what it
    loses. 1280x720 frames fit to 656x368, 2-core Xeon, 2026-11-30: 9.7 frames/s at
    205 CPU ms a frame one by one on the latency model, 12.0 at 160 ms in calls of
    8 on two streams (so ``InferenceEngine.default_batch_size`` is 8 here); the
    annotation job over 439 frames (benchmarks/compare.py's), three runs of each
    interleaved, calls of 2 frames: median 109 s (92-112) with one latency
    inference per call, 93 s (93-102) on streams.
    """

    def __init__(self, model, stride: int, precision: str, threads: int):
        import openvino as ov

        self.stride = stride
        self._model = model
        self._config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                        "INFERENCE_NUM_THREADS": int(threads)}
        self.compiled = ov.Core().compile_model(model, "CPU", {**self._config, "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self._streams = None  # the throughput model's AsyncInferQueue, on first use

    def fits(self, batch: torch.Tensor) -> bool:
        """Whether the batch's sides are multiples of the stride (the traced padding holds)."""
        return batch.shape[-2] % self.stride == 0 and batch.shape[-1] % self.stride == 0

    @property
    def streams(self):
        """An AsyncInferQueue over the throughput-compiled model, one request per stream."""
        if self._streams is None:
            import openvino as ov

            compiled = ov.Core().compile_model(self._model, "CPU", {**self._config, "PERFORMANCE_HINT": "THROUGHPUT"})
            self._streams = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        return self._streams

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = np.ascontiguousarray(batch.numpy())
        if len(inputs) == 1 or len(self.streams) == 1:
            result = self.request.infer([inputs])
            # The request reuses its output buffers: copy before the next call.
            return torch.from_numpy(np.array(result[0])), torch.from_numpy(np.array(result[1]))
        heatmaps: list = [None] * len(inputs)
        pafs: list = [None] * len(inputs)

        def collect(request, i: int) -> None:  # runs on OpenVINO's thread; copies out of the reused buffers
            heatmaps[i], pafs[i] = np.array(request.get_output_tensor(0).data), np.array(request.get_output_tensor(1).data)

        self.streams.set_callback(collect)
        for i in range(len(inputs)):
            self.streams.start_async([inputs[i : i + 1]], userdata=i)
        self.streams.wait_all()
        return torch.from_numpy(np.concatenate(heatmaps)), torch.from_numpy(np.concatenate(pafs))


# Per network module, its compiled models by (precision, threads): estimators sharing a network share them.
_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def openvino_network(network: torch.nn.Module, stride: int, precision: str, threads: int,
                     weights_key: str | None = None) -> OpenVINONetwork:
    """``network`` compiled by OpenVINO (see the module docstring for the caches).

    weights_key: identifies the weights (e.g. "<model>-<weights sha256>") for the disk
    cache; None converts without caching on disk.
    """
    compiled = _COMPILED.setdefault(network, {})
    key = (precision, int(threads))
    if key not in compiled:
        compiled[key] = OpenVINONetwork(_converted(network, stride, weights_key), stride, precision, threads)
    return compiled[key]


def _converted(network: torch.nn.Module, stride: int, weights_key: str | None):
    """The OpenVINO model of ``network`` (dynamic batch, height and width), from the disk cache when there."""
    import openvino as ov

    from .models.weights import cache_dir

    path = None
    if weights_key is not None:
        source = _network_sources(network)
        digest = hashlib.sha256(f"{weights_key}|{ov.__version__}|{source}".encode()).hexdigest()[:16]
        path = cache_dir() / "openvino" / f"{type(network).__name__}-{digest}.xml"
        if path.exists() and path.with_suffix(".bin").exists():
            return ov.Core().read_model(str(path))
    example = torch.zeros(1, 3, 46 * stride, 54 * stride)  # any multiple of the stride: the padding is the same
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the padding is meant to be traced as a constant
        model = ov.convert_model(network.eval(), example_input=example, input=[ov.PartialShape([-1, 3, -1, -1])])
    if path is not None:
        _save_atomically(model, path)
    return model


def _network_sources(network: torch.nn.Module) -> str:
    """The source of every project module that defines the network: its layers' classes and the functions
    their modules call from other modules (the tidy form borrows mobilenet_thin's); a change to any converts again."""
    names = {type(module).__module__ for module in network.modules()}
    for name in list(names):
        names |= {getattr(value, "__module__", None) or "" for value in vars(sys.modules[name]).values()
                  if inspect.isfunction(value) or inspect.isclass(value)}
    return "".join(inspect.getsource(sys.modules[name]) for name in sorted(names) if name.startswith("openpose_ray."))


def _save_atomically(model, path: Path) -> None:
    """Write the model's .xml and .bin next to ``path`` so that a reader never sees half of them."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        staged = Path(scratch) / path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))  # the .xml is checked last, so it goes last
        os.replace(staged, path)
