#!/usr/bin/env bash
# Packs what benchmarks/gpu_node.py (issue 25: the real Ray job on a GPU machine) needs on a GPU
# machine that has Python 3.12 with torch, OpenCV, numpy, pyarrow, but no network, Ray or PyAV,
# into .kit/ of the repository (git-ignored), to carry with the checkout (~60 MiB in all):
#   .kit/site.tar.xz        Ray (slimmed) and PyAV for CPython 3.12 (../shared/gpu-node/make_kit.sh,
#                           ~4 minutes of one core the first time; kept while it exists)
#   .kit/mobilenet_thin.pt  the converted default weights (openpose-ray weights export)
#   .kit/*.avi, *.mp4       the two shared videos, linked 150 times each by the benchmark
#   .kit/run.sh             the command for the GPU machine: bash .kit/run.sh RESULTS_DIR (under 10 minutes:
#                           benchmarks/nvdec_probe.py, then benchmarks/gpu_node.py)
#
#   bash scripts/gpu_node_kit.sh [DATA_DIR]     (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
KIT=.kit
mkdir -p "$KIT"
[ -f "$KIT/site.tar.xz" ] || bash ../shared/gpu-node/make_kit.sh "$KIT" 3.12
.venv/bin/openpose-ray weights export --to "$KIT/mobilenet_thin.pt" >/dev/null
cp --no-preserve=mode "$DATA/videos/street_720p_h264.avi" "$DATA/videos/sports_994p_vp9.mp4" "$KIT/"
cat > "$KIT/run.sh" <<'EOF'
# On the GPU machine, from the repository: bash .kit/run.sh RESULTS_DIR (made by scripts/gpu_node_kit.sh)
set -u
RESULTS=$(realpath "${1:?results folder}")
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
python3 -c "import tarfile; tarfile.open('.kit/site.tar.xz').extractall('/tmp/site')"
# Ray and PyAV from the kit, the project from the checkout (Ray's workers inherit the path)
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L; nproc
# first, what the machine offers for decoding on the GPU (PyAV's cuvid decoders, torchcodec, PyNvVideoCodec)
timeout 45 python3 benchmarks/nvdec_probe.py --video .kit/street_720p_h264.avi --json "$RESULTS/nvdec_probe.json" \
    > "$RESULTS/nvdec_probe.log" 2>&1; tail -c 2000 "$RESULTS/nvdec_probe.log"
timeout 520 python3 benchmarks/gpu_node.py --checkpoint .kit/mobilenet_thin.pt --video .kit/street_720p_h264.avi \
    --video .kit/sports_994p_vp9.mp4 --copies 150 --json "$RESULTS/gpu_node.json" > "$RESULTS/gpu_node.log" 2>&1
echo "exit $?"; tail -c 3000 "$RESULTS/gpu_node.log"
EOF
du -sh "$KIT"
echo "on the GPU machine: bash .kit/run.sh RESULTS_DIR   (with the device tool: bash .kit/run.sh \$OUT, carry .kit)"
