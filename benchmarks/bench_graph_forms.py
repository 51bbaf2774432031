"""mobilenet_thin's forms on the CPU: the registered network against its tidy forms, torch and OpenVINO.

    registered   MobilenetThin as converted (what the engine ran before the tidy form)
    tidy         TidyMobilenetThin, CPU form: no pad copies, folded scales, both branches at once
                 (what InferenceEngine runs on a CPU now)
    tidy-shared  the CUDA form: each stage's input read once, the first pointwise layer doubled

Each form runs on torch (fp32, channels-last, this process's threads) and, converted, on OpenVINO
(fp32); with ``--compile`` the tidy form also through inference.compile (openpose_ray.compiled:
torch.compile with static shapes, inductor; its compile seconds per shape are printed). Printed per input size and batch: ms per frame, the fastest of ``--rounds`` calls with the
forms timed round robin (so load from other processes hits all alike), and the largest relative
difference of each form's fields from the registered network's.

    python benchmarks/bench_graph_forms.py [--rounds 7] [--threads 2] [--sizes 432x368,656x368] [--batches 1,8]
                                           [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import cpu_description  # noqa: E402  (beside this file)

from openpose_ray.backends import openvino_network  # noqa: E402
from openpose_ray.compiled import StaticCompiled  # noqa: E402
from openpose_ray.models.mobilenet_thin import MobilenetThin  # noqa: E402
from openpose_ray.models.mobilenet_thin_tidy import TidyMobilenetThin  # noqa: E402
from openpose_ray.models.registry import get_entry  # noqa: E402
from openpose_ray.models.weights import default_state_dict  # noqa: E402


def _pairs(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=_pairs, default=_pairs("432x368,656x368"), help="WxH,WxH")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--compile", action="store_true", help="also the tidy form through torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    network = MobilenetThin().eval()
    network.load_state_dict(default_state_dict(get_entry("mobilenet_thin")))
    network = network.to(memory_format=torch.channels_last)
    forms = {"registered": network}
    for name, share in (("tidy", False), ("tidy-shared", True)):
        forms[name] = TidyMobilenetThin.from_network(network, share_stage_input=share).to(
            memory_format=torch.channels_last)
    runners = {}
    for name, module in forms.items():
        runners[f"torch {name}"] = module
        start = time.perf_counter()
        runners[f"openvino {name}"] = openvino_network(module, 8, "fp32", args.threads)
        print(f"openvino {name}: converted and compiled in {time.perf_counter() - start:.1f} s", flush=True)
    if args.compile:
        compiled = StaticCompiled(forms["tidy"], torch.device("cpu"))
        runners["torch tidy compiled"] = compiled
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {args.threads} threads; fastest of {args.rounds} rounds")
    generator = torch.Generator().manual_seed(0)
    for width, height in args.sizes:
        for batch in (int(b) for b in args.batches.split(",")):
            x = (torch.rand(batch, 3, height, width, generator=generator) * 255).contiguous(
                memory_format=torch.channels_last)
            best = dict.fromkeys(runners, float("inf"))
            outputs = {}
            with torch.inference_mode():
                for name, run in runners.items():
                    outputs[name] = run(x)  # warm-up, and the fields compared below
                for _ in range(args.rounds):
                    for name, run in runners.items():
                        start = time.perf_counter()
                        run(x)
                        best[name] = min(best[name], (time.perf_counter() - start) * 1000 / batch)
            print(f"{width}x{height}, batch {batch}:")
            for name in runners:
                reference = outputs["openvino registered" if name.startswith("openvino") else "torch registered"]
                difference = max(float((ours - theirs).abs().max() / theirs.abs().max())
                                 for ours, theirs in zip(outputs[name], reference))
                print(f"    {name:22s} {best[name]:7.1f} ms/frame   fields vs registered: {difference:.1e}")
    if args.compile:
        print(f"compile seconds (first call of each shape): {compiled.compile_seconds}; failed: {compiled.failed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
