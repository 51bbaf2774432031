"""A GPU node end to end: the real Ray job on all of the machine, beside decode-only and the actor alone.

In one in-process Ray session on every CPU (and the GPU) of the machine, over ``--copies`` links to
each input video (enough for a minute or more of steady state; the job follows the links):

1. the job, once per ``--decoder`` (sources.decoder cpu, gpu, then yuv): ``run_job`` with the real
   InferenceActor (configs/gpu-cluster.yaml's settings unless ``--set`` says otherwise, input and
   output local): frames/s over the pipeline's span (first to last row: the steady state) and over
   the whole run (weights shipped, actors placed, compile, manifest, report; Ray is started once,
   before), seconds to the first result, shards at once per stage, CPU seconds per stage (task time
   summed), the GPU's busy share sampled every 0.5 s through the run (``nvidia-smi``; None without
   it), and the summary's decoding counts;
2. decode only, per decoder: the job's listing, planning and decoding alone on the same inputs (what
   the CPUs can decode at most: BGR for cpu, YUV planes for yuv, NVDEC's for gpu; bench_ceiling.decode_only);
3. the actor alone: InferenceActor called directly (no Ray) on the first video's frames, decoded and
   resized beforehand, in the job's shards: what the device can take.

Prints one JSON line starting ``GPU_NODE`` (and writes it to ``--json``, also after each part). On a GPU machine without
network, Ray or PyAV, unpack the kit first (scripts/gpu_node_kit.sh writes .kit/run.sh, which does
all of it); ``--device cpu --copies 1 --set sources.frame_step=20 ...`` is the CPU smoke run of the tests.

    python benchmarks/gpu_node.py --checkpoint mobilenet_thin.pt --video street_720p_h264.avi \\
        [--video sports_994p_vp9.mp4] --copies 150 [--device cuda] [--decoder cpu --decoder gpu ...]
        [--set KEY=VALUE ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_ceiling import decode_only  # noqa: E402
from openpose_ray.config_loader import load_config  # noqa: E402
from openpose_ray.models.weights import sha256_file  # noqa: E402
from openpose_ray.pipeline import runner  # noqa: E402


class GpuSampler:
    """The GPU's utilisation (percent of time a kernel ran, nvidia-smi) every ``interval_s``, in a thread."""

    def __init__(self, interval_s: float = 0.5):
        self.samples: list[tuple[float, float]] = []
        self._interval_ms = int(interval_s * 1000)
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuSampler":
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 f"-lms={self._interval_ms}"], stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            try:
                self.samples.append((time.time(), float(line.split(",")[0])))
            except ValueError:
                continue

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)

    def busy_share(self, start: float, end: float) -> float | None:
        """Mean utilisation (0..1) of the samples between two times (time.time()); None without samples."""
        inside = [value for t, value in self.samples if start <= t <= end]
        return round(sum(inside) / len(inside) / 100, 3) if inside else None


def linked_inputs(videos: list[Path], copies: int, folder: Path) -> Path:
    """``folder`` holding ``copies`` symbolic links to each video (distinct inputs to the job)."""
    folder.mkdir(parents=True, exist_ok=True)
    for copy in range(copies):
        for video in videos:
            (folder / f"{copy:04d}-{video.name}").symlink_to(video.resolve())
    return folder


def actor_alone(config, weights_path: Path, video: Path, device: str) -> dict:
    """InferenceActor called directly on one video's frames, decoded and resized first: frames/s of the device."""
    from gpu_check import actor_rate, decode_video  # gpu_check's own helper: the same shards as section 6

    from openpose_ray.estimator import prepare_image
    from openpose_ray.models.loading import read_checkpoint
    from openpose_ray.models.registry import get_entry
    from openpose_ray.models.weights import ResolvedWeights
    from openpose_ray.preprocess import resolve_input_spec

    frames = decode_video(video, 512 if device != "cpu" else 8)
    spec = resolve_input_spec(get_entry(config.model.name).input_spec, config.model.net_size, config.model.resize_mode)
    prepared = [prepare_image(frame, spec, spec.net_size, config.model.scales) for frame in frames]
    weights = ResolvedWeights(read_checkpoint(weights_path), sha256_file(weights_path), str(weights_path))
    precision = "fp16" if device != "cpu" else "fp32"
    return {"size": list(spec.net_size), "precision": precision,
            **actor_rate(weights, video, frames, prepared, device, spec.net_size, precision,
                         config.inference.batch_size or (64 if device != "cpu" else 2), config.sources.frames_per_segment,
                         config.inference.compile)}


