"""One writer per output: the lock object ``_manifest/lock``.

A run writes into its output only while it holds the lock. Two schedulers
starting the same job, or a retry started while the first attempt still runs,
would otherwise interleave commits and each other's garbage collection
(:func:`.manifest.finalize` deletes the files no record names, which includes
those a concurrent run has written but not yet committed).

The lock is a small JSON object (:class:`LockInfo`: run id, host, process,
start, heartbeat). Taking it:

- local output: exclusive create (``O_CREAT | O_EXCL``);
- S3 output: a conditional PUT, ``If-None-Match: *``: the store refuses to
  overwrite an existing object (AWS S3 since 2024, MinIO, moto, Ceph RGW 19+).
  Stores that ignore the header let a second PUT through; the lock then only
  catches runs that start one after the other (the run reads the lock back and
  stops if it is not its own), not two that start in the same second.

While the run goes on, a thread rewrites the heartbeat every ``HEARTBEAT_S``
(S3: ``If-Match`` on the lock's ETag, so an overwrite by someone else is seen).
The lock is deleted when the run ends, also when it fails.

A lock is *stale*, and the next run takes it over (logging whose it was), when
its holder is gone: on the same host, its process no longer runs (a killed
run); from another host, no heartbeat for ``STALE_AFTER_S`` seconds. Otherwise
the next run stops at once with :class:`LockHeld`, naming the holder; the
``--break-lock`` flag of ``openpose-ray run`` takes the lock whatever its state.
A run whose lock was taken from it (``--break-lock`` elsewhere) finds out at its
next heartbeat and refuses to finalize the output (:class:`LockLost`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from ..jobconfig import S3Config
from ..storage import parse, redact, s3_client

log = logging.getLogger(__name__)

LOCK = "_manifest/lock"
HEARTBEAT_S = 30.0  # how often a running job renews its lock
STALE_AFTER_S = 300.0  # a lock from another host without a heartbeat for this long is taken over


class LockHeld(RuntimeError):
    """Another run holds the output's lock."""


class LockLost(RuntimeError):
    """This run's lock was taken by another run (``--break-lock``) while it was running."""


