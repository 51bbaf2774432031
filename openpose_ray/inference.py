"""Batched inference on a torch device: the network, multi-scale averaging and, on request, the peaks.

:class:`InferenceEngine` is the one place where prepared frames meet the
network, for :class:`~openpose_ray.estimator.PoseEstimator` in-process and for
the job's inference actors alike::

    uint8 network inputs (host) -> device -> network at each scale
      -> fields cropped to the valid region and averaged over the scales (device)
      -> either the fields, float32 on the host           (:meth:`InferenceEngine.fields`)
      -> or each frame's peaks and scored limb candidates  (:meth:`InferenceEngine.peaks`;
         postprocess.device: only those reach the host)

Frames of equal input shapes (fit mode pads widths to a multiple of 32, so
photos of similar aspect ratios share one) run through the network in chunks
of at most ``batch_size``, so device memory depends on the batch size, never
on how many frames one call gets; the field work after it runs on the frames
of a chunk whose valid regions are equal.
While the device runs a chunk's network, the host stacks the next chunk (into
pinned memory on CUDA, so its copy to the device does not block the host); the
host waits for the device only to collect a chunk's peaks.

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
import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .backends import OpenVINONetwork, choose_backend, openvino_network
from .compiled import CompiledNetwork, compile_wanted
from .config import Backend, Compile, Precision, PostprocessConfig, check_precision
from .frame_outputs import FrameFields, FramePeaks
from .models.registry import InputSpec, ModelEntry, resolve
from .postprocess.device import peaks_and_candidates, resize_torch

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
def _cudnn_fp32_precision(value: str):
    """Set cuDNN convolutions' float32 precision ("ieee" or "tf32") for the block, and restore it.

    PyTorch's new API (torch >= 2.9); the legacy ``allow_tf32`` switch would reset other settings.
    """
    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    conv.fp32_precision = value
    try:
        yield
    finally:
        conv.fp32_precision = before


def _geometry(item: "PreparedImage", stride: int) -> tuple:
    """The valid field size at every scale and at scale 1: frames of equal geometry share the field work."""
    return (tuple(t.valid_field_size(stride) for t in item.transforms), item.base_transform.valid_field_size(stride))


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
        self._pin = self.device.type == "cuda"
        # dtype of the fields after the network: float32 on the CPU, the network's own on CUDA (None)
        self._fields_dtype = torch.float32 if self.device.type == "cpu" else None
        self.compiled_network = (CompiledNetwork(self.network, self.device)
                                 if self.backend == "torch" and compile_wanted(compile, self.device.type) else None)

    def _convolution_precision(self) -> contextlib.AbstractContextManager:
        """TF32 for cuDNN convolutions on (tf32) or off (every other precision) on CUDA, restored after."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return _cudnn_fp32_precision("tf32" if self.precision == "tf32" else "ieee")

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

    def fields(self, prepared: Sequence["PreparedImage"], batch_size: int | None = None) -> list[FrameFields]:
        """Each frame's fields on the host (float32), averaged over its scales."""
        return self._run(prepared, batch_size, self._fields_to_host)

    def peaks(self, prepared: Sequence["PreparedImage"], postprocess: PostprocessConfig,
              batch_size: int | None = None) -> list[FramePeaks]:
        """Each frame's peaks and limb candidates, found on the device with ``postprocess``'s thresholds."""
        skeleton = self.entry.skeleton

        def finish(heatmaps: torch.Tensor, pafs: torch.Tensor) -> list[FramePeaks]:
            return [FramePeaks(p, c) for p, c in peaks_and_candidates(heatmaps, pafs, skeleton, postprocess)]

        return self._run(prepared, batch_size, finish)

    @torch.inference_mode()
    def _run(self, prepared: Sequence["PreparedImage"], batch_size: int | None, finish: Callable) -> list:
        batch_size = batch_size or self.default_batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # The network batches frames of equal input shapes (fit pads widths to a few sizes); the
        # field work after it needs equal valid regions too, so a chunk is ordered by geometry
        # and each run of equal geometry is averaged and finished as one slice of the chunk.
        stride = self.entry.input_spec.stride
        by_shape: dict[tuple, list[int]] = {}
        for i, item in enumerate(prepared):
            by_shape.setdefault(tuple(x.shape for x in item.inputs), []).append(i)
        chunks = []
        for indices in by_shape.values():
            indices = sorted(indices, key=lambda i: _geometry(prepared[i], stride))
            chunks += [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]
        results: list = [None] * len(prepared)
        staged = self._stage(prepared, chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            outputs = [self.network_fields(batch) for batch in staged]  # queued on the device, per scale
            staged = self._stage(prepared, chunks[k + 1]) if k + 1 < len(chunks) else None  # host work meanwhile
            start = 0
            for _, run in itertools.groupby(chunk, key=lambda i: _geometry(prepared[i], stride)):
                run = list(run)
                rows = slice(start, start + len(run))
                heatmaps, pafs = self._averaged_fields(outputs, rows, prepared[run[0]])
                with self._convolution_precision():  # the peak blur is a convolution too
                    found = finish(heatmaps, pafs)
                for i, out in zip(run, found):
                    results[i] = out
                start = rows.stop
        return results

    def _stage(self, prepared: Sequence["PreparedImage"], chunk: list[int]) -> list[torch.Tensor]:
        """The chunk's inputs as one uint8 host tensor [n, h, w, 3] per scale (pinned on CUDA)."""
        staged = []
        for scale in range(len(prepared[chunk[0]].inputs)):
            shape = prepared[chunk[0]].inputs[scale].shape
            host = torch.empty((len(chunk), *shape), dtype=torch.uint8, pin_memory=self._pin)
            np.stack([prepared[i].inputs[scale] for i in chunk], out=host.numpy())
            staged.append(host)
        return staged

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

    @staticmethod
    def _fields_to_host(heatmaps: torch.Tensor, pafs: torch.Tensor) -> list[FrameFields]:
        heat, paf = heatmaps.float().cpu().numpy(), pafs.float().cpu().numpy()
        return [FrameFields(heat[i], paf[i]) for i in range(heat.shape[0])]
