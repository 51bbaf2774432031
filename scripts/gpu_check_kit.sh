#!/usr/bin/env bash
# Packs what benchmarks/gpu_check.py needs on a GPU machine without network, Ray, PyAV,
# boto3 or pycocotools (ours: Python 3.12 with torch, OpenCV, numpy, pyarrow) into .gpu/ of
# the repository (git-ignored), to copy there with the checkout:
#   .gpu/mobilenet_thin.pt        the converted default weights (openpose-ray weights export)
#   .gpu/coco_val2017_mini/       the 4 labelled photos and their annotations
#   .gpu/street_720p_h264.avi     a video for the inference actor (and the host's decode timing)
#   .gpu/sports_994p_vp9.mp4      a second video for the host's decode timing (VP9, 1080-wide)
#   .gpu/wheels/                  pycocotools for CPython 3.12 (manylinux x86_64), for COCO AP
#   .gpu/baseline/                the code before issue 24 (BASELINE below): its actor, measured in the same run
#   .gpu/run.sh                   the command for the GPU machine: bash .gpu/run.sh RESULTS_DIR
# Then run, on the GPU machine, in the repository, `bash .gpu/run.sh DIR` (under 9 minutes: the
# baseline's actor ~1 minute, then gpu_check.py); record its output in docs/benchmarks.md (current) and docs/benchmarks-history.md (the log).
#
#   bash scripts/gpu_check_kit.sh [DATA_DIR] [PYTHON_VERSION]   (defaults ../shared/data, 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
PY="${2:-3.12}"
BASELINE=45d3911  # the last commit before issue 24's GPU work (tidy graph, compile, pipelined actor, fixed peaks)
KIT=.gpu
rm -rf "$KIT" && mkdir -p "$KIT/wheels"
.venv/bin/openpose-ray weights export --to "$KIT/mobilenet_thin.pt" >/dev/null
cp -r --no-preserve=mode "$DATA/coco_val2017_mini" "$KIT/"
cp --no-preserve=mode "$DATA/videos/street_720p_h264.avi" "$DATA/videos/sports_994p_vp9.mp4" "$KIT/"
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$KIT/wheels" pycocotools
mkdir -p "$KIT/baseline" && git archive "$BASELINE" openpose_ray benchmarks | tar -x -C "$KIT/baseline"
cat > "$KIT/run.sh" <<'EOF'
# On the GPU machine, from the repository: bash .gpu/run.sh RESULTS_DIR (made by scripts/gpu_check_kit.sh)
set -u
RESULTS=$(realpath "${1:?results folder}")
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi -L
KIT=$(realpath .gpu)
ARGS=(--checkpoint "$KIT/mobilenet_thin.pt" --photos "$KIT/coco_val2017_mini")
# the baseline first (the actor of the code before issue 24, eager, every precision), then today's code
(cd "$KIT/baseline" && timeout 120 python3 benchmarks/gpu_check.py "${ARGS[@]}" --video "$KIT/street_720p_h264.avi" \
    --sections 6 --json "$RESULTS/baseline.json" 2>&1 | tee "$RESULTS/baseline.log")
timeout 430 python3 benchmarks/gpu_check.py "${ARGS[@]}" --video "$KIT/street_720p_h264.avi" "$KIT/sports_994p_vp9.mp4" \
    --budget-s 240 --json "$RESULTS/gpu_check.json" 2>&1 | tee "$RESULTS/gpu_check.log"
EOF
du -sh "$KIT"
echo "on the GPU machine: bash .gpu/run.sh RESULTS_DIR   (with the device tool: bash .gpu/run.sh \$OUT, carry .gpu)"
