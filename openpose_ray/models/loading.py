"""Strict, checked loading of PyTorch checkpoints.

A checkpoint either matches the network exactly or loading fails with a message
that names every missing, unexpected and mis-shaped key: a silently skipped key
is a network that quietly runs on random weights.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# How many key names an error message lists before it says "and N more".
_MAX_NAMED_KEYS = 12


class CheckpointMismatchError(ValueError):
    """The keys or shapes of a checkpoint do not match the network."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str], mis_shaped: list[str]):
        self.missing = missing
        self.unexpected = unexpected
        self.mis_shaped = mis_shaped
        parts = []
        if missing:
            parts.append(f"missing keys: {_name_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_name_keys(unexpected)}")
        if mis_shaped:
            parts.append(f"mis-shaped keys: {_name_keys(mis_shaped)}")
        super().__init__(
            f"checkpoint {source} does not match the network ({'; '.join(parts)}). "
            "Check that the checkpoint was made for this architecture (model name) and layout."
        )


def _name_keys(keys: list[str]) -> str:
    named = ", ".join(keys[:_MAX_NAMED_KEYS])
    rest = len(keys) - _MAX_NAMED_KEYS
    return named + (f" and {rest} more" if rest > 0 else "")


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``given`` has exactly the keys and shapes of ``expected``."""
    missing = sorted(k for k in expected if k not in given)
    unexpected = sorted(k for k in given if k not in expected)
    mis_shaped = sorted(
        f"{k} (checkpoint {tuple(given[k].shape)}, network {tuple(expected[k].shape)})"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mis_shaped:
        raise CheckpointMismatchError(source, missing, unexpected, mis_shaped)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy ``state_dict`` into ``model`` after checking every key and shape."""
    check_state_dict(model.state_dict(), state_dict, source=source)
    model.load_state_dict(dict(state_dict), strict=True)


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of all tensors, in name order.

    Unlike a hash of the file, this does not change with the serialisation
    format of the torch version that wrote the checkpoint.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(data: bytes | str | Path, *, source: str | None = None) -> dict[str, torch.Tensor]:
    """Read a ``{name: tensor}`` checkpoint written by ``torch.save``.

    Only tensors are accepted (``weights_only=True``): a checkpoint is data, and
    unpickling arbitrary objects from a user-supplied file would run code. A
    checkpoint saved as ``{"state_dict": {...}}`` is unwrapped.
    """
    label = source or (str(data) if not isinstance(data, bytes) else "<bytes>")
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        loaded = torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ValueError(f"cannot read checkpoint {label}: {exc}") from exc
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"checkpoint {label} is not a mapping of parameter names to tensors")
    return {str(k): v for k, v in loaded.items()}
