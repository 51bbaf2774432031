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
