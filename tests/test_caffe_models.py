"""OpenPose's own model files: caffemodels read by layer name, the cmu_body and body_25 networks
checked against an independent runtime of the same files, and a BODY_25 job end to end.

The independent runtime is OpenCV 4's Caffe importer (`cv2.dnn.readNetFromCaffe`; OpenCV 5
dropped it), installed by scripts/setup.sh in `.venv-cv4`. Real weights cannot be had here, so
each test writes a caffemodel of random weights with the real layer names and a prototxt of
the architecture. The prototxts are written below from OpenPose's published network
descriptions (models/pose/coco/pose_deploy_linevec.prototxt and
models/pose/body_25/pose_deploy.prototxt: layer names, kernels, channels, concat orders),
independently of openpose_ray.models, so a wrong layer, order or activation in the PyTorch
networks shows up as a mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from opencv4 import opencv4_forward

from openpose_ray.estimator import PoseEstimator
from openpose_ray.models.caffe import CaffeLayer, caffe_layers_of, read_caffemodel, write_caffemodel
from openpose_ray.models.loading import CheckpointMismatchError
from openpose_ray.models.registry import get_entry, resolve
from openpose_ray.outputs.people_table import KEYPOINT_TYPE
from openpose_ray.skeleton import BODY25

REPO_ROOT = Path(__file__).resolve().parent.parent
INPUT_SIZES = ((1, 3, 64, 80), (1, 3, 96, 56))  # two input sizes, multiples of the stride 8


# --- prototxt, written from OpenPose's network descriptions ---------------------------------------


class Prototxt:
    """A Caffe NetParameter in text form; remembers the type of every layer with weights."""

    def __init__(self, name: str):
        self.parts = [f'name: "{name}"', 'input: "image"', *(f"input_dim: {d}" for d in (1, 3, 64, 64))]
        self.weighted: dict[str, str] = {}

    def layer(self, name: str, kind: str, bottoms: list[str], top: str, params: str = "") -> str:
        lines = [f'  name: "{name}"', f'  type: "{kind}"', *(f'  bottom: "{b}"' for b in bottoms), f'  top: "{top}"']
        self.parts.append("layer {\n" + "\n".join(lines) + (f"\n  {params}" if params else "") + "\n}")
        return top

    def conv(self, name: str, bottom: str, out: int, kernel: int) -> str:
        self.weighted[name] = "Convolution"
        return self.layer(name, "Convolution", [bottom], name,
                          f"convolution_param {{ num_output: {out} pad: {kernel // 2} kernel_size: {kernel} }}")

    def relu(self, name: str, blob: str) -> str:
        return self.layer(name, "ReLU", [blob], blob)

    def prelu(self, name: str, blob: str) -> str:
        self.weighted[name] = "PReLU"
        return self.layer(name, "PReLU", [blob], blob)

    def pool(self, name: str, bottom: str) -> str:
        return self.layer(name, "Pooling", [bottom], name, "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")

    def concat(self, name: str, bottoms: list[str]) -> str:
        return self.layer(name, "Concat", bottoms, name, "concat_param { axis: 1 }")

    def text(self) -> str:
        return "\n".join(self.parts) + "\n"


def vgg_front(net: Prototxt, prelu_from_conv4_2: bool) -> str:
    """VGG-19 to conv4_2, then conv4_3_CPM (256) and conv4_4_CPM (128): features at stride 8."""
    blob = "image"
    for block, (channels, convs) in enumerate(((64, 2), (128, 2), (256, 4), (512, 2)), start=1):
        for i in range(1, convs + 1):
            blob = net.conv(f"conv{block}_{i}", blob, channels, 3)
            if prelu_from_conv4_2 and (block, i) == (4, 2):
                net.prelu("prelu4_2", blob)
            else:
                net.relu(f"relu{block}_{i}", blob)
        if block < 4:
            blob = net.pool(f"pool{block}_stage1", blob)
    for name, channels in (("conv4_3_CPM", 256), ("conv4_4_CPM", 128)):
        blob = net.conv(name, blob, channels, 3)
        net.prelu(f"prelu{name[4:]}", blob) if prelu_from_conv4_2 else net.relu(f"relu{name[4:]}", blob)
    return blob


def coco_prototxt() -> Prototxt:
    """OpenPose's COCO body model (pose_iter_440000): 6 stages of two branches, L1 PAFs (38), L2 heatmaps (19)."""
    net = Prototxt("OpenPose - COCO")
    features = vgg_front(net, prelu_from_conv4_2=False)
    outputs = {}
    for branch, out in (("L1", 38), ("L2", 19)):
        blob = features
        for i, (channels, kernel) in enumerate(((128, 3), (128, 3), (128, 3), (512, 1), (out, 1)), start=1):
            blob = net.conv(f"conv5_{i}_CPM_{branch}", blob, channels, kernel)
            if i < 5:
                net.relu(f"relu5_{i}_CPM_{branch}", blob)
        outputs[branch] = blob
    for stage in range(2, 7):
        concat = net.concat(f"concat_stage{stage}", [outputs["L1"], outputs["L2"], features])
        for branch, out in (("L1", 38), ("L2", 19)):
            blob = concat
            for i in range(1, 8):
                channels, kernel = (128, 7) if i <= 5 else (128, 1) if i == 6 else (out, 1)
                blob = net.conv(f"Mconv{i}_stage{stage}_{branch}", blob, channels, kernel)
                if i < 7:
                    net.relu(f"Mrelu{i}_stage{stage}_{branch}", blob)
            outputs[branch] = blob
    net.concat("net_output", [outputs["L2"], outputs["L1"]])
    return net


