"""benchmarks/gpu_check.py runs where the borrowed GPU machines are: no Ray, PyAV, boto3, YAML or package index.

Run here small on the CPU (``--device cpu --quick``) with those modules
shadowed by stand-ins that refuse to import, the weights exported by
`openpose-ray weights export` and no route to the index, so the script cannot
rot between GPU loans; its numbers are checked where the CPU makes them exact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from refused_imports import env_refusing

REPO_ROOT = Path(__file__).resolve().parent.parent
ABSENT_ON_GPU_MACHINES = ("ray", "av", "boto3", "botocore", "yaml", "tqdm", "moto")


def test_gpu_check_runs_on_the_cpu_without_what_gpu_machines_lack(data_dir, tmp_path, capsys):
    from openpose_ray.cli import main

    checkpoint = tmp_path / "mobilenet_thin.pt"
    assert main(["weights", "export", "--to", str(checkpoint)]) == 0
    capsys.readouterr()
    env = {**env_refusing(tmp_path / "absent", ABSENT_ON_GPU_MACHINES, "is not on the GPU machines"),
           "OPENPOSE_RAY_CACHE": str(tmp_path / "empty-cache"),
           "OPENPOSE_RAY_INDEX_URL": "http://127.0.0.1:9/simple", "PYTHONUNBUFFERED": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # section 13 compiles; the cache stays empty
    result = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
         "--checkpoint", str(checkpoint), "--photos", str(data_dir / "coco_val2017_mini"),
         "--video", str(data_dir / "videos" / "street_720p_h264.avi"), str(data_dir / "videos" / "sports_994p_vp9.mp4"), "--json", str(result)],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    numbers = json.loads(result.read_text())
    fields = numbers["fields_max_abs_diff"]
    assert fields["432x368 fp32"] == {"heatmaps": 0.0, "pafs": 0.0}  # the same arithmetic on the same device
    assert 0 < fields["432x368 bf16"]["heatmaps"] < 0.5  # bf16 really ran, and stayed close
    ap = numbers["coco_ap"]
    assert ap["432x368 fp32"]["peaks_on_cpu"] == ap["432x368 fp32"]["peaks_on_device"] >= 0.55
    assert abs(ap["432x368 bf16"]["peaks_on_device"] - ap["432x368 fp32"]["peaks_on_cpu"]) <= 0.02
    peaks = numbers["device_vs_cpu_peaks"]
    assert peaks["people"] == 12 and peaks["same_people_counts"] and peaks["max_xy_diff_px"] == 0.0
    assert {key for key in numbers["throughput"]} >= {"432x368 fp32 batch 1", "432x368 bf16 batch 2",
                                                      "432x368 fp32 engine peaks batch 2"}
    actor = numbers["actor_on_video"]
    assert actor["frames"] == 8 and actor["432x368 fp32 batch 2"]["frames_with_peaks"] == 8
    loop = numbers["list_vs_loop fp32"]
    assert loop["frames"] == 4 and {"loop", "list batch default"} <= set(loop["peaks on device"])
    hosts = numbers["host_stages_one_thread"]
    assert set(hosts) == {"street_720p_h264.avi", "sports_994p_vp9.mp4"}
    assert hosts["street_720p_h264.avi"]["source"] == "1280x720" and hosts["street_720p_h264.avi"]["decode_ms"] > 0
    assert hosts["street_720p_h264.avi"]["people_per_frame"] > 0  # real frames, people found
    assert {"cmu_body fp32 batch 1", "body_25 fp32 batch 2"} <= set(numbers["openpose_networks"])
    forms = numbers["graph_forms"]
    assert forms["432x368 fp32 batch 2 registered"]["frames_per_s"] > 0
    assert 0 < forms["432x368 fp32 batch 2 tidy-shared"]["max_rel_diff"] < 1e-3  # the same fields
    against = numbers["actor_against_model"]
    row = against["432x368 fp32 batch 2"]
    assert row["model_compiled"] > 0 and row["actor_compile_on_detail"]["frames_with_peaks"] == 8
    assert row["actor_compile_on_detail"]["compile_failed"] == [None, None]  # network and peak finder compiled
    assert row["actor_compile_off"] > 0 and row["actor_over_model"] > 0 and row["syncs_per_chunk"] is None  # CPU
    assert row["peak_finding"]["compile_failed"] is None and row["peak_finding"]["exact_ms"] > 0
    assert against["batch 1"]["compile on"] > 0
    assert not (tmp_path / "empty-cache").exists()
    assert "6. InferenceActor on decoded video frames" in done.stdout
