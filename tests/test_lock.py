"""One writer per output: the lock on a local folder and on S3 (moto, which honours If-None-Match / If-Match)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from openpose_ray.jobconfig import S3Config
from openpose_ray.outputs.lock import LOCK, LockHeld, LockInfo, LockLost, OutputLock


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path, monkeypatch):
    """An output root and the S3Config to reach it; reads and writes of its lock object."""
    if request.param == "local":
        path = tmp_path / "out"
        return str(path), S3Config(), (lambda: (path / LOCK).read_bytes() if (path / LOCK).exists() else None), \
            (lambda data: ((path / LOCK).parent.mkdir(parents=True, exist_ok=True), (path / LOCK).write_bytes(data)))
    import boto3
    from botocore.exceptions import ClientError

    endpoint = request.getfixturevalue("moto_s3")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"lock-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    client.create_bucket(Bucket=bucket)

    def read():
        try:
            return client.get_object(Bucket=bucket, Key=f"out/{LOCK}")["Body"].read()
        except ClientError:
            return None

    return f"s3://{bucket}/out", S3Config(endpoint_url=endpoint), read, \
        (lambda data: client.put_object(Bucket=bucket, Key=f"out/{LOCK}", Body=data))


def foreign_lock(*, host: str, pid: int, heartbeat_age_s: float, run_id: str = "run-elsewhere") -> bytes:
    beat = datetime.now(timezone.utc) - timedelta(seconds=heartbeat_age_s)
    return LockInfo(run_id, host, pid, 0.0, beat.isoformat(timespec="seconds"), beat.isoformat(timespec="seconds"),
                    "t" * 32).to_bytes()


def test_a_second_run_is_refused_naming_the_holder_and_gets_the_lock_once_it_is_released(output):
    root, s3, read, _ = output
    first = OutputLock(root, s3, "run-1")
    first.acquire()
    holder = json.loads(read())
    assert (holder["run_id"], holder["host"]) == ("run-1", socket.gethostname())
    started = time.monotonic()
    with pytest.raises(LockHeld) as refused:
        OutputLock(root, s3, "run-2").acquire()
    assert time.monotonic() - started < 5
    message = str(refused.value)
    assert "run run-1" in message and socket.gethostname() in message and "--break-lock" in message
    with pytest.raises(LockHeld, match="run-1"):
        OutputLock(root, s3, "run-2").check_takeable()  # what a run checks before waiting for its actors
    first.release()
    assert read() is None
    OutputLock(root, s3, "run-2").check_takeable()  # free: passes, and writes nothing
    assert read() is None
    with OutputLock(root, s3, "run-2") as second:
        assert json.loads(read())["run_id"] == "run-2"
        second.check()
    assert read() is None


def test_the_lock_of_a_killed_run_on_this_host_is_taken_over_at_once(output):
    root, s3, read, write = output
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write(foreign_lock(host=socket.gethostname(), pid=int(gone.stdout), heartbeat_age_s=5))
    with OutputLock(root, s3, "run-next"):
        assert json.loads(read())["run_id"] == "run-next"


def test_a_lock_from_another_host_is_stale_only_after_its_heartbeat_stops(output):
    root, s3, read, write = output
    write(foreign_lock(host="gpu-node-7", pid=1, heartbeat_age_s=60))
    with pytest.raises(LockHeld, match="gpu-node-7"):
        OutputLock(root, s3, "run-next", stale_after_s=300).acquire()
    assert json.loads(read())["host"] == "gpu-node-7"
    write(foreign_lock(host="gpu-node-7", pid=1, heartbeat_age_s=301))
    with OutputLock(root, s3, "run-next", stale_after_s=300):
        assert json.loads(read())["run_id"] == "run-next"


def test_break_lock_takes_a_live_lock_and_the_former_holder_refuses_to_finalize(output):
    root, s3, read, _ = output
    holder = OutputLock(root, s3, "run-1", heartbeat_s=0.2)
    holder.acquire()
    with OutputLock(root, s3, "run-2", break_lock=True):
        assert json.loads(read())["run_id"] == "run-2"
        time.sleep(0.6)  # the holder's heartbeat sees it
        with pytest.raises(LockLost, match="run-2"):
            holder.check()
        holder.release()  # never deletes a lock that is no longer its own
        assert json.loads(read())["run_id"] == "run-2"


def test_the_heartbeat_renews_the_lock(output):
    root, s3, read, _ = output
    with OutputLock(root, s3, "run-1", heartbeat_s=0.3):
        first = json.loads(read())["heartbeat_at"]
        time.sleep(1.5)  # heartbeat_at has whole seconds
        assert json.loads(read())["heartbeat_at"] > first


def test_a_local_take_over_of_a_lock_renewed_meanwhile_loses_and_leaves_it(tmp_path):
    """Two runs found the same stale lock: the one whose view is out of date gets nothing and breaks nothing."""
    from openpose_ray.outputs.lock import _LocalStore

    store = _LocalStore(str(tmp_path / "_manifest" / "lock"))
    assert store.create(b"renewed by its holder") is not None
    assert store.create(b"second") is None  # exclusive
    assert store.replace(b"taker", expected=b"what the taker read before") is None
    assert store.read()[0] == b"renewed by its holder"
    assert sorted(p.name for p in (tmp_path / "_manifest").iterdir()) == ["lock"]  # nothing left aside
    assert store.replace(b"taker", expected=b"renewed by its holder") == "created"
    assert store.read()[0] == b"taker"