@dataclass(frozen=True)
class LockInfo:
    """The content of the lock. Times: ISO 8601 UTC; process_started: the holder's process
    start time (seconds since the epoch), which tells a live process from a reused pid."""

    run_id: str
    host: str
    pid: int
    process_started: float
    started_at: str
    heartbeat_at: str
    token: str  # unique per acquisition: what "ours" means when reading the lock back

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LockInfo":
        return cls(**json.loads(data))

    def heartbeat_age_s(self) -> float:
        return time.time() - datetime.fromisoformat(self.heartbeat_at).timestamp()

    def describe(self) -> str:
        return (f"run {self.run_id} on host {self.host} (pid {self.pid}), started {self.started_at}, "
                f"last heartbeat {self.heartbeat_age_s():.0f} s ago")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def holder_is_gone(info: LockInfo, stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why the lock ``info`` is stale, or None while its holder may still run."""
    if info.host == socket.gethostname():
        started = _process_started(info.pid)
        if started is None or abs(started - info.process_started) > 1.0:
            return f"its process {info.pid} no longer runs on this host"
        return None
    if info.heartbeat_age_s() > stale_after_s:
        return f"no heartbeat for {info.heartbeat_age_s():.0f} s (stale after {stale_after_s:.0f} s)"
    return None


class _LocalStore:
    def __init__(self, path: str):
        self.path = path

    def create(self, data: bytes) -> object | None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return "created"

    def read(self) -> tuple[bytes, object] | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return data, data

    def replace(self, data: bytes, expected: object) -> object | None:
        """Overwrite if the lock still holds ``expected``; a rename makes only one of two takers win."""
        aside = f"{self.path}.{uuid.uuid4().hex}.old"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return None
        with open(aside, "rb") as handle:
            changed = handle.read() != expected
        if changed:  # another run renewed or took it since we read it: put it back (unless a third run
            try:     # created one meanwhile: link, unlike rename, never replaces), and we lost
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.remove(aside)
            return None
        os.remove(aside)
        return self.create(data)

    def renew(self, data: bytes, expected: object) -> object | None:
        """Overwrite in place (no moment without a lock) if it still holds ``expected``."""
        current = self.read()
        if current is None or current[1] != expected:
            return None
        temporary = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as out:
            out.write(data)
        os.replace(temporary, self.path)
        return data

    def delete(self, expected: object) -> None:
        current = self.read()
        if current is not None and current[1] == expected:
            os.remove(self.path)
            for folder in (os.path.dirname(self.path), os.path.dirname(os.path.dirname(self.path))):
                try:  # a run that wrote nothing (e.g. no actors came) leaves the output as it found it
                    os.rmdir(folder)
                except OSError:  # not empty: other files are there
                    break


class _S3Store:
    def __init__(self, uri: str, s3: S3Config):
        location = parse(uri)
        self.bucket, self.key, self.client = location.bucket, location.key, s3_client(s3)

    def _put(self, data: bytes, **condition) -> object | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data,
                                              ContentType="application/json", **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return None
            raise
        return response["ETag"]

    def create(self, data: bytes) -> object | None:
        return self._put(data, IfNoneMatch="*")

    def read(self) -> tuple[bytes, object] | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return response["Body"].read(), response["ETag"]

    def replace(self, data: bytes, expected: object) -> object | None:
        return self._put(data, IfMatch=expected)

    renew = replace

    def delete(self, expected: object) -> None:
        current = self.read()
        if current is not None and current[1] == expected:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


class OutputLock:
    """The lock of one output for one run; use as a context manager around everything the run writes.

    break_lock: take the lock even when its holder may still run.
    """

    def __init__(self, output: str, s3: S3Config, run_id: str, *, break_lock: bool = False,
                 stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S):
        uri = parse(output).join(LOCK).uri
        self.uri = uri
        self._store = _S3Store(uri, s3) if parse(uri).scheme == "s3" else _LocalStore(parse(uri).key)
        self._break, self._stale_after_s, self._heartbeat_s = break_lock, stale_after_s, heartbeat_s
        pid = os.getpid()
        self.info = LockInfo(run_id, socket.gethostname(), pid, _process_started(pid) or 0.0, _now(), _now(),
                             uuid.uuid4().hex)
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockHeld`; then start the heartbeat."""
        data = self.info.to_bytes()
        if self._store.create(data) is None:
            self._take_over(data)
        self._confirm()
        self._thread = threading.Thread(target=self._beat, name="openpose-ray-lock-heartbeat", daemon=True)
        self._thread.start()

    def _take_over(self, data: bytes) -> object:
        found = self._store.read()
        if found is None:  # released between our create and read
            version = self._store.create(data)
            if version is not None:
                return version
            found = self._store.read()
        if found is None:
            raise LockHeld(f"the output's lock {redact(self.uri)} keeps changing hands; try again")
        raw, version = found
        holder, why = self._why_takeable(raw)
        taken = self._store.replace(data, version)
        if taken is None:
            raise LockHeld(f"another run took over the stale lock {redact(self.uri)} first")
        log.warning("took over the output's lock from %s: %s", holder.describe() if holder else "an unknown run", why)
        return taken

    def check_takeable(self) -> None:
        """Raise :class:`LockHeld` now if the lock is held by a run that may still go on; writes nothing.

        For a run that must wait before it writes (for its inference actors, on a cold
        cluster): it learns at once that the output is taken, not after the wait.
        """
        found = self._store.read()
        if found is not None:
            self._why_takeable(found[0])

    def _why_takeable(self, raw: bytes) -> tuple[LockInfo | None, str]:
        """(the holder, why its lock may be taken), or raise :class:`LockHeld` naming the holder."""
        try:
            holder = LockInfo.from_bytes(raw)
        except (ValueError, TypeError) as exc:  # not ours to judge: a damaged lock is stale
            return None, f"it is unreadable ({exc})"
        why = "--break-lock" if self._break else holder_is_gone(holder, self._stale_after_s)
        if why is None:
            raise LockHeld(
                f"the output {redact(self.uri.rsplit('/' + LOCK, 1)[0])} is being written by {holder.describe()}. "
                f"Two runs must not write one output. If that run is gone, its lock ({redact(self.uri)}) is taken over "
                f"once {STALE_AFTER_S:.0f} s pass without a heartbeat (at once on the same host), or run again with "
                "--break-lock.")
        return holder, why

    def _not_ours(self, found: tuple[bytes, object] | None) -> str | None:
        """None if ``found`` (a store's read) is this run's lock, else what became of it."""
        if found is None:
            return "the lock was deleted"
        holder = LockInfo.from_bytes(found[0])
        return None if holder.token == self.info.token else f"{holder.describe()} took it"

    def _confirm(self) -> None:
        """Read the lock back: on a store that ignores conditional writes, a later writer shows here."""
        if self._not_ours(self._store.read()) is not None:
            raise LockHeld(f"the output's lock {redact(self.uri)} was overwritten by another run as it was taken "
                           "(does the store ignore If-None-Match?)")

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                found = self._store.read()
                lost = self._not_ours(found)
                if lost is not None:
                    self._lost = lost
                    log.error("this run lost the output's lock: %s; it will not finalize the output", lost)
                    return
                self.info = LockInfo(**{**asdict(self.info), "heartbeat_at": _now()})
                self._store.renew(self.info.to_bytes(), found[1])  # refused: seen as lost at the next beat
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried at the next one
                log.warning("could not renew the output's lock %s: %s", redact(self.uri), exc)

    def check(self) -> None:
        """Raise :class:`LockLost` if the lock is no longer this run's (before finalizing the output)."""
        if self._lost is None:
            self._lost = self._not_ours(self._store.read())
        if self._lost is not None:
            raise LockLost(f"run {self.info.run_id} lost the output's lock ({self._lost}): its committed shards stay, "
                           "but it does not finalize the output; the holder's run will.")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            found = self._store.read()
            if self._not_ours(found) is None:
                self._store.delete(found[1])
        except Exception as exc:  # noqa: BLE001 - a lock left behind goes stale; never hide the run's own error
            log.warning("could not delete the output's lock %s: %s", redact(self.uri), exc)