def body25_prototxt() -> Prototxt:
    """OpenPose's BODY_25 (pose_iter_584000): 4 PAF stages (L2, 52), then 2 heatmap stages (L1, 26)."""
    net = Prototxt("OpenPose - BODY_25")
    features = vgg_front(net, prelu_from_conv4_2=True)

    def stage(stage: int, branch: str, bottom: str, out: int) -> str:
        width, hidden = (96, 256) if stage == 0 else (128, 512)
        blob = bottom
        for block in range(1, 6):
            parts = []
            for j in range(3):
                blob = net.conv(f"Mconv{block}_stage{stage}_{branch}_{j}", blob, width, 3)
                net.prelu(f"Mprelu{block}_stage{stage}_{branch}_{j}", blob)
                parts.append(blob)
            blob = net.concat(f"Mconv{block}_stage{stage}_{branch}_concat", parts)
        blob = net.conv(f"Mconv6_stage{stage}_{branch}", blob, hidden, 1)
        net.prelu(f"Mprelu6_stage{stage}_{branch}", blob)
        return net.conv(f"Mconv7_stage{stage}_{branch}", blob, out, 1)

    pafs = stage(0, "L2", features, 52)
    for s in range(1, 4):
        pafs = stage(s, "L2", net.concat(f"concat_stage{s}_L2", [features, pafs]), 52)
    heatmaps = stage(0, "L1", net.concat("concat_stage0_L1", [features, pafs]), 26)
    heatmaps = stage(1, "L1", net.concat("concat_stage1_L1", [features, heatmaps, pafs]), 26)
    net.concat("net_output", [heatmaps, pafs])
    return net


PROTOTXTS = {"cmu_body": coco_prototxt, "body_25": body25_prototxt}


# --- random weights under the real layer names ------------------------------------------------------