def job_run(config, sampler: GpuSampler) -> dict:
    """One run of the job: its rates, start-up, stages, and the GPU's busy share over the steady state."""
    started = time.time()
    summary = runner.run_job(config)
    ended = time.time()
    walls = summary["wall_seconds"]
    span = walls["first_result"] + walls["pipeline"]
    pipeline_start = ended - sum(walls.values()) + walls["start"]
    frames = summary["frames"]
    return {"frames": frames, "frames_per_s_steady": round(frames / span, 1),
            "frames_per_s_with_start": round(frames / (ended - started), 1),
            "seconds": round(ended - started, 1), "first_result_s": round(walls["start"] + walls["first_result"], 1),
            "wall_seconds": walls, "tasks_at_once": summary["tasks_at_once"],
            "cpu_seconds_per_stage": summary["stage_seconds"],
            "gpu_busy_share": sampler.busy_share(pipeline_start + walls["first_result"], pipeline_start + span),
            "gpu_busy_share_whole_run": sampler.busy_share(started, ended),
            "people": summary["people"], "precision": summary["inference"]["precision"],
            "decoding": summary["decoding"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="converted weights (openpose-ray weights export)")
    parser.add_argument("--video", required=True, type=Path, action="append", help="a video to annotate (repeatable)")
    parser.add_argument("--copies", type=int, default=150, help="links to each video (default 150: ~65,000 frames)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--decoder", action="append", choices=("cpu", "yuv", "gpu"),
                        help="sources.decoder of a job run and a decode-only run (repeatable; default: cpu, gpu, yuv)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="job config override")
    parser.add_argument("--json", type=Path, help="also write the result here (after each part, so a timeout keeps "
                                                  "what was measured)")
    args = parser.parse_args()
    decoders = args.decoder or ["cpu", "gpu", "yuv"]
    scratch = Path(tempfile.mkdtemp(prefix="gpu-node-"))
    inputs = linked_inputs(args.video, args.copies, scratch / "inputs")
    overrides = [f"input=[{inputs}]", f"output={scratch / 'out'}", "sources.follow_symlinks=true",
                 f"model.weights={args.checkpoint}", f"model.weights_sha256={sha256_file(args.checkpoint)}",
                 "write.render_images=false", "write.render_videos=false",
                 f"inference.device={args.device}", *args.overrides]
    if args.device == "cpu":
        overrides += ["inference.precision=fp32"]
    config = load_config(REPO / "configs" / "gpu-cluster.yaml", overrides)
    runner.init_ray(config)
    import ray

    def with_decoder(decoder: str):
        return dataclasses.replace(config, output=str(scratch / f"out-{decoder}"),
                                   sources=dataclasses.replace(config.sources, decoder=decoder))

    result = {"device": args.device, "cpus": ray.cluster_resources().get("CPU", 0),
              "inputs": len(args.video) * args.copies, "jobs": {}, "decode_only": {}}

    def report(part: str) -> None:
        print(f"GPU_NODE_PART {part} " + json.dumps(result), flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")

    with GpuSampler() as sampler:
        for decoder in decoders:
            result["jobs"][decoder] = job_run(with_decoder(decoder), sampler)
            report(f"job {decoder}")
    for decoder in decoders:
        result["decode_only"][decoder] = decode_only(with_decoder(decoder))
        report(f"decode-only {decoder}")
    result["actor_alone"] = actor_alone(config, args.checkpoint, args.video[0], args.device)
    for decoder, job in result["jobs"].items():
        job["over_decode_only"] = round(job["frames_per_s_steady"] / result["decode_only"][decoder]["frames_per_s"], 3)
        job["over_actor_alone"] = round(job["frames_per_s_steady"] / result["actor_alone"]["frames_per_s"], 3)
    report("actor alone")
    print("GPU_NODE " + json.dumps(result))
    if os.environ.get("GPU_NODE_KEEP") is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
