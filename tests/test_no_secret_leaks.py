"""Credentials never reach logs, summaries, Parquet (data or metadata) or error messages.

The job runs in its own process (so its Ray workers get distinctive credentials
in their environment) against the loopback S3 server, over inputs that produce
error rows (an archived object answering 403, a corrupt image) and with
rendering on; then every byte it left behind (tables, media, summary, report) is searched for the key id and
the secret: its stdout/stderr, every object of its output, and every file of
its Ray session (driver, worker and system logs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY_ID = "AKIAOPENPOSELEAKCHECK"
SECRET = "wJalrXUtnFEMI-openpose-leak-check-9f3b2c"


def test_no_credentials_in_anything_the_job_leaves(moto_s3, labelled_photos):
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1",
                      aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    s3.create_bucket(Bucket="leak")
    s3.put_object(Bucket="leak", Key="in/ok.jpg", Body=labelled_photos[0].read_bytes())
    s3.put_object(Bucket="leak", Key="in/corrupt.jpg", Body=labelled_photos[1].read_bytes()[:5000])
    s3.put_object(Bucket="leak", Key="in/archived.jpg", Body=labelled_photos[2].read_bytes(), StorageClass="GLACIER")

    ray_tmp = Path(tempfile.mkdtemp(prefix="oplk-", dir="/tmp"))  # short: Ray's socket paths are limited
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
               RAY_TMPDIR=str(ray_tmp))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "openpose_ray.cli", "run", "-vv", "--config", str(REPO_ROOT / "configs" / "local.yaml"),
             "--set", "input=[s3://leak/in/]", "--set", "output=s3://leak/out/", "--set", f"s3.endpoint_url={moto_s3}",
             "--set", "write.render_images=true", "--set", "write.render_videos=false", "--set", "model.net_size=[216,184]",
             "--set", "model.resize_mode=stretch"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        summary = json.loads(result.stdout[result.stdout.index("{"):])
        assert summary["frames"] == 3 and summary["frames_failed"] == 2

        places: dict[str, bytes] = {"stdout": result.stdout.encode(), "stderr": result.stderr.encode()}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="leak", Prefix="out/"):
            for obj in page.get("Contents", []):
                places[f"s3://leak/{obj['Key']}"] = s3.get_object(Bucket="leak", Key=obj["Key"])["Body"].read()
        assert any(k.endswith(".parquet") for k in places) and any(k.endswith("summary.json") for k in places)
        assert any(k.endswith("report.html") for k in places)  # the run report (error messages, inputs) too
        logs = [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_socket()]
        assert any(p.suffix in (".out", ".err", ".log") for p in logs), "the Ray session logs were not found"
        for path in logs:
            places[str(path)] = path.read_bytes()

        # The error rows say what went wrong, without the secrets.
        frames = b"".join(v for k, v in places.items() if "/frames/" in k)
        assert b"access denied" in frames and b"truncated" in frames

        leaks = [place for place, data in places.items() if KEY_ID.encode() in data or SECRET.encode() in data]
        assert not leaks, f"credentials found in: {leaks}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