def random_caffe_layers(model: str, seed: int = 0, output_gain: float = 1.0) -> dict[str, CaffeLayer]:
    """He-initialised weights (activations keep their scale through ~40 layers) in the network's Caffe layout.

    output_gain scales the last convolutions (Mconv7_*): small values give fields near 0.
    """
    entry = get_entry(model)
    with torch.device("meta"):
        shapes = resolve(entry.state_dict_to_checkpoint)(resolve(entry.network)().state_dict())
    generator = torch.Generator().manual_seed(seed)
    flat = {}
    for key, meta in sorted(shapes.items()):
        layer = key.rpartition(".")[0]
        if "prelu" in layer.lower():
            flat[key] = torch.rand(meta.shape, generator=generator) * 0.25 + 0.05
        elif key.endswith(".bias"):
            flat[key] = torch.randn(meta.shape, generator=generator) * 0.01
        else:
            fan_in = meta.shape[1] * meta.shape[2] * meta.shape[3]
            gain = output_gain if layer.startswith(("Mconv7", "conv5_5")) else 1.0
            flat[key] = torch.randn(meta.shape, generator=generator) * (2.0 / fan_in) ** 0.5 * gain
    types = {key.rpartition(".")[0]: "PReLU" if "prelu" in key.lower() else "Convolution" for key in flat}
    return caffe_layers_of(flat, types)


