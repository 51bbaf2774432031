#!/usr/bin/env bash
# Installs the project into the environment of PYTHON from a lock file: every package at the
# version the lock pins, checked against its sha256 (pip --require-hashes), then the project itself
# (editable, built by the locked setuptools: nothing unpinned from the index). One place for these
# steps: scripts/setup.sh runs it for .venv (CI, developers), docker/Dockerfile for the image.
#
#   bash scripts/install_locked.sh PYTHON requirements/cpu.lock|requirements/cuda.lock [all|deps|project]
#
# deps: the lock only; project: the project only (its dependencies already installed); all (default):
# both. The image installs them in two layers, so that a change of the code does not install torch again.
#
# cpu.lock: torch's CPU build comes from pip's find-links folder where it lies there (tried without
# an index, so that nothing is asked of an unreachable server), else from PyTorch's CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:?python interpreter}"
LOCK="${2:?lock file}"
WHAT="${3:-all}"
PIP=("$PYTHON" -m pip --disable-pip-version-check)
case "$WHAT" in all|deps|project) ;; *) echo "install_locked.sh: all, deps or project, not $WHAT" >&2; exit 2;; esac

if [ "$WHAT" = project ]; then
    :
elif [ "$LOCK" = requirements/cpu.lock ]; then
    torch_lock=$(mktemp)
    awk '/^torch==/{keep=1; print; next} keep && /^ /{print; next} {keep=0}' "$LOCK" > "$torch_lock"
    if "${PIP[@]}" install --quiet --require-hashes --no-index --no-deps -r "$torch_lock" 2>/dev/null; then
        "${PIP[@]}" install --quiet --require-hashes -r "$LOCK"
    else
        "${PIP[@]}" install --quiet --require-hashes -r "$LOCK" --extra-index-url https://download.pytorch.org/whl/cpu
    fi
    rm -f "$torch_lock"
else
    "${PIP[@]}" install --quiet --require-hashes -r "$LOCK"
fi
[ "$WHAT" = deps ] || "${PIP[@]}" install --quiet --no-deps --no-build-isolation -e .
