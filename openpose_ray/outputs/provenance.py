"""Where a result came from: run, model, weights, settings and code, stored with every Parquet file.

Each file written by :class:`~openpose_ray.outputs.writer.ShardWriter` carries a
:class:`Provenance` as JSON in its Parquet schema metadata under the key
``openpose_ray.provenance``, so a file copied away from its run still says how
it was made::

    import pyarrow.parquet as pq
    Provenance.from_metadata(pq.read_schema(path).metadata)
"""

from __future__ import annotations

import dataclasses
import hashlib
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass

PROVENANCE_METADATA_KEY = b"openpose_ray.provenance"


@dataclass(frozen=True)
class Provenance:
    """The facts that identify how a table was produced (plain values: picklable, hashable).

    run_id: identifier of the run (shared by all shards of one job).
    model: registry name of the network (e.g. "mobilenet_thin").
    weights_sha256: sha256 (hex) of the weights file that was loaded.
    net_size: (width, height) of the network input in pixels (fit: only the height counts).
    scales: input scales averaged before grouping.
    resize_mode: "fit" (aspect ratio kept, padded) or "stretch".
    code_version: version of openpose_ray (package version or git describe).
    config_fingerprint: hash of the job settings that change results.
    created_at: start of the run, ISO 8601 in UTC ("2024-05-01T12:00:00+00:00" or "...Z").
    """

    run_id: str
    model: str
    weights_sha256: str
    net_size: tuple[int, int]
    scales: tuple[float, ...]
    code_version: str
    config_fingerprint: str
    created_at: str
    resize_mode: str = "stretch"  # "fit" or "stretch"; files written before fit existed were stretch

    def __post_init__(self) -> None:
        # JSON gives lists back; keep the fields hashable tuples whatever the caller passed.
        object.__setattr__(self, "net_size", tuple(int(v) for v in self.net_size))
        object.__setattr__(self, "scales", tuple(float(v) for v in self.scales))
        if len(self.net_size) != 2:
            raise ValueError(f"provenance net_size must be (width, height), got {self.net_size}")
        created = _parse_iso(self.created_at)
        if created.utcoffset() != dt.timedelta(0):
            raise ValueError(
                f"provenance created_at must be in UTC (offset +00:00 or 'Z'), got {self.created_at!r}; "
                "use utc_now_iso()"
            )

    @property
    def generation(self) -> str:
        """16 hex digits identifying how results are made: model, weights sha256 and the
        result-changing settings. Runs of one generation over the same input give the same rows."""
        text = json.dumps([self.model, self.weights_sha256, self.config_fingerprint])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def run_date(self) -> str:
        """UTC date of ``created_at`` as YYYY-MM-DD."""
        return _parse_iso(self.created_at).date().isoformat()

    def to_metadata(self) -> dict[bytes, bytes]:
        """Parquet schema metadata: {b"openpose_ray.provenance": JSON of the fields}."""
        return {PROVENANCE_METADATA_KEY: json.dumps(dataclasses.asdict(self), sort_keys=True).encode()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[bytes, bytes] | None) -> "Provenance":
        """The inverse of :meth:`to_metadata`; ``metadata`` is e.g. ``pq.read_schema(path).metadata``."""
        if not metadata or PROVENANCE_METADATA_KEY not in metadata:
            keys = sorted(k.decode(errors="replace") for k in (metadata or {}))
            raise KeyError(
                f"no {PROVENANCE_METADATA_KEY.decode()!r} in the schema metadata (keys: {keys}); "
                "was the file written by openpose_ray's ShardWriter?"
            )
        fields = json.loads(metadata[PROVENANCE_METADATA_KEY])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"provenance metadata has unknown fields {unknown}; written by a newer openpose_ray?")
        return cls(**fields)


def utc_now_iso() -> str:
    """The current time as ISO 8601 UTC with seconds, e.g. "2024-05-01T12:00:00+00:00"."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _parse_iso(text: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"provenance created_at must be an ISO 8601 UTC time, got {text!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"provenance created_at {text!r} has no time zone; append '+00:00' (UTC)")
    return parsed
