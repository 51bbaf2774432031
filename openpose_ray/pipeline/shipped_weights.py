"""Weights resolved once by the driver and shipped to the inference actors through the object store.

GPU nodes usually sit in private subnets without a route to the package index
(default weights) or sometimes to the checkpoint's bucket. So the driver, which
runs where the job was started, fetches / converts / reads the weights once
(:func:`openpose_ray.models.weights.resolve_weights`), puts the state dict in
Ray's object store, and every actor takes it from there: no actor touches the
index, the weights cache or S3 for weights. Each actor checks the tensors it
received against the digest the driver computed, so a damaged transfer fails
loudly instead of annotating with wrong weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.loading import state_dict_digest
from ..models.weights import ResolvedWeights
from ..storage import redact


@dataclass(frozen=True)
class ShippedWeights:
    """A handle on weights in the object store; small and picklable, handed to each actor.

    ref: ObjectRef of the state dict ({name: CPU tensor}); digest: its
    ``state_dict_digest``; file_sha256: sha256 of the file they came from
    (provenance); source: how to name them in messages (redacted URI or
    "default weights of NAME").
    """

    ref: Any  # ray.ObjectRef (ray is imported where it is used: the actor class also runs without Ray)
    digest: str
    file_sha256: str | None
    source: str

    @classmethod
    def put(cls, resolved: ResolvedWeights) -> "ShippedWeights":
        """Put resolved weights in the object store (call on the driver, which must keep the handle alive)."""
        import ray

        return cls(ray.put(resolved.state_dict), state_dict_digest(resolved.state_dict), resolved.file_sha256,
                   redact(resolved.source))

    def load(self) -> dict[str, torch.Tensor]:
        """The state dict, checked against the driver's digest."""
        import ray

        state_dict = ray.get(self.ref)
        digest = state_dict_digest(state_dict)
        if digest != self.digest:
            raise ValueError(f"{self.source}: the weights received from the driver have digest {digest}, "
                             f"the driver sent {self.digest}; the transfer was damaged")
        return state_dict