@pytest.mark.parametrize("model", ["cmu_body", "body_25"])
def test_the_network_equals_opencvs_caffe_runtime_of_the_same_caffemodel(model, cv4_python, tmp_path):
    prototxt = PROTOTXTS[model]()
    layers = random_caffe_layers(model, seed=1)
    # The independent description and the PyTorch network have the same layers with weights, of the same kinds.
    assert {name: layer.type for name, layer in layers.items()} == prototxt.weighted
    (tmp_path / "net.prototxt").write_text(prototxt.text())
    (tmp_path / "weights.caffemodel").write_bytes(write_caffemodel(layers))
    rng = np.random.default_rng(7)
    images = {f"size{i}": rng.uniform(-0.5, 0.5, shape).astype(np.float32) for i, shape in enumerate(INPUT_SIZES)}
    opencv = opencv4_forward(cv4_python, tmp_path / "opencv4", "caffe", tmp_path / "weights.caffemodel", images,
                             prototxt=tmp_path / "net.prototxt", layer="net_output")

    estimator = PoseEstimator.from_pretrained(model, weights=str(tmp_path / "weights.caffemodel"))
    network = estimator.network.eval()
    skeleton = get_entry(model).skeleton
    with torch.no_grad():
        for key, image in images.items():
            heatmaps, pafs = (t.numpy() for t in network(torch.from_numpy(image)))
            theirs = opencv[key]
            assert heatmaps.shape == (1, skeleton.num_parts + 1, image.shape[2] // 8, image.shape[3] // 8)
            assert pafs.shape == (1, skeleton.num_paf_channels, image.shape[2] // 8, image.shape[3] // 8)
            ours = np.concatenate([heatmaps, pafs], axis=1)  # OpenPose's net_output: heatmaps, then PAFs
            assert theirs.shape == ours.shape, key
            scale = np.abs(theirs).max()
            assert scale > 1e-3, "random weights that give nothing would prove nothing"
            for channel in range(ours.shape[1]):
                error = np.abs(ours[0, channel] - theirs[0, channel]).max()
                assert error <= 1e-3 * scale, (model, key, channel, error, scale)


@pytest.mark.parametrize("change", ["renamed", "mis-shaped"])
def test_a_caffemodel_with_a_wrong_layer_fails_naming_it(change, tmp_path):
    layers = random_caffe_layers("body_25", seed=2)
    victim = "Mconv3_stage1_L1_2"
    if change == "renamed":
        layers["Mconv3_stage1_L1_two"] = layers.pop(victim)
    else:
        weight, bias = layers[victim].blobs
        layers[victim] = CaffeLayer("Convolution", (weight[:, :, :1, :], bias))  # a 3x1 kernel
    path = tmp_path / "broken.caffemodel"
    path.write_bytes(write_caffemodel(layers))
    with pytest.raises(CheckpointMismatchError) as raised:
        PoseEstimator.from_pretrained("body_25", weights=str(path))
    assert victim in str(raised.value) and str(path) in str(raised.value)
    if change == "mis-shaped":
        assert "(128, 128, 1, 3)" in str(raised.value) and "(128, 128, 3, 3)" in str(raised.value)


def test_a_caffemodel_is_read_as_written_and_converted_once(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENPOSE_RAY_CACHE", str(tmp_path / "cache"))
    layers = random_caffe_layers("cmu_body", seed=3)
    data = write_caffemodel(layers)
    read = read_caffemodel(data)
    assert list(read) == list(layers)
    for name, layer in layers.items():
        assert read[name].type == layer.type
        assert all(np.array_equal(a, b) for a, b in zip(read[name].blobs, layer.blobs))
    path = tmp_path / "pose_iter_440000.caffemodel"
    path.write_bytes(data)
    first = PoseEstimator.from_pretrained("cmu_body", weights=str(path))
    (cached,) = (tmp_path / "cache" / "checkpoints").glob("cmu_body-*.pt")
    second = PoseEstimator.from_pretrained("cmu_body", weights=str(path))  # from the cached conversion
    for (name, a), b in zip(first.network.state_dict().items(), second.network.state_dict().values()):
        assert torch.equal(a, b), name
    assert first.weights_sha256 == second.weights_sha256 and cached.stat().st_size > 0
    with pytest.raises(ValueError, match="not a caffemodel"):
        read_caffemodel(b"\xff" * 64, source="junk.caffemodel")


def test_a_body25_job_runs_end_to_end_on_a_caffemodel(ray_session, data_dir, tmp_path):
    """Random weights (real ones are not reachable here): the tables have BODY_25's shape (2 photos, small input)."""
    from openpose_ray.config_loader import load_config
    from openpose_ray.pipeline.runner import run_job
    from openpose_ray.tables import read_table

    weights = tmp_path / "pose_iter_584000.caffemodel"
    weights.write_bytes(write_caffemodel(random_caffe_layers("body_25", seed=4, output_gain=0.05)))
    photos = sorted((data_dir / "coco_val2014_samples").glob("*.jpg"))[:2]
    config = load_config(REPO_ROOT / "configs" / "local.yaml", [
        f"input={json.dumps([str(p) for p in photos])}", f"output={tmp_path / 'out'}", "model.name=body_25",
        f"model.weights={weights}", "model.net_size=[128,128]", "write.render_images=false",
        "write.render_videos=false"])
    summary = run_job(config)
    assert summary["frames"] == 2 and summary["frames_failed"] == 0 and summary["provenance"]["model"] == "body_25"
    people_files = sorted((tmp_path / "out" / "people").rglob("*.parquet"))
    assert people_files
    for people_file in people_files:
        schema = pq.read_schema(people_file)
        parts = [name for name in schema.names if name in BODY25.part_names]
        assert parts == list(BODY25.part_names)  # 25 struct columns, in BODY_25 order
        assert all(schema.field(name).type == KEYPOINT_TYPE for name in parts)
    frames = read_table(str(tmp_path / "out"), "frames")
    assert set(frames["model"].to_pylist()) == {"body_25"} and frames.num_rows == 2
    people = read_table(str(tmp_path / "out"), "people")
    assert people.num_rows == summary["people"] == sum(frames["num_people"].to_pylist())


def test_a_caffemodel_from_s3_with_its_sha256(moto_s3, tmp_path, monkeypatch):
    """weights=s3://... and weights_sha256: as for .pt checkpoints (a wrong hash is refused before parsing)."""
    import boto3

    from openpose_ray.jobconfig import S3Config

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OPENPOSE_RAY_CACHE", str(tmp_path / "cache"))
    data = write_caffemodel(random_caffe_layers("body_25", seed=5))
    client = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    client.create_bucket(Bucket="openpose-models")
    client.put_object(Bucket="openpose-models", Key="body_25/pose_iter_584000.caffemodel", Body=data)
    uri, s3 = "s3://openpose-models/body_25/pose_iter_584000.caffemodel", S3Config(endpoint_url=moto_s3)
    sha256 = __import__("hashlib").sha256(data).hexdigest()
    estimator = PoseEstimator.from_pretrained("body_25", weights=uri, weights_sha256=sha256, s3=s3)
    assert estimator.weights_sha256 == sha256 and estimator.skeleton is BODY25
    with pytest.raises(ValueError, match="expected 0{64}"):
        PoseEstimator.from_pretrained("body_25", weights=uri, weights_sha256="0" * 64, s3=s3)
