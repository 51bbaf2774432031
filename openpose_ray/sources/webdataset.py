"""WebDataset's naming convention for the members of a tar: samples grouped by key.

A WebDataset shard is a plain tar whose members belong to samples: ``0001.jpg``, ``0001.txt``,
``0001.json`` are one sample with key ``0001``; the key is the member's path up to the first dot of
its file name, the rest its extension (``images/0001.seg.png``: key ``images/0001``, extension
``seg.png``). Every image member of a tar is a frame (sources.decoding); its sample's key travels
with it into the tables (``sample_key``), so a pose row joins its sample's other members by key.
Members of other kinds (captions, metadata) are read past, neither frames nor "skipped" inputs.
"""

from __future__ import annotations

import posixpath


def sample_key(member: str | None) -> str | None:
    """The WebDataset key of a tar member's path; None for no member, or a file name without a dot
    or starting with one (no key by the convention)."""
    if member is None:
        return None
    folder, name = posixpath.split(member)
    stem, dot, _ = name.partition(".")
    if not stem or not dot:
        return None
    return posixpath.join(folder, stem) if folder else stem
