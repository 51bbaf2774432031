"""Registry of pose networks and their weights.

One entry holds everything needed to use a network correctly: how to build it,
where its default weights come from and their hashes, the input it expects
(size, colour order, scaling, interpolation) and the skeleton its outputs
encode. Pre-processing and decoding are derived from the entry, never
configured beside it.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Literal

from ..skeleton import BODY25, COCO18, Skeleton


@dataclass(frozen=True)
class InputSpec:
    """What the network expects as input.

    The registry's spec holds the model's reference geometry (how its results
    were published); a run's spec (``preprocess.resolve_input_spec``) replaces
    net_size and resize_mode with the run's.

    net_size: (width, height) in pixels of the network input: stretch resizes to
        exactly it; fit uses its height only.
    resize_mode: "stretch" resizes to net_size, ignoring the aspect ratio
        (tf-pose); "fit" scales to net_size's height keeping the aspect ratio
        and pads right/bottom (CMU OpenPose); see ``preprocess.input_size_for``.
    color_order: channel order fed to the network, "BGR" or "RGB".
    scale, offset: network input = pixel (0..255) * scale + offset.
    interpolation: resize filter, "cubic", "linear" or "area".
    stride: output stride of the fields, in input pixels.
    pad_value: uint8 value of padded pixels (fit).
    aspect_buckets: fit pads each input's width up to the nearest wider of a
        few common aspect ratios (``preprocess.ASPECT_BUCKETS``), so frames of
        similar shapes share a network batch; False: nothing is padded.
    """

    net_size: tuple[int, int]
    resize_mode: Literal["stretch", "fit"]
    color_order: Literal["BGR", "RGB"]
    scale: float
    offset: float
    interpolation: Literal["cubic", "linear", "area"]
    stride: int = 8
    pad_value: int = 128
    aspect_buckets: bool = False


@dataclass(frozen=True)
class PypiSdistFile:
    """A file inside a source distribution on the Python package index."""

    package: str
    version: str
    member: str  # path inside the sdist archive, without the top folder
    sha256: str  # of the member file
    license: str


@dataclass(frozen=True)
class ModelEntry:
    """A registered network.

    network: "module:Class" of the nn.Module; ``forward(x) -> (heatmaps, pafs)``.
    checkpoint_to_state_dict: "module:function" mapping a checkpoint in the
        documented layout to the module's state dict, or None when the
        checkpoint is already the module's state dict.
    source: where the default weights come from; None when the user must
        supply a checkpoint.
    state_dict_to_checkpoint: "module:function", the inverse of checkpoint_to_state_dict
        (errors about a checkpoint then name its keys as the file does).
    source_converter: "module:function" turning the source file into a state dict.
    state_dict_digest: sha256 of the converted state dict's tensors
        (see ``loading.state_dict_digest``); checked on every load.
    inference_form: "module:function" ``(network, device) -> nn.Module``: the loaded network
        rearranged for inference, same outputs (e.g. mobilenet_thin_tidy); None: the network runs as is.
    """

    name: str
    description: str
    network: str
    input_spec: InputSpec
    skeleton: Skeleton
    checkpoint_to_state_dict: str | None = None
    state_dict_to_checkpoint: str | None = None
    source: PypiSdistFile | None = None
    source_converter: str | None = None
    state_dict_digest: str | None = None
    checkpoint_layout: str = ""
    inference_form: str | None = None


def resolve(path: str) -> Any:
    """Import ``"package.module:attribute"``."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def known_models() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(known_models())}.{hint}") from None


MOBILENET_THIN = register(
    ModelEntry(
        name="mobilenet_thin",
        description="tf-pose mobilenet_thin (MobileNet-v1 0.75 trunk, 6 separable OpenPose stages), COCO-18",
        network="openpose_ray.models.mobilenet_thin:MobilenetThin",
        input_spec=InputSpec(
            net_size=(432, 368),
            resize_mode="stretch",
            color_order="BGR",
            scale=1.0,
            offset=0.0,
            interpolation="cubic",
        ),
        skeleton=COCO18,
        source=PypiSdistFile(
            package="tf-pose",
            version="0.11.0",
            member="models/graph/mobilenet_thin/graph_opt.pb",
            sha256="51f84ea82b3d0143dd4cf362e018c125e832c64771908ee8766fbd8b0328008d",
            license="Apache-2.0",
        ),
        source_converter="openpose_ray.models.convert:convert_tf_pose_graph",
        state_dict_digest="c633e267094abfe73be0f075993b0e279b27e58c7eb9d894385126d0e2f0c430",
        checkpoint_layout="the MobilenetThin state dict, as written by `openpose-ray weights fetch`",
        inference_form="openpose_ray.models.mobilenet_thin_tidy:inference_form",
    )
)

# The input of OpenPose's Caffe models (COCO and BODY_25 alike): BGR, x/256 - 0.5, height 368
# keeping the aspect ratio, padded to a multiple of the stride (OpenPose's defaults).
OPENPOSE_CAFFE_INPUT = InputSpec(
    net_size=(368, 368),
    resize_mode="fit",
    color_order="BGR",
    scale=1.0 / 256.0,
    offset=-0.5,
    interpolation="cubic",
)

CMU_BODY = register(
    ModelEntry(
        name="cmu_body",
        description="CMU OpenPose body model (VGG-19 + 6 two-branch stages), COCO-18; bring your own checkpoint",
        network="openpose_ray.models.cmu:CmuBodyNet",
        input_spec=OPENPOSE_CAFFE_INPUT,
        skeleton=COCO18,
        checkpoint_to_state_dict="openpose_ray.models.cmu:cmu_checkpoint_to_state_dict",
        state_dict_to_checkpoint="openpose_ray.models.cmu:state_dict_to_cmu_checkpoint",
        checkpoint_layout=(
            "OpenPose's models/pose/coco/pose_iter_440000.caffemodel, or the common PyTorch conversion of it "
            "(body_pose_model.pth): flat keys conv1_1.weight ... Mconv7_stage6_L1.weight, Mconv7_stage6_L2.weight"
        ),
    )
)

BODY_25 = register(
    ModelEntry(
        name="body_25",
        description="OpenPose BODY_25 (VGG-19 + 4 PAF and 2 heatmap stages, PReLU), 25 parts with feet; "
                    "bring OpenPose's caffemodel",
        network="openpose_ray.models.body25:Body25Net",
        input_spec=OPENPOSE_CAFFE_INPUT,
        skeleton=BODY25,
        checkpoint_to_state_dict="openpose_ray.models.body25:body25_checkpoint_to_state_dict",
        state_dict_to_checkpoint="openpose_ray.models.body25:state_dict_to_body25_checkpoint",
        checkpoint_layout=(
            "OpenPose's models/pose/body_25/pose_iter_584000.caffemodel, or a flat mapping of its layer names: "
            "conv1_1.weight ... prelu4_2.weight ... Mconv7_stage1_L1.bias"
        ),
    )
)
