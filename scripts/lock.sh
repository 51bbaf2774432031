#!/usr/bin/env bash
# Refreshes the lock files: every dependency, transitive ones included, pinned with sha256 hashes.
# Run scripts/check_latest.sh first (it tells whether the newest versions still pass the tests);
# then, from anywhere:
#
#   bash scripts/lock.sh            # every package at the newest version the inputs allow
#   bash scripts/lock.sh --keep     # only what the inputs added or changed; every other pin stays
#
# and commit requirements/*.lock with the tests passing on them (bash .ci/run). It writes:
#
#   requirements/cpu.lock      Linux x86_64, CPython 3.11, PyTorch's CPU build of torch: CI, the
#                              developers' machines and CPU-only Linux machines on that Python.
#   requirements/cuda.lock     any OS and CPU, CPython >= 3.10 (environment markers): the package
#                              index's torch, a CUDA build on Linux (GPU nodes), CPU on macOS.
#   requirements/opencv4.lock  .venv-cv4: OpenCV 4 and numpy, the tests' independent runtime.
#
# Inputs: pyproject.toml (dependencies and the test extra), requirements/build.in (the build
# backend), requirements/opencv4.in, and TORCH_VERSION below: the torch both locks take (raise it
# here, not in pyproject.toml). Both locks pin the same version of every package they share.
# The locks are resolved with uv (UV_VERSION, installed into .venv-lock) from the package index
# (UV_INDEX_URL for a mirror). PyTorch's CPU wheel comes from $TORCH_CPU_FIND_LINKS or pip's
# find-links folder where that holds torch-$TORCH_VERSION+cpu, otherwise from PyTorch's CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="2.13.0"
CPU_PYTHON="3.11"
UV_VERSION="0.13.9"
PYTHON="${PYTHON:-python3}"

if ! .venv-lock/bin/uv --version 2>/dev/null | grep -q " $UV_VERSION"; then
    "$PYTHON" -m venv .venv-lock
    .venv-lock/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
UV=.venv-lock/bin/uv
work=.venv-lock/inputs  # a stable path: the locks' "via" comments name these files
mkdir -p "$work"
UPGRADE=(--upgrade)
[ "${1:-}" = --keep ] && UPGRADE=()  # uv keeps the pins of the existing lock files where they still fit
COMMON=(--generate-hashes "${UPGRADE[@]}" --quiet --custom-compile-command "bash scripts/lock.sh")
INPUTS=(pyproject.toml requirements/build.in --extra test)

echo "torch==$TORCH_VERSION" > "$work/torch.txt"
"$UV" pip compile "${INPUTS[@]}" "${COMMON[@]}" --universal --python-version 3.10 --constraint "$work/torch.txt" \
    -o requirements/cuda.lock

# The CPU lock takes the CUDA lock's versions (constraints), torch's CPU build instead of its
# own (override: the CPU build has no nvidia-* dependencies).
find_links="${TORCH_CPU_FIND_LINKS:-${PIP_FIND_LINKS:-$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)}}"
if [ -n "$find_links" ] && ls "$find_links"/torch-"$TORCH_VERSION"+cpu-cp"${CPU_PYTHON/./}"-*.whl >/dev/null 2>&1; then
    CPU_TORCH=(--find-links "$find_links")
else
    CPU_TORCH=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi
echo "torch==$TORCH_VERSION+cpu" > "$work/torch-cpu.txt"
grep -E '^[A-Za-z0-9]' requirements/cuda.lock | sed 's/ \\$//' > "$work/cuda-pins.txt"
"$UV" pip compile "${INPUTS[@]}" "${COMMON[@]}" "${CPU_TORCH[@]}" --python-version "$CPU_PYTHON" \
    --python-platform x86_64-manylinux_2_28 --constraint "$work/cuda-pins.txt" --override "$work/torch-cpu.txt" \
    -o requirements/cpu.lock

"$UV" pip compile requirements/opencv4.in "${COMMON[@]}" --universal --python-version 3.10 -o requirements/opencv4.lock
echo "wrote requirements/cpu.lock ($(grep -cE '^[A-Za-z0-9]' requirements/cpu.lock) packages)," \
     "requirements/cuda.lock ($(grep -cE '^[A-Za-z0-9]' requirements/cuda.lock))," \
     "requirements/opencv4.lock ($(grep -cE '^[A-Za-z0-9]' requirements/opencv4.lock))"
