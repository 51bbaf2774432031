#!/usr/bin/env bash
# Packs what benchmarks/gpu_node.py (issue 25: the real Ray job on a GPU machine) needs on a GPU
# machine that has Python 3.12 with torch, OpenCV, numpy, pyarrow, but no network, Ray or PyAV,
# into .kit/ of the repository (git-ignored), to carry with the checkout (~60 MiB in all):
#   .kit/site.tar.xz        Ray (slimmed) and PyAV for CPython 3.12 (../shared/gpu-node/make_kit.sh,
#                           ~4 minutes of one core the first time; kept while it exists), with PyAV
#                           replaced by cuda.lock's (NVDEC needs >= 18; ~4 more minutes, once)
#   .kit/mobilenet_thin.pt  the converted default weights (openpose-ray weights export)
#   .kit/*.avi, *.mp4       the two shared videos, linked 150 times each by the benchmark
#   .kit/run.sh             the command for the GPU machine: bash .kit/run.sh RESULTS_DIR [node | both] (under
#                           10 minutes: node: benchmarks/nvdec_probe.py, then benchmarks/gpu_node.py with
#                           decoders cpu, gpu, yuv; both: issue 24's and 25's headline numbers in one call,
#                           its header says what; .kit/coco_val2017_mini and .kit/wheels (pycocotools) are for it)
#
#   bash scripts/gpu_node_kit.sh [DATA_DIR]     (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
KIT=.kit
mkdir -p "$KIT"
[ -f "$KIT/site.tar.xz" ] || bash ../shared/gpu-node/make_kit.sh "$KIT" 3.12
# sources.decoder gpu needs PyAV >= 18 (openpose_ray/sources/nvdec.py: older ones drop a GPU frame's colour
# matrix, rotation and key-frame flag); make_kit packs av<17, so the kit gets the CUDA lock's PyAV for 3.12
# in its place (the same size; repacking takes ~4 minutes of one core, once)
AV_PIN=$(grep -oE "^av==[0-9.]+ ; python_full_version >= '3.12'" requirements/cuda.lock | sed -E 's/ ;.*//')
if [ -n "$AV_PIN" ] && ! grep -q "^av-${AV_PIN#av==}-" "$KIT/wheels.txt"; then
  WORK=$(mktemp -d)
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$WORK/wheel" "$AV_PIN" 2>&1 | grep -v "^WARNING: Location" || true
  mkdir "$WORK/site" && tar -C "$WORK/site" -xJf "$KIT/site.tar.xz"
  rm -rf "$WORK"/site/av "$WORK"/site/av-*.dist-info "$WORK"/site/av.libs
  (cd "$WORK/site" && python3 -m zipfile -e "$WORK"/wheel/av-*.whl .)
  tar -C "$WORK/site" -cf - . | xz -9e -T1 > "$KIT/site.tar.xz"
  { grep -v "^av-" "$KIT/wheels.txt"; basename "$WORK"/wheel/av-*.whl; } > "$WORK/wheels.txt"
  mv "$WORK/wheels.txt" "$KIT/wheels.txt"
  rm -rf "$WORK"
fi
.venv/bin/openpose-ray weights export --to "$KIT/mobilenet_thin.pt" >/dev/null
cp --no-preserve=mode "$DATA/videos/street_720p_h264.avi" "$DATA/videos/sports_994p_vp9.mp4" "$KIT/"
# for run.sh's "both": benchmarks/gpu_check.py's labelled photos and pycocotools (COCO AP), ~1 MiB
rm -rf "$KIT/coco_val2017_mini" "$KIT/wheels" && cp -r --no-preserve=mode "$DATA/coco_val2017_mini" "$KIT/"
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$KIT/wheels" pycocotools 2>&1 | grep -v "^WARNING: Location" || true
rm -f "$KIT/both.sh"
cat > "$KIT/run.sh" <<'EOF'
# On the GPU machine, from the repository: bash .kit/run.sh RESULTS_DIR [node | both] (scripts/gpu_node_kit.sh),
# under 10 minutes either way:
#   node (default): issue 25 in full: the NVDEC probe, then benchmarks/gpu_node.py with decoders cpu, gpu and
#                   yuv over 120 copies of each video;
#   both:           one loan for issues 24 and 25 (a session's device time fits one such call, not two):
#                   gpu_check sections 1 and 13 (the actor against the model, eager and compiled, batch 1),
#                   the probe, then the job with decoders cpu and gpu over 80 copies.
set -u
RESULTS=$(realpath "${1:?results folder}")
MODE=${2:-node}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
python3 -c "import tarfile; tarfile.open('.kit/site.tar.xz').extractall('/tmp/site')"
# Ray and PyAV from the kit, the project from the checkout (Ray's workers inherit the path)
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L; nproc
if [ "$MODE" = both ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .kit/wheels/*.whl  # pycocotools
  timeout 210 python3 benchmarks/gpu_check.py --checkpoint .kit/mobilenet_thin.pt --photos .kit/coco_val2017_mini \
      --video .kit/street_720p_h264.avi --sections 1,13 --budget-s 60 --json "$RESULTS/gpu_check.json" \
      > "$RESULTS/gpu_check.log" 2>&1; echo "gpu_check exit $?"; tail -c 2500 "$RESULTS/gpu_check.log"
  NODE=(--copies 80 --decoder cpu --decoder gpu); NODE_S=300
else
  NODE=(--copies 120); NODE_S=500
fi
# what the machine offers for decoding on the GPU (PyAV's cuvid decoders, the job's NVDEC way, torchcodec, PyNvVideoCodec)
timeout 40 python3 benchmarks/nvdec_probe.py --video .kit/street_720p_h264.avi --json "$RESULTS/nvdec_probe.json" \
    > "$RESULTS/nvdec_probe.log" 2>&1; tail -c 2000 "$RESULTS/nvdec_probe.log"
timeout "$NODE_S" python3 benchmarks/gpu_node.py --checkpoint .kit/mobilenet_thin.pt --video .kit/street_720p_h264.avi \
    --video .kit/sports_994p_vp9.mp4 "${NODE[@]}" --json "$RESULTS/gpu_node.json" > "$RESULTS/gpu_node.log" 2>&1
echo "gpu_node exit $?"; tail -c 3000 "$RESULTS/gpu_node.log"
EOF
du -sh "$KIT"
echo "on the GPU machine: bash .kit/run.sh RESULTS_DIR   (with the device tool: bash .kit/run.sh \$OUT, carry .kit)"
echo "one loan for issues 24 and 25: bash .kit/run.sh RESULTS_DIR both   (device tool: bash .kit/run.sh \$OUT both)"
