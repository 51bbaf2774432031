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
.venv/bin/openpose-ray weights fetch
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
