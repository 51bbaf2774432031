#!/usr/bin/env bash
# Sets up a development/test environment in ./.venv from the lock files, then fetches the default
# pose weights. Every package, transitive ones included, is installed at the version the lock pins
# and checked against its sha256 (pip --require-hashes), so a release of any dependency tomorrow
# changes nothing here (refresh: scripts/lock.sh; docs/install.md). Safe to run again.
#
#   requirements/cpu.lock   CPU machines: Linux x86_64, CPython 3.11, PyTorch's CPU build of torch
#   requirements/cuda.lock  machines with an NVIDIA GPU, and any other OS or Python >= 3.10: the
#                           package index's torch (a CUDA build on Linux: several GB)
#
#   OPENPOSE_RAY_TORCH=auto|cpu|cuda   which lock (default auto: cuda where nvidia-smi sees a GPU)
#   PYTHON=python3.11                  interpreter for the venv (>= 3.10)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VARIANT="${OPENPOSE_RAY_TORCH:-auto}"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

if [ "$VARIANT" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VARIANT=cuda; else VARIANT=cpu; fi
fi
LOCK=requirements/$VARIANT.lock
[ -f "$LOCK" ] || { echo "OPENPOSE_RAY_TORCH=$VARIANT: no $LOCK (cpu or cuda)" >&2; exit 2; }
if [ "$VARIANT" = cpu ] && ! .venv/bin/python -c "import platform, sys; sys.exit(not (sys.platform == 'linux' \
        and platform.machine() == 'x86_64' and sys.version_info[:2] == (3, 11)))"; then
    echo "requirements/cpu.lock is for Linux x86_64 with CPython 3.11; this is $(.venv/bin/python -c \
'import platform; print(platform.system(), platform.machine(), "CPython", platform.python_version())'):" \
         "installing requirements/cuda.lock (the package index's torch; a CUDA build on Linux, several GB)"
    LOCK=requirements/cuda.lock
fi

# The lock, hash-checked, then the project itself (scripts/install_locked.sh: the same steps as the image's).
bash scripts/install_locked.sh .venv/bin/python "$LOCK"

# Optional: Chromium, with which tests/test_report.py looks at the run report in a real headless
# browser (the test is skipped without it). Installed only where apt-get runs as root; never fatal.
if ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        if { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
             || { apt-get update -qq >/dev/null 2>&1 \
                  && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; }; then
            echo "chromium installed (for the report's browser test)"
        else
            echo "chromium could not be installed with apt-get: tests/test_report.py's browser test will be skipped"
        fi
    else
        echo "chromium not found (needs root and apt-get to install): tests/test_report.py's browser test will be skipped"
    fi
fi

# OpenCV 4.x in a venv of its own, from its own lock: its Caffe and TensorFlow importers (OpenCV 5 and
# 5.1 dropped them) are the independent runtime the tests check the networks against (tests/opencv4.py).
# Not fatal here (a test dependency only); the parity tests are skipped without it, and fail under CI.
{ [ -x .venv-cv4/bin/python ] || "$PYTHON" -m venv .venv-cv4; } \
    && .venv-cv4/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/opencv4.lock \
    || echo "OpenCV 4 could not be installed in .venv-cv4: the OpenCV parity tests will be skipped"
.venv/bin/openpose-ray weights fetch
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
