"""Local paths and s3:// URIs behind one small interface.

Inputs are read with boto3 (streaming listing, ranged and whole-object GETs);
outputs are written through a pyarrow filesystem (local or S3), so Parquet
writing is the same code for both. Clients are built on the worker that uses
them from an :class:`~openpose_ray.jobconfig.S3Config` (plain values), never
shipped across processes. Credentials come from the standard AWS chain and are
never logged: :func:`redact` strips them from anything that is.
"""

from __future__ import annotations

import functools
import hashlib
import re
import urllib.parse
from dataclasses import dataclass

from .jobconfig import S3Config


@dataclass(frozen=True)
class Location:
    """A parsed path or URI. scheme is "s3" or "file"; for s3, bucket and key are set."""

    scheme: str
    bucket: str
    key: str  # s3: object key or prefix; file: absolute or relative path

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else self.key

    def join(self, *parts: str) -> "Location":
        tail = "/".join(p.strip("/") for p in parts if p)
        base = self.key.rstrip("/")
        key = f"{base}/{tail}" if base else tail
        return Location(self.scheme, self.bucket, key)


def parse(uri: str) -> Location:
    """Parse "s3://bucket/key", "file:///path" or a plain path."""
    if uri.startswith("s3://"):
        # Not urlparse: '?' and '#' are legal in object keys.
        bucket, _, key = uri[5:].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} has no bucket; expected s3://bucket/prefix")
        return Location("s3", bucket, key)
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Location("file", "", urllib.parse.unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise ValueError(f"unsupported URI scheme {parsed.scheme!r} in {uri!r}; use a local path or s3://")
    return Location("file", "", uri)


def stable_id(text: str, length: int = 16) -> str:
    """A short deterministic id of a string (sha1 hex prefix), for file and shard names."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


# Attempts the SDKs make on their own inside each request: enough to absorb one dropped
# connection or throttled request within a second or two. Longer outages are ridden out by
# retry.call_with_retries around each request (s3.max_attempts attempts, backoff up to a
# minute, each retry logged), so that the two layers do not multiply into many minutes:
# both SDKs back off up to 20 s a wait (pyarrow's AwsStandardS3RetryStrategy too: 8
# attempts take about a minute against a refused connection, 3 under a second).
SDK_ATTEMPTS = 3


@functools.lru_cache(maxsize=8)
def s3_client(config: S3Config):
    """A boto3 S3 client for ``config`` (cached per process; S3Config is hashable).

    Its own retries are few (SDK_ATTEMPTS, adaptive mode: slows down after throttling);
    callers wrap requests in :func:`openpose_ray.retry.call_with_retries`.
    """
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=config.profile) if config.profile else boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        config=Config(retries={"total_max_attempts": SDK_ATTEMPTS, "mode": "adaptive"}, connect_timeout=10,
                      read_timeout=60),
    )


def arrow_filesystem(location: Location, config: S3Config):
    """(pyarrow filesystem, path inside it) for writing under ``location``.

    Its own retries are few and quick (SDK_ATTEMPTS); callers wrap requests in
    :func:`openpose_ray.retry.call_with_retries`.
    """
    import pyarrow.fs as pafs

    if location.scheme != "s3":
        return pafs.LocalFileSystem(), location.key
    kwargs = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=SDK_ATTEMPTS)}
    endpoint = config.endpoint_url
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if config.region:
        kwargs["region"] = config.region
    credentials = _session_credentials(config)
    if credentials is not None:
        kwargs.update(access_key=credentials.access_key, secret_key=credentials.secret_key, session_token=credentials.token)
    return pafs.S3FileSystem(**kwargs), f"{location.bucket}/{location.key}".rstrip("/")


def _session_credentials(config: S3Config):
    """Credentials from boto3's chain (env, profiles, instance roles), so both libraries agree."""
    import boto3

    session = boto3.session.Session(profile_name=config.profile) if config.profile else boto3.session.Session()
    credentials = session.get_credentials()
    return credentials.get_frozen_credentials() if credentials else None


_SECRET_PATTERNS = (
    re.compile(r"(X-Amz-(?:Credential|Signature|Security-Token)=)[^&\s\"']+", re.IGNORECASE),
    re.compile(r"((?:aws_)?(?:secret_access_key|secret_key|session_token|access_key_id|access_key)['\"]?\s*[:=]\s*['\"]?)[^\s,'\"}]+", re.IGNORECASE),
    re.compile(r"(Authorization:\s*)[^\r\n]+", re.IGNORECASE),
)


def redact(text: str) -> str:
    """Remove credentials and signed-URL signatures from a message before it is logged or stored."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1<redacted>", text)
    return text


def text_form(name: str) -> str:
    """A file name, URI or message as it is stored in tables, JSON and object keys: valid UTF-8 text.

    Names listed from a file system are str with each byte that is not UTF-8 as a
    lone surrogate (Python's ``surrogateescape``, as ``os.fsdecode`` gives them; a
    Latin-1 ``caf\\xe9.jpg`` from an old file server, or a tar member's name). The
    job reads the file by that str; the tables hold its text form: each such byte,
    and each "%" of that name, written as %XX (upper-case hex), e.g. b"caf\\xe9.jpg"
    -> "caf%E9.jpg", b"50%\\xff" -> "50%25%FF". Percent-decoding it gives the exact
    bytes back. A name that is valid UTF-8 is kept as it is ("%" included).
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return "".join(_escaped(ch) for ch in name)


def _escaped(ch: str) -> str:
    if "\udc80" <= ch <= "\udcff":  # a byte that was not UTF-8
        return f"%{ord(ch) - 0xDC00:02X}"
    if ch == "%":
        return "%25"
    if "\ud800" <= ch <= "\udfff":  # any other lone surrogate: its bytes, so nothing is lost
        return "".join(f"%{byte:02X}" for byte in ch.encode("utf-8", "surrogatepass"))
    return ch
