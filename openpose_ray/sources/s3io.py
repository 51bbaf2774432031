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

Every S3 request goes through :func:`~openpose_ray.retry.call_with_retries` (``s3.max_attempts``
attempts): a dropped connection, a 5xx or throttling is retried with backoff, also in the
middle of a body. A whole-object or block read asks for the object again; the sequential
stream of :func:`open_stream` asks for the rest of it, from the first byte not yet returned.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from ..jobconfig import S3Config
from ..retry import call_with_retries
from ..storage import Location, parse, redact, s3_client
from .errors import AccessDenied, ObjectChanged, ObjectMissing

T = TypeVar("T")

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
    client = s3_client(s3)

    def get() -> bytes:  # the body is read inside the retried call: a connection cut mid-body asks again
        response = client.get_object(Bucket=location.bucket, Key=location.key, **_if_match(expected_version))
        return response["Body"].read()

    return _request(get, "GET", uri, s3.max_attempts)


def open_stream(uri: str, s3: S3Config, *, expected_version: str | None = None) -> BinaryIO:
    """A file-like object to read once from start to end; close it after use.

    For S3 an :class:`S3Stream`: one GET, unless the connection drops and the rest is asked for again.
    """
    location = locate(uri)
    if location.scheme != "s3":
        return _open_local(location.key, expected_version)
    return S3Stream(s3_client(s3), location.bucket, location.key, etag=expected_version, attempts=s3.max_attempts)


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
    head = _request(lambda: client.head_object(Bucket=location.bucket, Key=location.key, **_if_match(expected_version)),
                    "HEAD", uri, s3.max_attempts)
    return S3RangeReader(
        client,
        location.bucket,
        location.key,
        size=int(head["ContentLength"]),
        etag=head["ETag"].strip('"'),
        block_size=block_size or DEFAULT_BLOCK_SIZE,
        cache_blocks=cache_blocks or DEFAULT_CACHE_BLOCKS,
        attempts=s3.max_attempts,
    )


class _ReadBased(io.RawIOBase):
    """A raw reader whose subclass implements ``read(size)``; readinto/readall follow from it."""

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)


class S3Stream(_ReadBased):
    """One sequential pass over an S3 object that resumes after a dropped connection.

    Reads the body of one GET. When the connection fails (or the service answers with a
    transient error) the object is asked for again from the first byte not yet returned:
    a ranged GET pinned by If-Match to the ETag of the first answer (or ``etag`` when
    given), so that a replaced object raises ObjectChanged instead of splicing two
    versions. ``requests`` counts the GETs that answered.
    """

    def __init__(self, client, bucket: str, key: str, *, etag: str | None, attempts: int):
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self._etag, self._attempts = etag, attempts
        self._position = 0
        self.size: int | None = None  # from the first answer
        self.requests = 0
        self._body = _request(self._get, "GET", self.uri, attempts)  # a missing or changed object raises here

    @property
    def uri(self) -> str:
        return f"s3://{self._bucket}/{self._key}"

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed S3Stream")
        if self._position >= self.size:
            return b""
        data = _request(lambda: self._read_body(size), "GET", self.uri, self._attempts)
        self._position += len(data)
        return data

    def _read_body(self, size: int | None) -> bytes:
        if self._body is None:
            self._body = self._get()
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except Exception:
            self._drop_body()  # broken: the next attempt asks for the rest
            raise

    def _get(self):
        # Byte 0 without a Range: a ranged GET of an empty object is answered 416.
        ranged = {"Range": f"bytes={self._position}-"} if self._position else {}
        response = self._client.get_object(Bucket=self._bucket, Key=self._key, **ranged, **_if_match(self._etag))
        self.requests += 1
        if self._etag is None:
            self._etag = response["ETag"].strip('"')
        if self.size is None:
            self.size = int(response["ContentLength"])  # the first GET is never ranged: the whole object
        return response["Body"]

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):
                body.close()

    def close(self) -> None:
        self._drop_body()
        super().close()


class S3RangeReader(_ReadBased):
    """Read-only, seekable view of one S3 object through ranged GETs pinned to its ETag.

    Reads are served from aligned blocks of ``block_size`` bytes; the ``cache_blocks``
    most recently used blocks are kept. ``requests`` counts the blocks fetched, one ranged
    GET each unless a transient failure made it ask again (for tests and benchmarks).
    ``attempts``: per block, see :func:`~openpose_ray.retry.call_with_retries`.
    """

    def __init__(self, client, bucket: str, key: str, *, size: int, etag: str, block_size: int, cache_blocks: int,
                 attempts: int):
        super().__init__()
        if block_size < 1 or cache_blocks < 1:
            raise ValueError(f"block_size ({block_size}) and cache_blocks ({cache_blocks}) must be >= 1")
        self._client, self._bucket, self._key = client, bucket, key
        self.size, self.etag = size, etag
        self._block_size, self._cache_blocks = block_size, cache_blocks
        self._attempts = attempts
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

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is not None:
            self._blocks.move_to_end(index)
            return block
        first = index * self._block_size
        last = min(self.size, first + self._block_size) - 1

        def get() -> bytes:
            response = self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={first}-{last}", **_if_match(self.etag)
            )
            return response["Body"].read()

        block = _request(get, "GET", self.uri, self._attempts)
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


def _request(fn: Callable[[], T], verb: str, uri: str, attempts: int) -> T:
    """``fn()`` through transient failures; S3's answers about the object become SourceErrors (see _translate)."""
    try:
        return call_with_retries(fn, what=f"{verb} {uri}", attempts=attempts)
    except Exception as error:  # botocore errors carry codes, not types
        raise _translate(error, uri) from error


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
