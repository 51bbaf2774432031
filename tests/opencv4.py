"""OpenCV 4.x's DNN runtime, run from its own venv: the independent runtime the networks are checked against.

OpenCV 5 dropped the Caffe importer and 5.1 the TensorFlow one, and the project itself
reads both formats with protobuf (openpose_ray.models.caffe, .tensorflow_graph). So that
"the PyTorch network equals the original graph" keeps meaning "equals another runtime of
the original file", scripts/setup.sh installs OpenCV 4 from its own lock into `.venv-cv4`,
whatever OpenCV the project's venv has, and the parity tests run the original models there
in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CV4_PYTHON = REPO_ROOT / ".venv-cv4" / "bin" / "python"

_FORWARD = textwrap.dedent("""
    import sys
    import cv2
    import numpy as np
    kind, model, prototxt, inputs, output, layer = sys.argv[1:7]
    net = cv2.dnn.readNetFromCaffe(prototxt, model) if kind == "caffe" else cv2.dnn.readNetFromTensorflow(model)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    results = {}
    with np.load(inputs) as arrays:
        for key in arrays.files:
            net.setInput(arrays[key])
            results[key] = net.forward(layer) if layer else net.forward()
    np.savez(output, **results)
""")


def opencv4_python() -> Path:
    """The Python of `.venv-cv4`; skips the test where it is missing, fails under CI (setup.sh installs it)."""
    problem = None
    if not CV4_PYTHON.exists():
        problem = f"{CV4_PYTHON} is missing: scripts/setup.sh installs OpenCV 4 there"
    else:
        version = subprocess.run([str(CV4_PYTHON), "-c", "import cv2; print(cv2.__version__)"],
                                 capture_output=True, text=True)
        if version.returncode or not version.stdout.startswith("4."):
            problem = f"{CV4_PYTHON} has no OpenCV 4: {version.stdout.strip() or version.stderr.strip()[-200:]}"
    if problem and os.environ.get("CI"):
        pytest.fail(problem, pytrace=False)
    if problem:
        pytest.skip(problem)
    return CV4_PYTHON


def opencv4_forward(python: Path, workdir: Path, kind: str, model: Path, inputs: dict[str, np.ndarray], *,
                    prototxt: Path | None = None, layer: str = "") -> dict[str, np.ndarray]:
    """OpenCV 4's outputs of ``model`` for each of ``inputs`` (float32[1, 3, H, W] each), by the same keys.

    kind: "caffe" (``model`` a .caffemodel, with ``prototxt``) or "tensorflow" (a frozen graph).
    layer: the output to read (default: the network's last layer).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    script, inputs_file, output = workdir / "opencv4_forward.py", workdir / "inputs.npz", workdir / "outputs.npz"
    script.write_text(_FORWARD)
    np.savez(inputs_file, **inputs)
    done = subprocess.run([str(python), str(script), kind, str(model), str(prototxt or ""), str(inputs_file),
                           str(output), layer], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"OpenCV 4 could not run {model}:\n{done.stderr[-3000:]}"
    with np.load(output) as arrays:
        return {key: arrays[key] for key in arrays.files}
