"""GPU check: what the project needs to know from a GPU, in one script that runs in under 8 minutes.

Runs without Ray, PyAV, boto3 or the package index (the GPU machines we can
borrow have torch, OpenCV, numpy and pyarrow, and no network): the converted
checkpoint (``openpose-ray weights export --to FILE``, or the weights cache's
checkpoints/mobilenet_thin.pt), the labelled photos and a video come from paths
on the command line::

    python benchmarks/gpu_check.py --checkpoint mobilenet_thin.pt --photos coco_val2017_mini \\
        --video street_720p_h264.avi [more videos] [--device cuda] [--quick] [--json gpu_check.json]

It prints, for docs/benchmarks.md (current figures) and docs/benchmarks-history.md (the log):

1. the machine: device, torch / CUDA / cuDNN versions, PyTorch's TF32 defaults;
2. fields on the device vs on the CPU (fp32, the reference): max abs difference
   at each precision (fp32 = TF32 off, tf32 = on, bf16, fp16);
3. COCO keypoint AP on the labelled photos at each precision, peaks found on
   the CPU and on the device (pycocotools, where importable; goal: within 0.005
   of fp32);
4. people from device peaks vs CPU peaks on the same fields (fp32);
5. model-only frames/s at batch 1, 8, 32, 128, 256 at 432x368 and 656x368 per
   precision, with peak device memory (goal on an H100/H200: >= 5,000 frames/s
   at 432x368), and the engine's frames/s from host uint8 frames to peaks;
6. the job's InferenceActor, called directly (no Ray), on decoded video frames:
   frames/s and peak device memory, beside the host's decode + pre-processing rate;
13. the actor against the model (issue 24; benchmarks/gpu_pipeline.py, runs
   after 6 and 12, whatever the budget): model-only eager / compiled vs the actor compiled / eager, fp16,
   the peak finder's ms per chunk (fixed buffers vs exact), synchronisations
   per chunk, batch 1 eager vs compiled;
7-12. cuDNN autotuning, estimate() on a list vs a loop, the host's CPU work per
   frame on one thread, the OpenPose networks' frames/s, torch.compile,
   mobilenet_thin's graph forms (registered vs tidy; 12 runs after 6, before 13)
   (benchmarks/gpu_speed.py; skipped once ``--budget-s`` is spent).

The JSON is rewritten after every section, so a run cut short by the machine's
time limit keeps what it measured.

``--device cpu --quick`` runs every step small on the CPU (tests/test_gpu_check.py),
so the script cannot rot between GPU loans.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from openpose_ray.estimator import PoseEstimator, prepare_image  # noqa: E402
from openpose_ray.jobconfig import InferencePoolConfig, JobConfig, ModelConfig  # noqa: E402
from openpose_ray.models.loading import read_checkpoint, state_dict_digest  # noqa: E402
from openpose_ray.models.registry import get_entry  # noqa: E402
from openpose_ray.models.weights import ResolvedWeights, sha256_file  # noqa: E402
from openpose_ray.pipeline.records import FrameMeta, PreparedShard, ShardFrames, StageSeconds, from_row, to_row  # noqa: E402
from openpose_ray.pipeline.inference_actor import InferenceActor  # noqa: E402

import gpu_pipeline  # noqa: E402  (beside this file)
import gpu_speed  # noqa: E402
from gpu_speed import peak_memory_mib, reset_peak_memory, synchronize  # noqa: E402

MODEL = "mobilenet_thin"
SIZES = [(432, 368), (656, 368)]  # stretch; 656x368 is also what fit at height 368 gives a 16:9 video frame
BATCHES = [1, 8, 32, 128, 256]
RESULTS: dict = {}
JSON_PATH: list[Path] = []  # where record() rewrites the results (set from --json)


def say(text: str) -> None:
    print(text, flush=True)


def record(key: str, value) -> None:
    RESULTS[key] = value
    for path in JSON_PATH:
        path.write_text(json.dumps(RESULTS, indent=2))


def precisions_on(device: str) -> list[str]:
    return ["fp32", "bf16"] if device == "cpu" else ["fp32", "tf32", "bf16", "fp16"]


def machine(device: str) -> None:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
            "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version(),
                 "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
                 "cudnn_conv_fp32_precision_default": torch.backends.cudnn.conv.fp32_precision}
    record("machine", info)
    say("1. machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))


def fields_vs_cpu(reference: dict, estimators: dict, photos: list[np.ndarray]) -> None:
    say("2. fields on the device vs CPU fp32: max abs difference (heatmaps / PAFs)")
    out = {}
    for size in estimators:
        prepared = [reference[size].prepare(image) for image in photos]
        want = reference[size].infer_fields(prepared, batch_size=len(prepared))
        for precision, estimator in estimators[size].items():
            got = estimator.infer_fields(prepared, batch_size=len(prepared))
            heat = max(float(np.abs(g[0] - w[0]).max()) for g, w in zip(got, want))
            paf = max(float(np.abs(g[1] - w[1]).max()) for g, w in zip(got, want))
            out[f"{size[0]}x{size[1]} {precision}"] = {"heatmaps": heat, "pafs": paf}
            say(f"   {size[0]}x{size[1]} {precision:>4}: {heat:.2e} / {paf:.2e}")
    record("fields_max_abs_diff", out)


def coco_ap(estimators: dict, photos_dir: Path) -> None:
    annotations = photos_dir / "person_keypoints.json"
    try:
        from openpose_ray.coco import evaluate_keypoints

        import pycocotools  # noqa: F401
    except ImportError:
        say("3. COCO AP: skipped, pycocotools is not importable (carry its wheel, see docs/benchmarks.md)")
        record("coco_ap", None)
        return
    say(f"3. COCO keypoint AP on {photos_dir.name} (peaks on CPU / on the device)")
    out = {}
    for size in estimators:
        for precision, estimator in estimators[size].items():
            aps = []
            for peaks_on in ("cpu", "device"):
                def estimate(path, estimator=estimator, peaks_on=peaks_on):
                    return estimator.estimate([cv2.imread(path)], peaks_on=peaks_on)[0]

                aps.append(round(evaluate_keypoints(annotations, estimate, photos_dir)["AP"], 4))
            out[f"{size[0]}x{size[1]} {precision}"] = {"peaks_on_cpu": aps[0], "peaks_on_device": aps[1]}
            say(f"   {size[0]}x{size[1]} {precision:>4}: {aps[0]:.4f} / {aps[1]:.4f}")
    record("coco_ap", out)


def device_vs_cpu_peaks(estimators: dict, photos: list[np.ndarray]) -> None:
    size = next(iter(estimators))
    estimator = estimators[size]["fp32"]
    on_cpu = estimator.estimate(photos, peaks_on="cpu")
    on_device = estimator.estimate(photos, peaks_on="device")
    same_count = all(len(a) == len(b) for a, b in zip(on_cpu, on_device))
    pairs = [(a, b) for frame_a, frame_b in zip(on_cpu, on_device) for a, b in zip(frame_a, frame_b)]
    same_parts = all(np.array_equal(a.keypoints[:, 2] > 0, b.keypoints[:, 2] > 0) for a, b in pairs)
    xy = max((float(np.abs(a.keypoints[:, :2] - b.keypoints[:, :2]).max()) for a, b in pairs), default=0.0)
    conf = max((float(np.abs(a.keypoints[:, 2] - b.keypoints[:, 2]).max()) for a, b in pairs), default=0.0)
    out = {"people": sum(map(len, on_cpu)), "same_people_counts": same_count, "same_parts": same_parts,
           "max_xy_diff_px": xy, "max_confidence_diff": conf}
    record("device_vs_cpu_peaks", out)
    say(f"4. device peaks vs CPU peaks (fp32, {size[0]}x{size[1]}): {out}")


def throughput(estimators: dict, device: str, batches: list[int], seconds: float, frames: list[np.ndarray]) -> None:
    say("5. model-only frames/s (inputs on the device) and peak device memory; engine frames/s host -> peaks")
    out = {}
    for size in estimators:
        for precision, estimator in estimators[size].items():
            engine = estimator.engine
            for batch_size in batches:
                key = f"{size[0]}x{size[1]} {precision} batch {batch_size}"
                try:
                    reset_peak_memory(device)
                    batch = torch.randint(0, 256, (batch_size, size[1], size[0], 3), dtype=torch.uint8, device=device)
                    out[key] = {"frames_per_s": gpu_speed.frames_per_s(engine, batch, seconds, device),
                                "peak_mib": peak_memory_mib(device)}
                except torch.OutOfMemoryError:
                    out[key] = {"frames_per_s": None, "error": "out of memory"}
                say(f"   {key}: {out[key]}")
            # real frames (people in them), so limb scoring is measured too
            prepared = [estimator.prepare(frames[i % len(frames)]) for i in range(max(batches))]
            estimator.infer_peaks(prepared, batch_size=max(batches))
            reset_peak_memory(device)
            start = time.perf_counter()
            estimator.infer_peaks(prepared * 2, batch_size=max(batches))
            fps = 2 * len(prepared) / (time.perf_counter() - start)
            key = f"{size[0]}x{size[1]} {precision} engine peaks batch {max(batches)}"
            out[key] = {"frames_per_s": round(fps, 1), "peak_mib": peak_memory_mib(device)}
            say(f"   {key}: {out[key]}")
    record("throughput", out)


def decode_video(path: Path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            if not frames:
                raise SystemExit(f"cannot decode {path} with OpenCV")
            capture.release()
            capture = cv2.VideoCapture(str(path))  # loop the clip to reach the count
            continue
        frames.append(frame)
    capture.release()
    return frames


def actor_rate(weights: ResolvedWeights, video: Path, frames: list[np.ndarray], prepared: list, device: str,
               size: tuple[int, int], precision: str, batch_size: int, shard_frames: int, compile: str = "off") -> dict:
    """The job's InferenceActor (no Ray) on ``prepared`` in shards of ``shard_frames``: frames/s, peak memory.

    compile: inference.compile; section 6 runs eager (compiling every size x precision would take the
    budget), section 13 both."""
    pool = InferencePoolConfig(device="cpu" if device == "cpu" else "cuda", precision=precision,
                               backend="torch", batch_size=batch_size, compile=compile)
    config = JobConfig(input=(str(video),), output="unused",
                       model=ModelConfig(name=MODEL, weights=weights.source, net_size=size), inference=pool)
    actor = InferenceActor(config, weights, device, torch.get_num_threads(), peaks_on_device=True)
    rows = []
    for first in range(0, len(prepared), shard_frames):
        chunk = prepared[first : first + shard_frames]
        metas = [FrameMeta(str(video), None, first + i, None, frames[0].shape[1], frames[0].shape[0], "ok", None)
                 for i in range(len(chunk))]
        shard = ShardFrames(f"segment-{first}", "video", None, tuple(metas), tuple(p.base_transform for p in chunk))
        rows.append(to_row(PreparedShard(shard, tuple(chunk), StageSeconds()), shard.shard_id))
    first = time.perf_counter()
    actor(rows[0])  # loads the network, warms the kernels (and compiles)
    first_s = time.perf_counter() - first
    reset_peak_memory(device)
    start = time.perf_counter()
    results = [from_row(actor(row)) for row in rows]
    synchronize(device)
    seconds = time.perf_counter() - start
    with_peaks = sum(len(r.peaks.part) > 0 for w in results for r in w.results if r is not None)
    engine = actor.estimator.engine
    out = {"frames_per_s": round(len(prepared) / seconds, 1), "peak_mib": peak_memory_mib(device),
           "frames_with_peaks": with_peaks, "first_shard_s": round(first_s, 1), "overflowed": engine.overflowed}
    if engine.compiled_network is not None:
        out["network_compile_s"] = list(engine.compiled_network.compile_seconds.values())
        out["compile_failed"] = [getattr(f, "failed", None) for f in [engine.compiled_network,
                                                                      *engine._peak_finders.values()]]
    return out


def actor_on_video(weights: ResolvedWeights, video: Path, device: str, sizes: list, frames_wanted: int,
                   shard_frames: int, actor_batches: list[int]) -> None:
    start = time.perf_counter()
    frames = decode_video(video, frames_wanted)
    decode_s = time.perf_counter() - start
    out = {"frames": len(frames), "source": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
           "host_decode_frames_per_s": round(len(frames) / decode_s, 1), "shard_frames": shard_frames}
    spec = get_entry(MODEL).input_spec
    for size in sizes:
        start = time.perf_counter()
        prepared = [prepare_image(frame, spec, size, (1.0,)) for frame in frames]
        out[f"{size[0]}x{size[1]} host_preprocess_frames_per_s"] = round(len(frames) / (time.perf_counter() - start), 1)
        for precision in precisions_on(device):
            for batch_size in actor_batches:
                key = f"{size[0]}x{size[1]} {precision} batch {batch_size}"
                out[key] = actor_rate(weights, video, frames, prepared, device, size, precision, batch_size,
                                      shard_frames)
                say(f"   actor {key}: {out[key]}")
    record("actor_on_video", out)
    say(f"6. InferenceActor on decoded video frames: {out}")


def actor_against_model(weights: ResolvedWeights, args, estimators: dict, sizes: list) -> None:
    """Section 13 (benchmarks/gpu_pipeline.py): the actor against model-only, compiled and eager."""
    video, quick = args.video[0], args.quick
    frames = decode_video(video, 8 if quick else 512)
    spec = get_entry(MODEL).input_spec
    prepared = {size: [prepare_image(frame, spec, size, (1.0,)) for frame in frames] for size in sizes}
    batch_size = 2 if quick else args.actor_batches[0]

    def rate(size, precision, batch, compile):
        return actor_rate(weights, video, frames, prepared[size], args.device, size, precision, batch,
                          4 if quick else 128, compile)

    gpu_pipeline.actor_against_model(estimators, frames, args.device, batch_size, 0.05 if quick else 1.0, rate, say,
                                     record, quick)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="converted mobilenet_thin state dict (.pt)")
    parser.add_argument("--photos", required=True, type=Path, help="folder of labelled photos with person_keypoints.json")
    parser.add_argument("--video", required=True, type=Path, nargs="+",
                        help="videos OpenCV can decode (the first feeds the actor; each is timed on one thread)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="every step, small, at 432x368 only (tests on the CPU)")
    parser.add_argument("--json", type=Path, help="also write the results here (after every section)")
    parser.add_argument("--sections", default="1-13",
                        help="which sections to run, e.g. 1-13 (all, the default) or 1,6,8,12 (1 always runs)")
    parser.add_argument("--actor-batches", type=int, nargs="+", default=[64],
                        help="the actor's batch sizes in section 6 (default 64)")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="seconds after which sections 7-12 are skipped (default 330)")
    args = parser.parse_args()
    JSON_PATH[:] = [args.json] if args.json else []
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    started = time.perf_counter()
    state_dict = read_checkpoint(args.checkpoint)
    entry = get_entry(MODEL)
    if state_dict_digest(state_dict) != entry.state_dict_digest:
        raise SystemExit(f"{args.checkpoint} is not the converted default {MODEL} weights (digest differs)")
    weights = ResolvedWeights(state_dict, sha256_file(args.checkpoint), str(args.checkpoint))
    photos = [cv2.imread(str(p)) for p in sorted(args.photos.glob("*.jpg"))]
    # torch on both sides: this script measures PyTorch on the device (GPU machines have no OpenVINO)
    # and eager (compile off): compiling every size x batch x precision would take the whole budget;
    # section 11 measures the compiled network (inference.compile, on by default on CUDA) against eager
    on_cpu = PoseEstimator.from_state_dict(MODEL, state_dict, source=weights.source, device="cpu", backend="torch",
                                           compile="off")
    on_device = PoseEstimator.from_state_dict(MODEL, state_dict, source=weights.source, device=args.device,
                                              backend="torch", compile="off")
    sizes = SIZES[:1] if args.quick else SIZES
    reference = {size: on_cpu.with_config(net_size=size) for size in sizes}
    estimators = {size: {p: on_device.with_config(net_size=size, precision=p) for p in precisions_on(args.device)}
                  for size in sizes}
    wanted = sections_from(args.sections)
    machine(args.device)
    if 2 in wanted:
        fields_vs_cpu(reference, estimators, photos)
    if 3 in wanted:
        coco_ap(estimators, args.photos)
    if 4 in wanted:
        device_vs_cpu_peaks(estimators, photos)
    if 5 in wanted:
        throughput(estimators, args.device, [1, 2] if args.quick else BATCHES, 0.05 if args.quick else 1.0, photos)
    if 6 in wanted:
        actor_on_video(weights, args.video[0], args.device, sizes, 8 if args.quick else 512, 4 if args.quick else 128,
                       [2] if args.quick else args.actor_batches)
    deadline = started + args.budget_s
    if 12 in wanted and gpu_speed.section_fits("graph forms", deadline, say):  # the forms before the actor
        gpu_speed.graph_forms(estimators, args.device, [2] if args.quick else [64, 256], 0.05 if args.quick else 0.7,
                              say, record)
    if 13 in wanted:  # whatever the budget: issue 24's question
        actor_against_model(weights, args, estimators, sizes)
    speed_sections(args, on_device, estimators, wanted, deadline)
    record("wall_s", round(time.perf_counter() - started, 1))
    say(f"done in {RESULTS['wall_s']} s")
    return 0


def sections_from(text: str) -> set[int]:
    """"1-12" or "1,6,8" -> the section numbers (1 is always in)."""
    wanted = {1}
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        wanted |= set(range(int(first), int(last or first) + 1))
    return wanted


def speed_sections(args, on_device: PoseEstimator, estimators: dict, wanted: set[int], deadline: float) -> None:
    """Sections 7-11 (benchmarks/gpu_speed.py), most needed first."""
    quick, device = args.quick, args.device
    seconds = 0.05 if quick else 0.7
    fits = lambda name, number: number in wanted and gpu_speed.section_fits(name, deadline, say)  # noqa: E731
    if device.startswith("cuda") and fits("cuDNN autotuning", 7):
        gpu_speed.cudnn_autotune({size: {p: e for p, e in by.items() if p != "fp32"} for size, by in estimators.items()},
                                 device, [32, 128], seconds, say, record)
    frames = decode_video(args.video[0], 4 if quick else 96)
    if fits("list vs loop", 8):
        for precision in ["fp32"] if quick else precisions_on(device)[::2]:  # fp32 and bf16
            gpu_speed.list_vs_loop(on_device.with_config(precision=precision), frames, device, say,
                                   lambda key, value, p=precision: record(f"{key} {p}", value),
                                   (None,) if quick else (None, 8, 32, 128))
    if fits("host stages", 9):
        gpu_speed.host_stages_one_thread(on_device, args.video, 4 if quick else 150, say, record)
    size = SIZES[0] if quick else SIZES[1]
    if fits("OpenPose networks", 10):
        gpu_speed.openpose_networks(device, size if not quick else (96, 64), [1, 2] if quick else [1, 16, 64],
                                    ["fp32"] if quick else ["tf32", "bf16", "fp16"], seconds, say, record)
    if not quick and fits("torch.compile", 11):
        gpu_speed.compiled_network(on_device.with_config(net_size=SIZES[0], precision="bf16"), device, SIZES[0],
                                   [8, 128], seconds, say, record)


if __name__ == "__main__":
    sys.exit(main())
