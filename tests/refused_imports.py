"""A subprocess environment in which some top-level modules refuse to be imported.

Stand-ins named like the modules, first on PYTHONPATH, raise ImportError: a
test then runs code in a fresh Python and learns whether any path through it
imports them (test_gpu_check: what the GPU machines lack; test_worker_imports:
torch in the job's CPU stages).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def env_refusing(folder: Path, names: Iterable[str], why: str) -> dict[str, str]:
    """os.environ with PYTHONPATH set to ``folder``, holding one refusing stand-in per name of ``names``.

    why: the end of each ImportError's message, after the module's name.
    """
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.py").write_text(f"raise ImportError({f'{name} {why}'!r})\n")
    return {**os.environ, "PYTHONPATH": str(folder)}
