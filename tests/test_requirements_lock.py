"""The lock files (requirements/*.lock, made by scripts/lock.sh) satisfy pyproject.toml in every
environment they cover, pin each package once with its sha256, agree with each other, and are what
scripts/setup.sh installed."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "requirements"


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]


def read_lock(path: Path) -> list[Pin]:
    """The pins of a hashed requirements file as uv and pip-compile write it."""
    text = path.read_text()
    pins = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        block = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("#"))
        if not block.strip():
            continue
        head = block.split("\\")[0].strip()
        requirement = Requirement(head)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {head} is not an exact pin"
        pins.append(Pin(canonicalize_name(requirement.name), Version(specifier.version), requirement.marker,
                        tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", block))))
    return pins


def environment(system: str, machine: str, python: str) -> dict[str, str]:
    """Every marker variable of PEP 508 (none left for packaging to fill from the machine running the test)."""
    return {"sys_platform": system, "platform_system": {"linux": "Linux", "darwin": "Darwin", "win32": "Windows"}[system],
            "platform_machine": machine, "python_version": python, "python_full_version": f"{python}.0",
            "implementation_name": "cpython", "implementation_version": f"{python}.0",
            "platform_python_implementation": "CPython", "os_name": "nt" if system == "win32" else "posix",
            "platform_release": "", "platform_version": "", "extra": ""}


def pins_for(pins: list[Pin], env: dict[str, str]) -> dict[str, Pin]:
    chosen: dict[str, Pin] = {}
    for pin in pins:
        if pin.marker is None or pin.marker.evaluate(env):
            assert pin.name not in chosen, f"{pin.name} is pinned twice for {env['sys_platform']} {env['python_version']}"
            chosen[pin.name] = pin
    return chosen


def project_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies, its test extra, and the build backend the lock also installs."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    texts = project["project"]["dependencies"] + project["project"]["optional-dependencies"]["test"]
    texts += [line.split("#")[0].strip() for line in (REQUIREMENTS / "build.in").read_text().splitlines()]
    texts += project["build-system"]["requires"]
    return [Requirement(text) for text in texts if text]


CPU_ENVIRONMENTS = [environment("linux", "x86_64", "3.11")]
CUDA_ENVIRONMENTS = [environment(system, machine, python) for python in ("3.10", "3.11", "3.12", "3.13")
                     for system, machine in (("linux", "x86_64"), ("linux", "aarch64"), ("darwin", "arm64"),
                                             ("win32", "AMD64"))]


@pytest.mark.parametrize("lock, environments", [("cpu.lock", CPU_ENVIRONMENTS), ("cuda.lock", CUDA_ENVIRONMENTS)])
def test_the_lock_satisfies_pyproject_in_every_environment_it_covers(lock, environments):
    pins = read_lock(REQUIREMENTS / lock)
    assert all(pin.hashes for pin in pins), [pin.name for pin in pins if not pin.hashes]
    for env in environments:
        chosen = pins_for(pins, env)
        for requirement in project_requirements():
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
            pin = chosen.get(canonicalize_name(requirement.name))
            assert pin is not None, f"{lock} has no {requirement.name} for {env['sys_platform']} {env['python_version']}"
            assert requirement.specifier.contains(pin.version, prereleases=True), \
                f"{lock}: {pin.name}=={pin.version} does not satisfy pyproject's {requirement}"


def test_the_cpu_lock_is_the_cuda_lock_with_torchs_cpu_build():
    """Same versions on Linux x86_64 / CPython 3.11, except torch (+cpu) and what only the CUDA build needs."""
    env = CPU_ENVIRONMENTS[0]
    cpu, cuda = pins_for(read_lock(REQUIREMENTS / "cpu.lock"), env), pins_for(read_lock(REQUIREMENTS / "cuda.lock"), env)
    assert cpu["torch"].version.local == "cpu" and cuda["torch"].version.local is None
    assert cpu["torch"].version.public == cuda["torch"].version.public
    for name, pin in cpu.items():
        if name != "torch":
            assert name in cuda and cuda[name].version == pin.version, (name, pin.version, cuda.get(name))
    cuda_only = set(cuda) - set(cpu)
    assert cuda_only and all(name.startswith(("nvidia-", "cuda-", "triton")) for name in cuda_only), cuda_only


def test_the_opencv4_lock_is_opencv_4():
    for env in CUDA_ENVIRONMENTS:
        chosen = pins_for(read_lock(REQUIREMENTS / "opencv4.lock"), env)
        assert chosen["opencv-python-headless"].version.major == 4 and "numpy" in chosen


def test_the_locks_name_the_command_that_refreshes_them():
    for lock in ("cpu.lock", "cuda.lock", "opencv4.lock"):
        assert "#    bash scripts/lock.sh" in (REQUIREMENTS / lock).read_text().splitlines()[1]


def test_this_venv_holds_what_the_lock_pins():
    """scripts/setup.sh installs the lock: every package it pins for this machine is there at that version."""
    if Path(sys.prefix).resolve() != (REPO_ROOT / ".venv").resolve():
        pytest.skip(f"not the project's .venv ({sys.prefix}): its packages were not installed from the lock")
    import platform

    env = environment(sys.platform, platform.machine(), f"{sys.version_info.major}.{sys.version_info.minor}")
    torch_version = Version(importlib.metadata.version("torch"))
    lock = "cpu.lock" if torch_version.local == "cpu" and env in CPU_ENVIRONMENTS else "cuda.lock"
    chosen = pins_for(read_lock(REQUIREMENTS / lock), env)
    wrong = {}
    for name, pin in chosen.items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != pin.version:
            wrong[name] = (str(installed), str(pin.version))
    assert not wrong, f"installed vs {lock}: {wrong}"
    # Closed under dependencies: what each installed package declares (with the extras asked of it) is pinned,
    # at a version that satisfies it. pip --require-hashes would refuse a lock that is not.
    todo = [(canonicalize_name(r.name), frozenset(r.extras)) for r in project_requirements()
            if r.marker is None or r.marker.evaluate(env)]
    seen, missing = set(), []
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not any(requirement.marker.evaluate({**env, "extra": extra})
                                                          for extra in {"", *extras}):
                continue
            dependency = canonicalize_name(requirement.name)
            pin = chosen.get(dependency)
            if pin is None or not requirement.specifier.contains(pin.version, prereleases=True):
                missing.append(f"{name} needs {requirement}")
            else:
                todo.append((dependency, frozenset(requirement.extras)))
    assert not missing, missing
