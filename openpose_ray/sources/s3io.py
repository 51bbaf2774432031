"""Reading inputs from local paths and s3:// URIs.

Three ways to read, chosen by the consumer:

* :func:`read_bytes` - the whole object (images);
* :func:`open_stream` - one sequential pass, a single GET for S3 (tar archives);
* :func:`open_uri` - a seekable file (videos: PyAV jumps to the index at the end of an
  MP4 and seeks to key frames). For S3 it reads with ranged GETs of ``block_size``
  bytes and keeps the last ``cache_blocks`` blocks, so a segment of a large remote
  video costs a few blocks, not the whole object.

``expected_version`` is the version recorded at listing time (S3 ETag, or the local
mtime in nanoseconds as a string). When given, a read of a different version raises
:class:`ObjectChanged` instead of silently decoding other content than was planned
(for S3 every GET carries ``If-Match``). A vanished object raises :class:`ObjectMissing`;
one the job may not read (HTTP 403: a policy, or an archived object) :class:`AccessDenied`.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from typing import BinaryIO

from ..jobconfig import S3Config
from ..storage import Location, parse, redact, s3_client
from .errors import AccessDenied, ObjectChanged, ObjectMissing

DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024  # bytes per ranged GET
DEFAULT_CACHE_BLOCKS = 4  # blocks kept by each open reader (LRU)

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_CHANGED_CODES = {"PreconditionFailed", "412"}


def locate(uri: str) -> Location:
    """Like storage.parse, but an s3:// key is taken verbatim: "?" and "#" are legal in keys, not a query."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} has no bucket; expected s3://bucket/prefix")
        return Location("s3", bucket, key)
    return parse(uri)


def read_bytes(uri: str, s3: S3Config, *, expected_version: str | None = None) -> bytes:
    """The whole content of a local file or S3 object."""
    location = locate(uri)
    if location.scheme != "s3":
        with _open_local(location.key, expected_version) as f:
            return f.read()
    try:
        response = s3_client(s3).get_object(Bucket=location.bucket, Key=location.key, **_if_match(expected_version))
        return response["Body"].read()
    except Exception as error:  # botocore errors carry codes, not types
        raise _translate(error, uri) from error


def open_stream(uri: str, s3: S3Config, *, expected_version: str | None = None) -> BinaryIO:
    """A file-like object to read once from start to end (one GET for S3); close it after use."""
    location = locate(uri)
    if location.scheme != "s3":
        return _open_local(location.key, expected_version)
    try:
        response = s3_client(s3).get_object(Bucket=location.bucket, Key=location.key, **_if_match(expected_version))
    except Exception as error:
        raise _translate(error, uri) from error
    return response["Body"]  # botocore StreamingBody: read(n), close()


def open_uri(
    uri: str,
    s3: S3Config,
    *,
    expected_version: str | None = None,
    block_size: int | None = None,
    cache_blocks: int | None = None,
) -> BinaryIO:
    """A seekable binary file: ``open(path, "rb")`` locally, an :class:`S3RangeReader` for S3.

    block_size and cache_blocks default to DEFAULT_BLOCK_SIZE and DEFAULT_CACHE_BLOCKS
    (read when called, so tests can lower them).
    """
    location = locate(uri)
    if location.scheme != "s3":
        return _open_local(location.key, expected_version)
    client = s3_client(s3)
    try:
        head = client.head_object(Bucket=location.bucket, Key=location.key, **_if_match(expected_version))
    except Exception as error:
        raise _translate(error, uri) from error
    return S3RangeReader(
        client,
        location.bucket,
        location.key,
        size=int(head["ContentLength"]),
        etag=head["ETag"].strip('"'),
        block_size=block_size or DEFAULT_BLOCK_SIZE,
        cache_blocks=cache_blocks or DEFAULT_CACHE_BLOCKS,
    )


class S3RangeReader(io.RawIOBase):
    """Read-only, seekable view of one S3 object through ranged GETs pinned to its ETag.

    Reads are served from aligned blocks of ``block_size`` bytes; the ``cache_blocks``
    most recently used blocks are kept. ``requests`` counts the GETs made (for tests and
    benchmarks).
    """

    def __init__(self, client, bucket: str, key: str, *, size: int, etag: str, block_size: int, cache_blocks: int):
        super().__init__()
        if block_size < 1 or cache_blocks < 1:
            raise ValueError(f"block_size ({block_size}) and cache_blocks ({cache_blocks}) must be >= 1")
        self._client, self._bucket, self._key = client, bucket, key
        self.size, self.etag = size, etag
        self._block_size, self._cache_blocks = block_size, cache_blocks
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._position = 0
        self.requests = 0

    @property
    def uri(self) -> str:
        return f"s3://{self._bucket}/{self._key}"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed S3RangeReader")
        end = self.size if size is None or size < 0 else min(self.size, self._position + size)
        parts = []
        while self._position < end:
            index, offset = divmod(self._position, self._block_size)
            block = self._block(index)
            chunk = block[offset : offset + (end - self._position)]
            if not chunk:  # the object is shorter than its HEAD said; the If-Match makes this unexpected
                break
            parts.append(chunk)
            self._position += len(chunk)
        return b"".join(parts)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is not None:
            self._blocks.move_to_end(index)
            return block
        first = index * self._block_size
        last = min(self.size, first + self._block_size) - 1
        try:
            response = self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={first}-{last}", **_if_match(self.etag)
            )
            block = response["Body"].read()
        except Exception as error:
            raise _translate(error, self.uri) from error
        self.requests += 1
        self._blocks[index] = block
        while len(self._blocks) > self._cache_blocks:
            self._blocks.popitem(last=False)
        return block

    def close(self) -> None:
        self._blocks.clear()
        super().close()


def _open_local(path: str, expected_version: str | None) -> BinaryIO:
    try:
        f = open(path, "rb")
    except FileNotFoundError as error:
        raise ObjectMissing(f"object disappeared since it was listed: {path}") from error
    if expected_version:
        mtime_ns = str(os.fstat(f.fileno()).st_mtime_ns)
        if mtime_ns != expected_version:
            f.close()
            raise ObjectChanged(
                f"object changed since it was listed: {path} (mtime_ns {expected_version} when listed, now {mtime_ns})"
            )
    return f


def _if_match(version: str | None) -> dict:
    return {"IfMatch": f'"{version}"'} if version else {}


def _translate(error: Exception, uri: str) -> Exception:
    """botocore's ClientError -> ObjectMissing / ObjectChanged / AccessDenied; anything else is returned as is."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return error
    details = response.get("Error", {})
    code = str(details.get("Code", ""))
    if code in _MISSING_CODES:
        return ObjectMissing(f"object disappeared since it was listed: {redact(uri)}")
    if code in _CHANGED_CODES:
        return ObjectChanged(f"object changed since it was listed (ETag differs): {redact(uri)}")
    if code == "InvalidObjectState":  # HTTP 403 for an object in an archive storage class
        storage_class = details.get("StorageClass") or "an archive storage class"
        return AccessDenied(f"access denied (HTTP 403 InvalidObjectState): {redact(uri)} is archived ({storage_class}); "
                            "restore it before reading it")
    if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403 or code == "AccessDenied":
        reason = code if code and not code.isdigit() else "Forbidden"  # a HEAD's 403 has no body: code "403"
        return AccessDenied(f"access denied (HTTP 403 {reason}): {redact(uri)}; check the credentials of "
                            "the job's workers and the bucket and object policies")
    return error
