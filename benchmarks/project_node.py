"""Which side limits a GPU node, and its frames per dollar, from one run of benchmarks/gpu_node.py.

Reads the JSON that gpu_node.py writes (one GPU machine: its CPUs, its GPU, the job per
``sources.decoder``, decode-only, the actor alone) and projects, per decoder, for node types:

- CPU side: (vCPUs - 1) x the rate one CPU sustains for the job's CPU stages, from the job's own
  task seconds (decode + resize + post-processing + write, summed over the run, per frame); one
  vCPU is left to Ray and the driver;
- GPU side: GPUs x the measured machine's actor-alone rate, for the node types whose GPU is the
  measured kind (``--gpu-kind``, e.g. H100: the same rate is taken for H200, which has more
  memory bandwidth, so it errs low); other GPUs are not measured, and their rows say so;
- the limit (the smaller side), frames/s, and frames per dollar at ``--price`` (AWS us-east-1 on-demand
  list prices as this project has used them since 2026-11-30, not re-checked here: no network).

The measured machine's own job rate (steady state) is printed beside it, as the check of the model.

    python benchmarks/project_node.py gpu_node.json [--gpu-kind H100] [--price g5.2xlarge=1.212 ...]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

CPU_STAGES = ("decode", "resize", "post", "write")  # the job's CPU stages (task seconds in the summary)


@dataclass(frozen=True)
class NodeType:
    name: str
    vcpus: int
    gpus: int
    gpu: str
    dollars_per_hour: float


NODES = (NodeType("g6.xlarge", 4, 1, "L4", 0.8048), NodeType("g5.2xlarge", 8, 1, "A10G", 1.212),
         NodeType("p5.48xlarge", 192, 8, "H100", 55.04))


def per_cpu_rate(job: dict) -> float:
    """Frames/s one CPU sustains for the job's CPU stages (their task seconds per frame, inverted)."""
    seconds = sum(job["cpu_seconds_per_stage"].get(stage, 0.0) for stage in CPU_STAGES)
    return job["frames"] / seconds if seconds > 0 else float("inf")


def project(measured: dict, gpu_kind: str, nodes=NODES) -> list[dict]:
    """One row per (node type, decoder): each side's frames/s, the limit, frames per dollar."""
    gpu_rate = measured["actor_alone"]["frames_per_s"]
    rows = []
    for decoder, job in measured["jobs"].items():
        cpu_rate = per_cpu_rate(job)
        for node in nodes:
            cpu_side = (node.vcpus - 1) * cpu_rate
            gpu_side = node.gpus * gpu_rate if node.gpu == gpu_kind else None
            limit = round(cpu_side if gpu_side is None else min(cpu_side, gpu_side))
            rows.append({"node": node.name, "gpus": f"{node.gpus} {node.gpu}", "decoder": decoder,
                         "cpu_side": round(cpu_side), "gpu_side": None if gpu_side is None else round(gpu_side),
                         "limited_by": ("CPUs" if gpu_side is None or cpu_side < gpu_side else "GPUs"),
                         "frames_per_s": limit, "at_most": gpu_side is None,
                         "dollars_per_hour": node.dollars_per_hour,
                         "frames_per_dollar": round(limit * 3600 / node.dollars_per_hour)})
    return rows


def markdown(measured: dict, rows: list[dict], gpu_kind: str) -> str:
    lines = [f"Measured on one machine: {measured['cpus']:g} CPUs, device {measured['device']} ({gpu_kind}); "
             f"actor alone {measured['actor_alone']['frames_per_s']:g} frames/s.", ""]
    for decoder, job in measured["jobs"].items():
        lines.append(f"- decoder {decoder}: the job ran at {job['frames_per_s_steady']:g} frames/s (steady), "
                     f"GPU busy {job['gpu_busy_share']}; CPU stages {1000 / per_cpu_rate(job):.2f} CPU ms a frame "
                     f"= {per_cpu_rate(job):.1f} frames/s per CPU")
    lines += ["", "| node | decoder | CPU side | GPU side | limit | frames/s | $/h | frames per $ |",
              "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        gpu = "not measured" if row["gpu_side"] is None else f"{row['gpu_side']:,}"
        frames = f"at most {row['frames_per_s']:,}" if row["at_most"] else f"{row['frames_per_s']:,}"
        per_dollar = f"at most {row['frames_per_dollar']:,}" if row["at_most"] else f"{row['frames_per_dollar']:,}"
        lines.append(f"| {row['node']} ({row['gpus']}) | {row['decoder']} | {row['cpu_side']:,} | {gpu} | "
                     f"{row['limited_by']} | {frames} | {row['dollars_per_hour']} | {per_dollar} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("measured", type=Path, help="gpu_node.py's JSON")
    parser.add_argument("--gpu-kind", default="H100", help="what the measured GPU counts as (H100 for an H100 or H200)")
    parser.add_argument("--price", action="append", default=[], help="NODE=DOLLARS_PER_HOUR, replacing the list price")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    prices = dict(item.split("=", 1) for item in args.price)
    nodes = tuple(NodeType(n.name, n.vcpus, n.gpus, n.gpu, float(prices.get(n.name, n.dollars_per_hour)))
                  for n in NODES)
    measured = json.loads(args.measured.read_text())
    rows = project(measured, args.gpu_kind, nodes)
    print(markdown(measured, rows, args.gpu_kind))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
