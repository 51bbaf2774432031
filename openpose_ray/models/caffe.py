"""Caffe's ``.caffemodel`` files (OpenPose's own model files), read and written with protobuf.

A caffemodel is a serialized ``NetParameter`` message of Caffe's public schema
(``src/caffe/proto/caffe.proto``). Only the fields that carry weights are declared
here, with Caffe's field numbers, and the protobuf runtime parses the file (fields
not declared are skipped):

    NetParameter      name = 1, layers = 2 (V1LayerParameter, old files), layer = 100 (LayerParameter)
    LayerParameter    name = 1, type = 2, blobs = 7
    V1LayerParameter  name = 4, type = 5 (an enum number), blobs = 6
    BlobProto         num/channels/height/width = 1..4 (legacy shape), data = 5 (packed float), shape = 7
    BlobShape         dim = 1 (packed int64)

The message classes are built at import from a descriptor made here (no protoc, no
generated code). :func:`read_caffemodel` gives {layer name: :class:`CaffeLayer`};
:func:`flat_checkpoint` turns those into ``<layer>.weight`` / ``<layer>.bias``
tensors, the flat layout the registry's ``checkpoint_to_state_dict`` functions map
onto a network by layer name. :func:`write_caffemodel` writes the same subset (tests
make caffemodels of random weights with it; OpenCV's Caffe importer reads them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from google.protobuf import descriptor_pb2

from .protobuf_schema import add_message, message_classes, parse

_PACKAGE = "openpose_ray_caffe"  # not "caffe": never clash with a real caffe_pb2 loaded in the same process


def _message_classes() -> dict[str, type]:
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="openpose_ray_caffe_subset.proto", package=_PACKAGE,
                                              syntax="proto2")

    message = partial(add_message, file)  # (name, [(field, number, type, label, message type[, packed])])

    optional, repeated = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("BlobShape", [("dim", 1, F.TYPE_INT64, repeated, None, True)])
    message("BlobProto", [
        ("num", 1, F.TYPE_INT32, optional, None, False), ("channels", 2, F.TYPE_INT32, optional, None, False),
        ("height", 3, F.TYPE_INT32, optional, None, False), ("width", 4, F.TYPE_INT32, optional, None, False),
        ("data", 5, F.TYPE_FLOAT, repeated, None, True), ("shape", 7, F.TYPE_MESSAGE, optional, "BlobShape", False),
        ("double_data", 8, F.TYPE_DOUBLE, repeated, None, True),
    ])
    message("LayerParameter", [
        ("name", 1, F.TYPE_STRING, optional, None, False), ("type", 2, F.TYPE_STRING, optional, None, False),
        ("bottom", 3, F.TYPE_STRING, repeated, None, False), ("top", 4, F.TYPE_STRING, repeated, None, False),
        ("blobs", 7, F.TYPE_MESSAGE, repeated, "BlobProto", False),
    ])
    message("V1LayerParameter", [
        ("name", 4, F.TYPE_STRING, optional, None, False), ("type", 5, F.TYPE_INT32, optional, None, False),
        ("blobs", 6, F.TYPE_MESSAGE, repeated, "BlobProto", False),
    ])
    message("NetParameter", [
        ("name", 1, F.TYPE_STRING, optional, None, False),
        ("layers", 2, F.TYPE_MESSAGE, repeated, "V1LayerParameter", False),
        ("layer", 100, F.TYPE_MESSAGE, repeated, "LayerParameter", False),
    ])
    return message_classes(file, ("NetParameter", "LayerParameter", "BlobProto"))


_CLASSES = _message_classes()
# V1LayerParameter.LayerType numbers of the layers with weights (caffe.proto), for messages only.
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}
# Layers whose first blob keeps its shape; every other blob (biases, PReLU slopes, ...) is a vector.
_SHAPED_WEIGHTS = {"Convolution", "Deconvolution", "InnerProduct"}


class CaffeModelError(ValueError):
    """The bytes are not a caffemodel this reader understands."""


@dataclass(frozen=True)
class CaffeLayer:
    """A layer of a caffemodel: its type ("Convolution", "PReLU", ...) and weight blobs (float32 arrays)."""

    type: str
    blobs: tuple[np.ndarray, ...]


def read_caffemodel(data: bytes, *, source: str = "caffemodel") -> dict[str, CaffeLayer]:
    """{layer name: CaffeLayer} of the layers that carry blobs, in file order.

    Raises :class:`CaffeModelError` when ``data`` does not parse, holds no layer with
    weights, names a layer twice, or a blob's data does not fill its shape.
    """
    net = parse(_CLASSES["NetParameter"], data, CaffeModelError,
                f"{source} is not a caffemodel (a Caffe NetParameter protobuf)")
    layers: dict[str, CaffeLayer] = {}
    entries = [(layer.name, layer.type, layer.blobs) for layer in net.layer]
    entries += [(layer.name, _V1_TYPES.get(layer.type, f"V1 type {layer.type}"), layer.blobs) for layer in net.layers]
    for name, kind, blobs in entries:
        if not blobs:
            continue
        if name in layers:
            raise CaffeModelError(f"{source}: layer {name!r} appears twice")
        layers[name] = CaffeLayer(kind, tuple(_blob_array(blob, f"{source}: layer {name!r} blob {i}")
                                              for i, blob in enumerate(blobs)))
    if not layers:
        raise CaffeModelError(f"{source} holds no layer with weights (is it a .prototxt, or an empty net?)")
    return layers


def _blob_array(blob, where: str) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:  # files of Caffe before BlobShape: 4-D num x channels x height x width
        shape = (blob.num, blob.channels, blob.height, blob.width)
    values = np.asarray(blob.data, dtype=np.float32) if len(blob.data) else np.asarray(blob.double_data, np.float32)
    if values.size != int(np.prod(shape)):
        raise CaffeModelError(f"{where}: {values.size} values for shape {list(shape)}")
    return values.reshape(shape)


def flat_checkpoint(layers: Mapping[str, CaffeLayer]) -> dict[str, torch.Tensor]:
    """``<layer>.weight`` (first blob) and ``<layer>.bias`` (second) per layer, as float32 tensors.

    A convolution's weight keeps Caffe's [out, in, kh, kw], which is PyTorch's; biases
    and PReLU slopes become vectors (legacy 4-D shapes such as [1, 1, 1, C] included).
    """
    flat: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        if len(layer.blobs) > 2:
            raise CaffeModelError(f"layer {name!r} ({layer.type}) has {len(layer.blobs)} blobs; only weight and "
                                  "bias are supported (BatchNorm/Scale layers are not part of OpenPose's models)")
        for index, (blob, key) in enumerate(zip(layer.blobs, ("weight", "bias"))):
            array = blob if index == 0 and layer.type in _SHAPED_WEIGHTS else blob.reshape(-1)
            flat[f"{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(array))
    return flat


def write_caffemodel(layers: Mapping[str, CaffeLayer], name: str = "") -> bytes:
    """A caffemodel (new-style ``layer`` entries, BlobShape shapes) holding ``layers``."""
    net = _CLASSES["NetParameter"](name=name)
    for layer_name, layer in layers.items():
        entry = net.layer.add(name=layer_name, type=layer.type)
        for blob in layer.blobs:
            proto = entry.blobs.add()
            proto.shape.dim.extend(int(d) for d in blob.shape)
            # The packed floats as their wire bytes (field 5, length-delimited): a list of 10^7
            # Python floats would take seconds; merged fields may come in any order.
            values = np.ascontiguousarray(blob, dtype="<f4").tobytes()
            proto.MergeFromString(b"\x2a" + _varint(len(values)) + values)
    return net.SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def caffe_layers_of(flat: Mapping[str, torch.Tensor], types: Mapping[str, str]) -> dict[str, CaffeLayer]:
    """The inverse of :func:`flat_checkpoint`: layers from ``<layer>.weight`` / ``.bias`` tensors.

    types: Caffe layer type per layer name (e.g. "Convolution", "PReLU").
    """
    blobs: dict[str, list[np.ndarray]] = {}
    for key, tensor in flat.items():
        layer, _, parameter = key.rpartition(".")
        blobs.setdefault(layer, [None, None])[0 if parameter == "weight" else 1] = tensor.detach().cpu().numpy()
    return {layer: CaffeLayer(types[layer], tuple(b for b in pair if b is not None)) for layer, pair in blobs.items()}
