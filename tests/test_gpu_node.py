"""benchmarks/gpu_node.py, the GPU node's end-to-end benchmark, smoke-run on the CPU so it cannot rot
between GPU loans: the real job over linked copies of the shared videos, decode-only over the same
inputs, the actor alone, in one JSON line whose numbers agree with each other."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_gpu_node_benchmark_runs_on_the_cpu(data_dir, tmp_path, capsys):
    from openpose_ray.cli import main

    checkpoint = tmp_path / "mobilenet_thin.pt"
    assert main(["weights", "export", "--to", str(checkpoint)]) == 0
    capsys.readouterr()
    videos = data_dir / "videos"
    result = tmp_path / "gpu_node.json"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_node.py"), "--device", "cpu", "--checkpoint", str(checkpoint),
         "--video", str(videos / "street_720p_h264.avi"), "--video", str(videos / "sports_994p_vp9.mp4"),
         "--copies", "2", "--set", "sources.frame_step=40", "--set", "model.net_size=[128,96]", "--json", str(result)],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    numbers = json.loads(result.read_text())
    assert "GPU_NODE " in done.stdout
    # 205 + 230 frames, every 40th: 6 + 6 per copy, 2 copies of each video; a job and decode-only per decoder
    assert numbers["inputs"] == 4 and set(numbers["jobs"]) == set(numbers["decode_only"]) == {"cpu", "yuv", "gpu"}
    for decoder, job in numbers["jobs"].items():
        assert job["frames"] == numbers["decode_only"][decoder]["frames"] == 24
        planes = decoder != "cpu"  # gpu: no GPU here, so the decode tasks decode on the CPU, saying why (4 shards)
        assert job["decoding"] == {"decoder": decoder, "video_frames_nvdec": 0, "video_frames_yuv": 24 * planes,
                                   "video_frames_bgr": 24 * (not planes),
                                   "not_nvdec": {"no NVIDIA GPU on this node": 4} if decoder == "gpu" else {}}
        assert job["people"] > 0 and job["precision"] == "fp32" and job["gpu_busy_share"] is None  # no nvidia-smi
        assert 0 < job["frames_per_s_with_start"] < job["frames_per_s_steady"]
        assert set(job["cpu_seconds_per_stage"]) >= {"decode", "infer", "post"} and job["first_result_s"] > 0
        assert job["over_decode_only"] > 0 and job["over_actor_alone"] > 0
    assert numbers["actor_alone"]["frames_with_peaks"] == 8 and numbers["actor_alone"]["frames_per_s"] > 0

    # the projection from these numbers (benchmarks/project_node.py): each side, the smaller one, per dollar
    projected = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "project_node.py"), str(result),
                                "--price", "g6.xlarge=1.0", "--json", str(tmp_path / "rows.json")],
                               capture_output=True, text=True, timeout=60, check=False)
    assert projected.returncode == 0, projected.stderr[-2000:]
    assert "| p5.48xlarge (8 H100) | gpu |" in projected.stdout
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {(r["node"], r["decoder"]) for r in rows} == {(n, d) for n in ("g6.xlarge", "g5.2xlarge", "p5.48xlarge")
                                                          for d in ("cpu", "gpu", "yuv")}
    vcpus = {"g6.xlarge": 4, "g5.2xlarge": 8, "p5.48xlarge": 192}
    for row in rows:
        job = numbers["jobs"][row["decoder"]]
        cpu_seconds = sum(job["cpu_seconds_per_stage"][s] for s in ("decode", "resize", "post", "write"))
        assert row["cpu_side"] == round((vcpus[row["node"]] - 1) * job["frames"] / cpu_seconds)
        if row["node"] == "p5.48xlarge":  # the measured GPU counts as an H100 (here: the CPU actor's rate)
            assert row["gpu_side"] == round(8 * numbers["actor_alone"]["frames_per_s"])
            assert row["frames_per_s"] == min(row["cpu_side"], row["gpu_side"])
        else:  # A10G, L4: not measured, the CPU side is an upper bound
            assert row["gpu_side"] is None and row["at_most"] and row["frames_per_s"] == row["cpu_side"]
        price = 1.0 if row["node"] == "g6.xlarge" else row["dollars_per_hour"]
        assert row["frames_per_dollar"] == round(row["frames_per_s"] * 3600 / price)


def test_the_nvdec_probe_reports_without_failing(data_dir, tmp_path):
    """On a machine without a GPU the probe still runs to the end and says what it found."""
    result = tmp_path / "probe.json"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "nvdec_probe.py"), "--video",
                           str(data_dir / "videos" / "street_720p_h264.avi"), "--json", str(result)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(result.read_text())
    assert found["cuda"]["cuda"] is False and found["pyav"]["av"]
    assert set(found["pyav"]["cuvid_decoders"]) == {"h264_cuvid", "hevc_cuvid", "vp9_cuvid", "av1_cuvid"}
    assert {"importable"} <= set(found["torchcodec"]) and {"importable"} <= set(found["PyNvVideoCodec"])
