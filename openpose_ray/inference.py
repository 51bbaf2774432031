"""Batched inference on a torch device: the network, multi-scale averaging and, on request, the peaks.

:class:`InferenceEngine` is the one place where prepared frames meet the
network, for :class:`~openpose_ray.estimator.PoseEstimator` in-process and for
the job's inference actors alike::

    uint8 network inputs (host) -> device -> network at each scale
      -> fields cropped to the valid region and averaged over the scales (device)
      -> either the fields, float32 on the host           (:meth:`InferenceEngine.fields`)
      -> or each frame's peaks and scored limb candidates  (:meth:`InferenceEngine.peaks`;
         postprocess.device_fixed: only those reach the host)

Frames of equal input shapes (fit mode pads widths to a multiple of 32, so
photos of similar aspect ratios share one) run through the network in chunks
of at most ``batch_size``, so device memory depends on the batch size, never
on how many frames one call gets; the field work after it runs on the frames
of a chunk whose valid regions are equal.
Chunks are pipelined (``_run``): the host stacks chunk k+1 into a reused
(pinned, on CUDA) buffer and queues all of its device work, the copy on a
stream of its own (openpose_ray.transfers), before it waits for chunk k's
results, so the device never waits for the host's per-frame work; the wait
for a chunk's results is its one synchronisation (peaks in fixed-size
buffers, postprocess.device_fixed).

Precision: "fp32" is IEEE float32 (on CUDA, TF32 is turned off for our
convolutions, the Gaussian blur's included, whatever the process-wide default;
restored after); "tf32" (CUDA only) lets cuDNN use TF32 tensor cores,
PyTorch's default, ~10 bits of mantissa in the products; "bf16" and "fp16"
(fp16 on CUDA only) run the network under ``torch.autocast``. On CUDA the
fields stay in the network's dtype (half-precision kernels are fast there; peak
finding upcasts the small stride-8 heatmaps, see postprocess.device); on the
CPU they become float32 after the network (half-precision elementwise kernels
are not faster there; bf16 pays off in the convolutions). What each costs in
accuracy and gains in speed: ``benchmarks/gpu_check.py``, docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from .backends import OpenVINONetwork, choose_backend, openvino_network
from .compiled import StaticCompiled, compile_wanted
from .config import Backend, Compile, Precision, PostprocessConfig, check_precision
from .device_pixels import network_inputs
from .frame_outputs import FrameFields, FramePeaks
from .models.registry import InputSpec, ModelEntry, resolve
from .postprocess.device import peaks_and_candidates, resize_torch
from .postprocess.device_fixed import PEAKS_PER_PART, packed_peaks, peak_tables, unpack
from .preprocess import PlanarImage
from .transfers import Landing, Transfers

if TYPE_CHECKING:
    from .preprocess import PreparedImage

_AUTOCAST_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Frames per network call when the caller does not say. On a CPU small batches are fastest
# (mobilenet_thin, 20 photos, 2-core Xeon, 2026-11-30: batch 1: 7.1, 2: 8.3, 4: 4.3,
# 16: 3.7 images/s); a GPU wants large ones: the job's actor on an H200 (benchmarks/gpu_check.py,
# 2026-11-30, 128-frame shards, frames/s at 656x368 bf16) batch 32: 647, 64: 755, 128: 780
# (fp32: 490, 485, 465), model-only gains < 10 % from 64 to 256, at 2x the memory per doubling.
DEFAULT_BATCH_SIZE = {"cpu": 2, "cuda": 64}
# On OpenVINO a call of several frames runs them on parallel streams (backends.OpenVINONetwork), which
# pays with more frames per call: 1280x720 frames fit to 656x368, 2-core Xeon, 2026-11-30, frames/s
# (CPU ms per frame): batch 1 (latency-compiled) 9.7 (205), 2: 10.2 (184), 4: 11.6 (164), 8: 12.0
# (160), 16: 10.6-11.5 (165-182).
OPENVINO_BATCH_SIZE = 8


def normalize(batch: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8[N, H, W, 3] (any device) -> float32[N, 3, H, W] = pixel * scale + offset.

    The result is in channels-last memory layout (the NHWC bytes reinterpreted,
    no copy), which is what the convolutions run fastest on, CPU and GPU alike.
    """
    x = batch.permute(0, 3, 1, 2).to(torch.float32)
    if spec.scale != 1.0:
        x = x * spec.scale
    if spec.offset != 0.0:
        x = x + spec.offset
    return x.contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def _fp32_precision(value: str, *settings):
    """Set the float32 precision ("ieee" or "tf32") of each of ``settings`` (torch.backends.cudnn.conv: cuDNN
    convolutions, torch.backends.cuda.matmul: matrix products) for the block, and restore them.

    PyTorch's new API (torch >= 2.9); the legacy ``allow_tf32`` switch would reset other settings.
    """
    before = [setting.fp32_precision for setting in settings]
    for setting in settings:
        setting.fp32_precision = value
    try:
        yield
    finally:
        for setting, old in zip(settings, before):
            setting.fp32_precision = old


