#!/usr/bin/env bash
# Sets up a development/test environment in ./.venv: Python dependencies
# (CPU torch on machines without an NVIDIA GPU, CUDA torch on machines with
# one) and the default pose weights. Safe to run again.
#
#   OPENPOSE_RAY_TORCH=auto|cpu|cuda   which torch build (default auto)
#   PYTHON=python3.11                  interpreter for the venv (>= 3.10)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
VARIANT="${OPENPOSE_RAY_TORCH:-auto}"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip

if .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "torch $TORCH_VERSION already installed"
else
    if [ "$VARIANT" = auto ]; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VARIANT=cuda; else VARIANT=cpu; fi
    fi
    if [ "$VARIANT" = cuda ]; then
        # The package index's Linux build of torch is the CUDA one.
        "${PIP[@]}" install --quiet "torch==$TORCH_VERSION"
    # A CPU wheel of this version in pip's configured find-links folder (the
    # --no-index try succeeds only then); its dependencies come from the index.
    elif "${PIP[@]}" install --quiet --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null; then
        "${PIP[@]}" install --quiet "torch==$TORCH_VERSION"
    else
        # PyTorch's CPU wheel index, so a CPU machine does not pull GBs of CUDA.
        "${PIP[@]}" install --quiet "torch==$TORCH_VERSION" --extra-index-url https://download.pytorch.org/whl/cpu
    fi
fi

"${PIP[@]}" install --quiet -e ".[test]"

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

# OpenCV 4.x in a venv of its own: its Caffe importer (OpenCV 5 dropped it) is the independent
# runtime tests/test_caffe_models.py checks the cmu_body and body_25 networks against. Never fatal.
if ! .venv-cv4/bin/python -c "import cv2, sys; sys.exit(not cv2.__version__.startswith('4.'))" 2>/dev/null; then
    "$PYTHON" -m venv .venv-cv4 \
        && .venv-cv4/bin/python -m pip install --quiet --disable-pip-version-check "opencv-python-headless>=4.8,<5" numpy \
        || echo "OpenCV 4 could not be installed in .venv-cv4: tests/test_caffe_models.py's parity tests will be skipped"
fi
.venv/bin/openpose-ray weights fetch
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
