"""Exceptions of the sources stage: an input that cannot be read as it was listed."""

from __future__ import annotations


class SourceError(Exception):
    """An input object could not be listed, planned or read; the message names the input and the problem."""


class ObjectMissing(SourceError):
    """The object was listed but is gone (deleted or renamed) when it is read."""


class ObjectChanged(SourceError):
    """The object was replaced after it was listed (S3 ETag or local mtime differs); its plan no longer applies."""


class AccessDenied(SourceError):
    """The object exists but the job may not read it (HTTP 403): credentials or a policy forbid it, or it is archived."""


class UnreadableVideo(SourceError):
    """A file with a video extension is not a video PyAV can demux, or has no video stream or no frames."""


# --- what kind of failure an error row records -------------------------------------------------

# The frames table's ``error_kind``, one per error row:
ERROR_KINDS = (
    "corrupt",              # the bytes are damaged or not what the name says (bad image, broken tar, bad packet)
    "unsupported",          # readable, but nothing here can annotate it (no video stream, unknown container)
    "too_large",            # over a configured bound (max_image_pixels, max_tar_members, max_tar_bytes)
    "access_denied",        # the store refused to read it (HTTP 403, permissions, an archived object)
    "missing",              # listed, then gone when read (deleted or renamed)
    "changed",              # replaced after it was listed (another version: the next run lists that one)
    "storage_unavailable",  # the store failed through every retry (outage, cut connection, 5xx, throttling)
    "internal",             # a failure of this program, not of the input
)
# Kinds a later run tries again: their cause is outside the input and may be gone by then (an outage
# over, permissions granted, the object back). The others are facts about the input (or a bug that
# would fail it again): re-reading gives the same answer, so they are done once (``--force`` redoes them).
RETRIED_KINDS = frozenset({"access_denied", "missing", "changed", "storage_unavailable"})


def error_kind(error: BaseException) -> str:
    """The :data:`ERROR_KINDS` value for an exception met while reading or decoding an input."""
    from ..retry import is_transient  # noqa: PLC0415 - retry imports storage clients lazily too
    from .images import ImageDecodeError  # noqa: PLC0415 - images imports this module

    for cause in _chain(error):
        if isinstance(cause, AccessDenied) or isinstance(cause, PermissionError):
            return "access_denied"
        if isinstance(cause, (ObjectMissing, FileNotFoundError)):
            return "missing"
        if isinstance(cause, ObjectChanged):
            return "changed"
        if isinstance(cause, ImageDecodeError):
            return cause.kind
        if isinstance(cause, UnreadableVideo):
            return "unsupported"
        if is_transient(cause):
            return "storage_unavailable"
    return "corrupt" if _is_format_error(error) else "internal"


def _chain(error: BaseException):
    """``error`` and the exceptions it was raised from (a reader's failure inside a decoder's)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _is_format_error(error: BaseException) -> bool:
    """Errors of parsers given bad bytes: FFmpeg's (PyAV), tarfile's, the decompressors', an early end."""
    import bz2  # noqa: F401, PLC0415 - OSError subclasses below are theirs
    import gzip  # noqa: PLC0415
    import lzma  # noqa: PLC0415
    import tarfile  # noqa: PLC0415
    import zlib  # noqa: PLC0415

    from_ffmpeg = type(error).__module__.split(".")[0] == "av"
    return from_ffmpeg or isinstance(error, (tarfile.TarError, EOFError, SourceError, zlib.error, gzip.BadGzipFile,
                                             lzma.LZMAError))