def _geometry(item: "PreparedImage", stride: int) -> tuple:
    """The valid field size at every scale and at scale 1: frames of equal geometry share the field work."""
    return (tuple(t.valid_field_size(stride) for t in item.transforms), item.base_transform.valid_field_size(stride))


def peak_finder(num_parts: int, postprocess: PostprocessConfig, capacity: int, device: torch.device,
                compiled: bool) -> Callable:
    """postprocess.device_fixed.packed_peaks with ``postprocess``'s thresholds and ``capacity`` peaks a part:
    (heatmaps, pafs, *peak_tables) -> packed tensor; through torch.compile (StaticCompiled) where ``compiled``."""
    function = functools.partial(packed_peaks, num_parts=num_parts, config=postprocess, capacity=capacity)
    return StaticCompiled(function, device, batched=2, name="peak finder") if compiled else function


class InferenceEngine:
    """A network on its device, run in bounded chunks (see the module docstring).

    network: the registered module, already on ``device`` (channels-last). The engine runs its
        inference form (``entry.inference_form``: the same outputs, fewer bytes moved) where the
        entry has one, as ``self.network``; ``self.registered`` is the module given.
    entry: its registry entry (input spec, skeleton).
    backend: what runs the network (openpose_ray.backends): "torch", "openvino"
        (CPU), or "auto" (OpenVINO on a CPU where it is installed and supports
        the precision, else torch). The OpenVINO model is compiled on first use.
    weights_key: identifies the weights for OpenVINO's disk cache of converted models
        (e.g. "<model>-<weights sha256>"); None: no disk cache.
    compile: "off", "on" or "auto" (on for CUDA): where torch runs the network, through
        torch.compile with static shapes (openpose_ray.compiled); ``self.compiled_network``.
    """

    def __init__(self, network: torch.nn.Module, entry: ModelEntry, device: str | torch.device = "cpu",
                 precision: Precision = "fp32", backend: Backend = "auto", weights_key: str | None = None,
                 compile: Compile = "off"):
        self.registered = network
        self.entry = entry
        self.device = torch.device(device)
        self.network = resolve(entry.inference_form)(network, self.device) if entry.inference_form else network
        check_precision(precision, self.device.type)
        self.precision = precision
        self.backend = choose_backend(backend, self.device.type, precision)
        self._weights_key = weights_key
        self.transfers = Transfers(self.device)
        self._peak_finders: dict[tuple, Callable] = {}
        self.peak_capacity = PEAKS_PER_PART  # peaks per (frame, part) in the fixed buffers of peaks()
        self.overflowed = 0  # frames whose peaks did not fit the fixed buffers (found exactly instead)
        # dtype of the fields after the network: float32 on the CPU, the network's own on CUDA (None)
        self._fields_dtype = torch.float32 if self.device.type == "cpu" else None
        self.compiled_network = (StaticCompiled(self.network, self.device)
                                 if self.backend == "torch" and compile_wanted(compile, self.device.type) else None)

    def _convolution_precision(self) -> contextlib.AbstractContextManager:
        """TF32 for cuDNN convolutions on (tf32) or off (every other precision) on CUDA, restored after."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return _fp32_precision("tf32" if self.precision == "tf32" else "ieee", torch.backends.cudnn.conv)

    def _network_precision(self) -> contextlib.AbstractContextManager:
        if self.precision in _AUTOCAST_DTYPE:
            return torch.autocast(device_type=self.device.type, dtype=_AUTOCAST_DTYPE[self.precision])
        return contextlib.nullcontext()

    @property
    def compiled(self) -> OpenVINONetwork:
        """The OpenVINO model of the network, compiled on first use (see openpose_ray.backends)."""
        return openvino_network(self.network, self.entry.input_spec.stride, self.precision, torch.get_num_threads(),
                                self._weights_key)

    @torch.inference_mode()
    def network_fields(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw network output for a uint8 batch [N, H, W, 3] (any device): (heatmaps, pafs) on the device."""
        inputs = normalize(batch.to(self.device, non_blocking=True), self.entry.input_spec)
        if self.backend == "openvino" and self.compiled.fits(inputs):
            return self.compiled(inputs)
        with self._convolution_precision(), self._network_precision():
            return (self.compiled_network or self.network)(inputs)

    @property
    def default_batch_size(self) -> int:
        if self.backend == "openvino":
            return OPENVINO_BATCH_SIZE
        return DEFAULT_BATCH_SIZE.get(self.device.type, 2)

    def fields(self, prepared: Sequence["PreparedImage | PlanarImage"],
               batch_size: int | None = None) -> list[FrameFields]:
        """Each frame's fields on the host (float32), averaged over its scales."""

        def on_device(heatmaps: torch.Tensor, pafs: torch.Tensor) -> list[torch.Tensor]:
            return [heatmaps.float(), pafs.float()]

        def on_host(host: list[torch.Tensor], fields: tuple) -> list[FrameFields]:
            heat, paf = host[0].numpy(), host[1].numpy()
            return [FrameFields(heat[i], paf[i]) for i in range(heat.shape[0])]

        return self._run(prepared, batch_size, on_device, on_host)

    def peaks(self, prepared: Sequence["PreparedImage | PlanarImage"], postprocess: PostprocessConfig,
              batch_size: int | None = None) -> list[FramePeaks]:
        """Each frame's peaks and limb candidates, found on the device with ``postprocess``'s thresholds.

        In fixed-size buffers (postprocess.device_fixed; compiled with the network where it is); a
        frame with more peaks of a part than they hold takes the exact path (postprocess.device).
        """
        skeleton = self.entry.skeleton
        finder = self._peak_finder(postprocess)

        def on_device(heatmaps: torch.Tensor, pafs: torch.Tensor) -> list[torch.Tensor]:
            tables = peak_tables(*heatmaps.shape[-2:], skeleton, postprocess, heatmaps.device)
            return [finder(heatmaps, pafs, *tables)]

        def on_host(host: list[torch.Tensor], fields: tuple) -> list[FramePeaks]:
            found = unpack(host[0].numpy(), skeleton, self.peak_capacity)
            for i in (i for i, f in enumerate(found) if f is None):
                self.overflowed += 1
                with self._postprocess_precision():
                    found[i] = peaks_and_candidates(fields[0][i : i + 1], fields[1][i : i + 1], skeleton,
                                                    postprocess)[0]
            return [FramePeaks(p, c) for p, c in found]

        return self._run(prepared, batch_size, on_device, on_host)

    def _peak_finder(self, postprocess: PostprocessConfig) -> Callable:
        """packed_peaks for ``postprocess``'s thresholds, compiled where the network is (one per config)."""
        key = (postprocess, self.peak_capacity)
        if key not in self._peak_finders:
            self._peak_finders[key] = peak_finder(self.entry.skeleton.num_parts, postprocess, self.peak_capacity,
                                                  self.device, compiled=self.compiled_network is not None)
        return self._peak_finders[key]

    @torch.inference_mode()
    def _run(self, prepared: Sequence["PreparedImage | PlanarImage"], batch_size: int | None, on_device: Callable,
             on_host: Callable) -> list:
        """Chunks through the device, pipelined: chunk k+1 is stacked and queued (copy, network, field work,
        ``on_device``, copies of its results to the host) before the host waits for chunk k's results and
        builds its frames (``on_host``), so the device always has the next chunk while the host works.

        on_device(heatmaps, pafs) -> [tensors]: a geometry run's results, queued on the device;
        on_host([host tensors], (heatmaps, pafs) on the device) -> one result per frame of the run.
        """
        batch_size = batch_size or self.default_batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # The network batches frames of equal input shapes (fit pads widths to a few sizes); the
        # field work after it needs equal valid regions too, so a chunk is ordered by geometry
        # and each run of equal geometry is averaged and finished as one slice of the chunk.
        stride = self.entry.input_spec.stride
        by_shape: dict[tuple, list[int]] = {}
        for i, item in enumerate(prepared):
            by_shape.setdefault(item.batch_key, []).append(i)
        chunks = []
        for indices in by_shape.values():
            indices = sorted(indices, key=lambda i: _geometry(prepared[i], stride))
            chunks += [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]
        results: list = [None] * len(prepared)
        landing = None
        for chunk in chunks:
            queued = self._queue(prepared, chunk, batch_size, on_device)
            if landing is not None:
                self._land(landing, on_host, results)
            landing = queued
        if landing is not None:
            self._land(landing, on_host, results)
        return results

    def _queue(self, prepared: Sequence["PreparedImage | PlanarImage"], chunk: list[int], batch_size: int,
               on_device: Callable) -> Landing:
        """Stack a chunk into the ring, and queue everything the device does with it (no waiting)."""
        stride = self.entry.input_spec.stride
        first = prepared[chunk[0]]
        if isinstance(first, PlanarImage):
            inputs = self._planar_inputs([prepared[i] for i in chunk], batch_size)
        else:
            inputs = [self.transfers.stacked([prepared[i].inputs[scale] for i in chunk], batch_size)
                      for scale in range(len(first.inputs))]
        outputs = [self.network_fields(batch) for batch in inputs]
        runs, tensors, kept, start = [], [], [], 0
        for _, run in itertools.groupby(chunk, key=lambda i: _geometry(prepared[i], stride)):
            run = list(run)
            rows = slice(start, start + len(run))
            heatmaps, pafs = self._averaged_fields(outputs, rows, prepared[run[0]])
            with self._postprocess_precision():
                made = on_device(heatmaps, pafs)
            runs.append((run, len(made)))
            tensors += made
            kept.append((heatmaps, pafs))
            start = rows.stop
        return self.transfers.to_host(tensors, kept=(runs, kept))

    def _planar_inputs(self, frames: Sequence["PlanarImage"], batch_size: int) -> list[torch.Tensor]:
        """Frames of one batch_key as YUV planes on the device, made into uint8 network inputs there (one per scale)."""
        luma = self.transfers.stacked([f.planes.y for f in frames], batch_size)
        chroma = torch.stack([self.transfers.stacked([getattr(f.planes, plane) for f in frames], batch_size)
                              for plane in "uv"], dim=1)  # on the device: no copy of the planes on the host
        planes = frames[0].planes
        return network_inputs(luma, chroma, planes.matrix, planes.full_range, frames[0].transforms,
                              self.entry.input_spec)

    @staticmethod
    def _land(landing: Landing, on_host: Callable, results: list) -> None:
        """Wait for a queued chunk's results (its one synchronisation) and build its frames' results."""
        host = landing.wait()
        runs, kept = landing.kept
        for (run, count), fields in zip(runs, kept):
            for i, out in zip(run, on_host(host[:count], fields)):
                results[i] = out
            host = host[count:]

    def _postprocess_precision(self) -> contextlib.AbstractContextManager:
        """IEEE float32 for the field work's matrix products and convolutions on CUDA (no TF32), restored after."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return _fp32_precision("ieee", torch.backends.cudnn.conv, torch.backends.cuda.matmul)

    def _averaged_fields(self, outputs: list[tuple[torch.Tensor, torch.Tensor]], rows: slice,
                         example: "PreparedImage") -> tuple[torch.Tensor, torch.Tensor]:
        """(heatmaps [n, K+1, h, w], pafs [n, 2L, h, w]) of ``rows`` of the chunk, on the device:
        valid region at scale 1, mean over the scales (``outputs``: the network's, per scale).

        Fields of other scales are resized to the scale-1 field size (cubic,
        half-pixel aligned), as OpenPose averages its scales.
        """
        stride = self.entry.input_spec.stride
        size = example.base_transform.valid_field_size(stride)
        heat_sum = paf_sum = None
        for (heatmaps, pafs), transform in zip(outputs, example.transforms):
            valid_w, valid_h = transform.valid_field_size(stride)
            heatmaps, pafs = heatmaps[rows, :, :valid_h, :valid_w], pafs[rows, :, :valid_h, :valid_w]
            if self._fields_dtype is not None:
                heatmaps, pafs = heatmaps.to(self._fields_dtype), pafs.to(self._fields_dtype)
            if (valid_w, valid_h) != size:
                heatmaps, pafs = resize_torch(heatmaps, size), resize_torch(pafs, size)
            heat_sum = heatmaps if heat_sum is None else heat_sum + heatmaps
            paf_sum = pafs if paf_sum is None else paf_sum + pafs
        return heat_sum / len(outputs), paf_sum / len(outputs)
