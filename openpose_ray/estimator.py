"""PoseEstimator: a registered network with its weights, pre- and post-processing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import logging
from collections.abc import Sequence

import numpy as np
import torch

from .config import InferenceConfig, PostprocessConfig
from .models import weights as weights_mod
from .models.loading import load_state_dict_strict
from .models.registry import InputSpec, ModelEntry, get_entry, resolve
from .person import Person
from .postprocess import decode
from .preprocess import ResizeTransform, normalize, pad_batch, resize_to_input, transform_for

log = logging.getLogger(__name__)


class PoseEstimator:
    """Multi-person 2D pose estimation, the OpenPose way.

    Build with :meth:`from_pretrained`. ``forward_fields`` returns the raw
    network fields; ``estimate`` returns people in source-image pixels.
    """

    def __init__(self, entry: ModelEntry, network: torch.nn.Module, *, device: str = "cpu",
                 inference: InferenceConfig = InferenceConfig(), postprocess: PostprocessConfig = PostprocessConfig(),
                 weights_sha256: str | None = None):
        self.entry = entry
        self.device = torch.device(device)
        # Channels-last weights and activations: measured 1.7x faster forward on CPU for mobilenet_thin.
        self.network = network.to(self.device, memory_format=torch.channels_last).eval()
        self.inference = inference
        self.postprocess = postprocess
        self.weights_sha256 = weights_sha256
        self.skeleton = entry.skeleton
        self.input_spec = entry.input_spec

    @classmethod
    def from_pretrained(cls, name: str = "mobilenet_thin", device: str = "cpu", net_size: tuple[int, int] | None = (432, 368),
                        weights: str | None = None, *, scales: Sequence[float] = (1.0,),
                        postprocess: PostprocessConfig | None = None, weights_sha256: str | None = None,
                        s3=None) -> "PoseEstimator":
        """Load a registered network.

        name: registry name (``openpose_ray.models.registry.known_models()``).
        device: torch device, e.g. "cpu" or "cuda:0".
        net_size: (width, height) of the network input; None for the model's default.
        weights: None for the model's default weights (fetched and converted on
            first use), or a path / file:// / s3:// URI of a checkpoint in the
            model's documented layout.
        scales: input scales averaged before decoding (multi-scale inference).
        s3: an ``openpose_ray.jobconfig.S3Config`` for s3:// weights (endpoint,
            region, profile); default: boto3's standard chain.
        """
        entry = get_entry(name)
        network = resolve(entry.network)()
        if weights is None:
            state_dict = weights_mod.default_state_dict(entry)
            source, file_sha = f"default weights of {name}", entry.source.sha256 if entry.source else None
        else:
            state_dict, file_sha = weights_mod.user_state_dict(entry, weights, sha256=weights_sha256, s3=s3)
            source = weights
        load_state_dict_strict(network, state_dict, source=source)
        inference = InferenceConfig(net_size=tuple(net_size) if net_size else None, scales=tuple(scales))
        return cls(entry, network, device=device, inference=inference, postprocess=postprocess or PostprocessConfig(),
                   weights_sha256=file_sha)

    @property
    def net_size(self) -> tuple[int, int]:
        return self.inference.net_size or self.input_spec.net_size

    def with_config(self, *, net_size: tuple[int, int] | None = None, scales: Sequence[float] | None = None,
                    postprocess: PostprocessConfig | None = None) -> "PoseEstimator":
        """A new estimator sharing this one's network, with other settings."""
        inference = dataclasses.replace(
            self.inference,
            net_size=tuple(net_size) if net_size else self.inference.net_size,
            scales=tuple(scales) if scales else self.inference.scales,
        )
        return PoseEstimator(self.entry, self.network, device=str(self.device), inference=inference,
                             postprocess=postprocess or self.postprocess, weights_sha256=self.weights_sha256)

    @torch.inference_mode()
    def run_network(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Run the network on pre-processed uint8 inputs [h_i, w_i, 3] (padded to one size).

        Returns (heatmaps float32[N, K+1, h/8, w/8], pafs float32[N, 2L, h/8, w/8]).
        """
        batch = torch.from_numpy(pad_batch(list(inputs), self.input_spec.pad_value)).to(self.device)
        heatmaps, pafs = self.network(normalize(batch, self.input_spec))
        return heatmaps.float().cpu().numpy(), pafs.float().cpu().numpy()

    def forward_fields(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw network output for BGR uint8 images [H, W, 3] at scale 1.

        Returns (heatmaps float32[N, 19, h, w], pafs float32[N, 38, h, w]) at
        stride 8 of the resized input (padded to the largest input in the batch
        for fit-height models).
        """
        inputs = [resize_to_input(as_bgr(im), self.input_spec, self.net_size)[0] for im in images]
        return self.run_network(inputs)

    def prepare(self, image: np.ndarray) -> "PreparedImage":
        """Pre-process one image for :meth:`infer_fields` (CPU work, no network)."""
        return prepare_image(image, self.input_spec, self.net_size, self.inference.scales)

    def infer_fields(self, prepared: Sequence["PreparedImage"], batch_size: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
        """Fields of each prepared image, averaged over its scales.

        Inputs of equal shape are batched (at most ``batch_size`` per call);
        inputs of different shapes never share a call, so a frame's fields do
        not depend on what else is in the batch. Returns per image (heatmaps
        float32[19, h, w], pafs float32[38, h, w]) cropped to the valid field
        size at scale 1.
        """
        stride = self.input_spec.stride
        num_scales = len(prepared[0].inputs) if prepared else 0
        sums: list[list[np.ndarray] | None] = [None] * len(prepared)
        for scale_index in range(num_scales):
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, item in enumerate(prepared):
                by_shape.setdefault(item.inputs[scale_index].shape, []).append(i)
            for indices in by_shape.values():
                for start in range(0, len(indices), batch_size):
                    chunk = indices[start : start + batch_size]
                    heatmaps, pafs = self.run_network([prepared[i].inputs[scale_index] for i in chunk])
                    for row, i in enumerate(chunk):
                        item = prepared[i]
                        valid_w, valid_h = item.transforms[scale_index].valid_field_size(stride)
                        heat, paf = heatmaps[row, :, :valid_h, :valid_w], pafs[row, :, :valid_h, :valid_w]
                        out_size = item.base_transform.valid_field_size(stride)
                        if (valid_w, valid_h) != out_size:
                            heat, paf = _resize_fields(heat, out_size), _resize_fields(paf, out_size)
                        if sums[i] is None:
                            sums[i] = [heat.copy(), paf.copy()]
                        else:
                            sums[i][0] += heat
                            sums[i][1] += paf
        return [(heat / num_scales, paf / num_scales) for heat, paf in sums]

    def fields(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, ResizeTransform]]:
        """(heatmaps, pafs, transform to source pixels) of each image, averaged over the scales."""
        prepared = [self.prepare(image) for image in images]
        fields = self.infer_fields(prepared, batch_size=max(1, len(prepared)))
        return [(heat, paf, item.base_transform) for (heat, paf), item in zip(fields, prepared)]

    def estimate(self, images: Sequence[np.ndarray]) -> list[list[Person]]:
        """People in each BGR uint8 image [H, W, 3] (grayscale and BGRA are converted).

        Returns one list of :class:`Person` per image, keypoints in source pixels.
        The network runs on the whole list as one batch per scale.
        """
        return [self.people_from_fields(heat, paf, transform) for heat, paf, transform in self.fields(images)]

    def people_from_fields(self, heatmaps: np.ndarray, pafs: np.ndarray, transform: ResizeTransform) -> list[Person]:
        """Decode one image's fields (valid region, stride 8) into people in source pixels."""
        return fields_to_people(heatmaps, pafs, transform, self.entry, self.postprocess)


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """One image ready for the network.

    inputs: uint8[h, w, 3] network input per scale (in the model's colour order).
    transforms: the ResizeTransform of each input.
    base_transform: the transform at scale 1, in whose field geometry the
        scales are averaged and from which people map back to source pixels.
    """

    inputs: tuple[np.ndarray, ...]
    transforms: tuple[ResizeTransform, ...]
    base_transform: ResizeTransform


def prepare_image(image: np.ndarray, spec: InputSpec, net_size: tuple[int, int], scales: Sequence[float]) -> PreparedImage:
    """Resize one image (BGR, grayscale or BGRA uint8) to the network input at each scale."""
    image = as_bgr(image)
    resized = [resize_to_input(image, spec, net_size, scale) for scale in scales]
    base = transform_for((image.shape[1], image.shape[0]), spec, net_size)
    return PreparedImage(tuple(net_input for net_input, _ in resized), tuple(t for _, t in resized), base)


def fields_to_people(heatmaps: np.ndarray, pafs: np.ndarray, transform: ResizeTransform, entry: ModelEntry,
                     config: PostprocessConfig) -> list[Person]:
    """Decode one image's fields (valid region, at the model's stride) into people in source pixels."""
    return decoded_to_people(decode(heatmaps, pafs, entry.skeleton, config), transform, entry, config)


def decoded_to_people(decoded: list[tuple[np.ndarray, float]], transform: ResizeTransform, entry: ModelEntry,
                      config: PostprocessConfig) -> list[Person]:
    """Map decoded people (keypoints in upsampled-field pixels, see postprocess.decode) to source pixels."""
    field_stride = entry.input_spec.stride / config.upsample
    people = []
    for keypoints, score in decoded:
        out = keypoints.copy()
        found = out[:, 2] > 0
        out[found, :2] = transform.to_source(keypoints[found, :2], field_stride)
        people.append(Person(keypoints=out, score=float(score)))
    return people


def _resize_fields(fields: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32[C, h, w] -> float32[C, size[1], size[0]] (cubic, half-pixel aligned)."""
    import cv2

    return np.stack([cv2.resize(c, size, interpolation=cv2.INTER_CUBIC) for c in fields])


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Accept BGR, grayscale [H, W] / [H, W, 1] and BGRA uint8 images; return BGR uint8."""
    import cv2

    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}; convert 16-bit or float images first")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected an image [H, W, 3], got shape {image.shape}")
