"""The inference engine's traffic between host and device: pinned buffers reused, copies beside the compute.

On CUDA:

- :class:`HostRing` hands out pinned host buffers for the chunks' uint8 inputs, ``depth`` per
  shape, in turn, across chunks and calls (shards): no chunk allocates or pins memory. A buffer is
  handed out again once the device has read it (the event of its copy), which for a ring of 3 is
  long past: chunk k+3 is stacked while chunk k+1 runs.
- :meth:`Transfers.stacked` stacks a chunk's frames into such a buffer and hands it to
  :meth:`Transfers.to_device`, which copies on a stream of its own, so a chunk's input travels while the
  previous chunk computes; the compute stream waits for the copy's event, not for the host.
- :meth:`Transfers.to_host` queues the copies of a chunk's results into pinned memory on the
  compute stream, behind the chunk's work, and returns a :class:`Landing`; ``Landing.wait`` is the
  chunk's one synchronisation.

On a CPU the same calls run in order: no pinning, no streams, nothing to wait for.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

# Input shapes whose buffers stay pinned: a job's frames fall into a few geometries (fit's aspect
# buckets x scales); photos of many shapes cycle through these and the oldest are let go.
_MAX_SHAPES = 8


@dataclass
class _Slot:
    buffer: torch.Tensor
    read: torch.cuda.Event | None = None  # the device's read of it (its copy), once queued


class HostRing:
    """Host buffers of uint8 chunk inputs, ``depth`` per shape, reused in turn (pinned where ``pin``)."""

    def __init__(self, pin: bool, depth: int = 3):
        self.pin, self.depth = pin, depth
        self._rings: OrderedDict[tuple, list[_Slot]] = OrderedDict()
        self._turn: dict[tuple, int] = {}
        self.allocated = 0  # buffers made so far (tests: none after the first chunks of a shape)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> _Slot:
        """The next free buffer of ``shape``: waits only for the device's read of its previous contents."""
        key = (tuple(shape), dtype)
        ring = self._rings.setdefault(key, [])
        self._rings.move_to_end(key)
        while len(self._rings) > _MAX_SHAPES:
            _, old = self._rings.popitem(last=False)
            for slot in old:  # pinned memory is freed only when no copy still reads it
                if slot.read is not None:
                    slot.read.synchronize()
        if len(ring) < self.depth:
            ring.append(_Slot(torch.empty(shape, dtype=dtype, pin_memory=self.pin)))
            self.allocated += 1
            self._turn[key] = len(ring) - 1
            return ring[-1]
        turn = self._turn[key] = (self._turn[key] + 1) % self.depth
        slot = ring[turn]
        if slot.read is not None:
            slot.read.synchronize()
            slot.read = None
        return slot


@dataclass
class Landing:
    """Host copies of a chunk's results, queued; :meth:`wait` returns them once the device wrote them."""

    host: list[torch.Tensor]
    done: torch.cuda.Event | None = None
    kept: object = field(default=None)  # what the host tail may still need on the device (exact fallbacks)

    def wait(self) -> list[torch.Tensor]:
        if self.done is not None:
            self.done.synchronize()
        return self.host


class Transfers:
    """Copies between host and ``device`` for the engine (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.inputs = HostRing(pin=self.cuda)
        self._copy_stream = torch.cuda.Stream(device) if self.cuda else None

    def to_device(self, slot: _Slot, rows: int) -> torch.Tensor:
        """The first ``rows`` of a ring buffer on the device, for the compute stream (copied on the copy stream)."""
        host = slot.buffer[:rows]
        if not self.cuda:
            return host.to(self.device)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            on_device = host.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        compute.wait_event(copied)
        on_device.record_stream(compute)  # allocated on the copy stream, used on the compute stream
        slot.read = copied
        return on_device

    def stacked(self, arrays: Sequence[np.ndarray], capacity: int) -> torch.Tensor:
        """``arrays`` (equal shapes and dtype uint8) stacked into the ring's buffer of ``capacity`` rows of their
        shape, then :meth:`to_device`: [len(arrays), *shape] on the device."""
        slot = self.inputs.take((capacity, *arrays[0].shape))
        np.stack(arrays, out=slot.buffer[: len(arrays)].numpy())
        return self.to_device(slot, len(arrays))

    def to_host(self, tensors: list[torch.Tensor], kept: object = None) -> Landing:
        """Queue copies of device tensors into pinned host memory behind the work that makes them."""
        if not self.cuda:
            return Landing([t.cpu() for t in tensors], None, kept)
        host = []
        for tensor in tensors:
            # PyTorch's caching host allocator: pinned blocks come back once their copies are done
            copy = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            copy.copy_(tensor, non_blocking=True)
            host.append(copy)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return Landing(host, done, kept)
