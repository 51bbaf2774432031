#!/usr/bin/env bash
# Drift check: would the newest versions that pyproject.toml allows still work? Builds a throw-away
# venv with them (no lock; pip's machine configuration ignored: no version caps, no local wheel
# folders), converts the default weights with them into a throw-away cache, prints which versions
# differ from requirements/cpu.lock, and runs the fast part of the suite. Run it before every lock
# refresh (scripts/lock.sh; docs/install.md). From anywhere:
#
#   bash scripts/check_latest.sh [extra pytest arguments]
#
#   CHECK_LATEST_TORCH=newest|locked  newest (default): the newest torch pyproject.toml allows (on
#                                     Linux the package index's is a CUDA build: several GB);
#                                     locked: requirements/cpu.lock's torch, the rest newest
#   KEEP=1                            keep the venv (its path is printed)
#   PYTHON=python3.11                 interpreter for the venv
# Exit code: pytest's (0: the newest versions pass the fast tests).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
torch_pin=""
work=$(mktemp -d /tmp/check_latest.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
echo "throw-away venv: $work/venv"

# The fast part of the suite: the estimator, models, weights and parity, post-processing, decoding,
# tables, exports, CLI and the lock; not the Ray job, fault-injection or accuracy tests (.ci/run has them).
FAST_TESTS=(
    tests/test_tensorflow_graph.py tests/test_weights.py tests/test_mobilenet_thin.py tests/test_body25.py
    tests/test_cmu_model.py tests/test_estimator.py tests/test_postprocess.py tests/test_preprocess.py
    tests/test_device_peaks.py tests/test_render.py tests/test_media.py tests/test_sources.py
    tests/test_people_table.py tests/test_tracking.py tests/test_config_loader.py tests/test_backends.py
    tests/test_cli.py tests/test_requirements_lock.py tests/test_stage_records.py tests/test_tar_bounds.py
    tests/test_mobilenet_thin_tidy.py tests/test_compile.py
)

"$PYTHON" -m venv "$work/venv"
pip_clean() {  # the machine's pip.conf / PIP_* settings (caps, find-links, mirrors) do not apply here
    env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
        "$work/venv/bin/python" -m pip --disable-pip-version-check "$@"
}
pip_clean install --quiet --upgrade pip
if [ "${CHECK_LATEST_TORCH:-newest}" = locked ]; then
    awk '/^torch==/{keep=1; print; next} keep && /^ /{print; next} {keep=0}' requirements/cpu.lock > "$work/torch.lock"
    torch_pin=$(head -1 "$work/torch.lock" | sed 's/ .*//')
    # torch's CPU build: from this machine's find-links folder if it is there, else PyTorch's CPU index
    if ! "$work/venv/bin/python" -m pip install --quiet --no-index --no-deps --require-hashes -r "$work/torch.lock" 2>/dev/null; then
        pip_clean install --quiet --require-hashes --no-deps -r "$work/torch.lock" --extra-index-url https://download.pytorch.org/whl/cpu
    fi
    echo "$torch_pin" > "$work/torch-constraint.txt"  # and kept there by the upgrade below
    echo "torch kept at the lock's $torch_pin"
fi
pip_clean install --quiet --upgrade --upgrade-strategy eager -e ".[test]" \
    ${torch_pin:+-c "$work/torch-constraint.txt"}

# Which versions differ from the lock.
"$work/venv/bin/python" - <<'PY'
import importlib.metadata, re
from packaging.version import Version
locked = {}
for match in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\\n]+)", open("requirements/cpu.lock").read(), re.M):
    locked[match[1].lower().replace("_", "-")] = match[2]
newer, older = [], []
for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"].lower().replace("_", "-")
    if name in locked and Version(dist.version) != Version(locked[name]):
        (newer if Version(dist.version) > Version(locked[name]) else older).append(f"{name} {locked[name]} -> {dist.version}")
print(f"newest allowed vs requirements/cpu.lock: {len(newer)} newer" + (": " + ", ".join(sorted(newer)) if newer else ""))
if older:
    print(f"  older than the lock ({len(older)}): " + ", ".join(sorted(older)))
PY

export OPENPOSE_RAY_CACHE="$work/cache"
# The graph from the user's cache if it is there (no download); converted anew with the newest packages.
graph=$("$work/venv/bin/python" -c "
import os; os.environ.pop('OPENPOSE_RAY_CACHE')
from openpose_ray.models.registry import get_entry; from openpose_ray.models.weights import source_path
print(source_path(get_entry('mobilenet_thin').source))")
target=$("$work/venv/bin/python" -c "
from openpose_ray.models.registry import get_entry; from openpose_ray.models.weights import source_path
print(source_path(get_entry('mobilenet_thin').source))")
if [ -f "$graph" ]; then mkdir -p "$(dirname "$target")" && cp "$graph" "$target"; fi
"$work/venv/bin/openpose-ray" weights fetch

status=0
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider "${FAST_TESTS[@]}" "$@" || status=$?
echo "check_latest: pytest exit code $status ($(date -u +%Y-%m-%d), $("$work/venv/bin/python" -c 'import platform; print("CPython", platform.python_version())'))"
exit $status
