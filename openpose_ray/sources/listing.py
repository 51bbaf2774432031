"""Listing the input objects of a job, lazily, from local paths, globs and s3:// URIs.

Every listing is a generator that yields while it walks: a folder or prefix with
millions of objects is never held in one list. The order is deterministic: the
relative paths (keys) sorted as strings, folders as if their name ended with "/".
That is the order in which S3 lists keys, so a tree yields in the same order
locally and on S3. A local folder is read (and sorted) one at a time, so memory is
bounded by the largest single folder, not the tree.

Globs (``*``, ``?``, ``[...]`` in the path or key): ``*``, ``?`` and ``[...]`` match
within one path component, ``**`` as a whole component matches any number of
components; matching is case-sensitive and, unlike a shell, ``*`` also matches names
starting with a dot. A folder (prefix) that matches is expanded like a folder input
(recursively when ``sources.recursive``). Locally the walk only enters folders that can
still match; on S3 the keys under the literal prefix before the first wildcard are
listed and filtered.

Every object is yielded, also those the job cannot read, so that it can count them:
kind "unsupported" for an unknown extension, and kind "skipped" (with ``reason``) for
what is deliberately not read: a symbolic link leading out of the input root (unless
``sources.follow_symlinks``), a broken link, a folder reached twice through links (it is
listed once, where the walk first meets it), a special file (FIFO, socket, device) or a
sub-folder that cannot be listed. Links that stay inside the root are followed and keep
their own path as URI.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..jobconfig import S3Config, SourcesConfig
from ..retry import call_with_retries
from ..storage import s3_client
from .s3io import locate

_WILDCARDS = re.compile(r"[*?\[]")
_S3_PAGE_KEYS = 1000  # keys per listing request (S3's maximum)


@dataclass(frozen=True)
class SourceObject:
    """One listed input. uri: absolute local path (links not resolved) or s3://bucket/key.

    kind: "image" | "video" | "tar" | "unsupported" | "skipped".
    size: bytes (0 for skipped objects). version: S3 ETag without quotes, or the local
    mtime in nanoseconds as a decimal string; "" when unknown. reason: why a "skipped"
    object is skipped, else None.
    """

    uri: str
    kind: str
    size: int
    version: str
    reason: str | None = None


def classify(name: str, sources: SourcesConfig) -> str:
    """The kind of a file or key name by its lower-cased suffix: "image", "video", "tar" or "unsupported"."""
    lower = name.lower()
    for kind, suffixes in (
        ("image", sources.image_extensions),
        ("video", sources.video_extensions),
        ("tar", sources.tar_extensions),
    ):
        if lower.endswith(tuple(suffixes)):
            return kind
    return "unsupported"


def iter_objects(input_uri: str, sources: SourcesConfig, s3: S3Config) -> Iterator[SourceObject]:
    """Yield the objects of one input (file, folder, glob, s3:// object, prefix or glob), in listing order.

    Raises FileNotFoundError for a local input that does not exist (a glob matching
    nothing yields nothing, as does an empty S3 prefix).
    """
    location = locate(input_uri)
    if location.scheme == "s3":
        return _iter_s3(location.bucket, location.key, sources, s3)
    return _iter_local(location.key, sources)


# --- local ---------------------------------------------------------------------------------


def _iter_local(path: str, sources: SourcesConfig) -> Iterator[SourceObject]:
    if os.path.lexists(path) or not _WILDCARDS.search(path):
        if os.path.isdir(path):
            yield from _walk(path, sources, descend=lambda parts: sources.recursive, accept=lambda parts: True)
        elif os.path.isfile(path):  # named explicitly: read even through a link
            stat = os.stat(path)
            yield SourceObject(os.path.abspath(path), classify(path, sources), stat.st_size, str(stat.st_mtime_ns))
        elif os.path.lexists(path):
            yield _skipped(path, "broken symlink" if os.path.islink(path) else "not a regular file or folder")
        else:
            raise FileNotFoundError(f"input {path!r} does not exist (neither a file, a folder nor a glob)")
        return
    base, pattern = _split_glob(path, os.sep)
    matcher = _GlobMatcher(pattern, sources.recursive)
    if os.path.isdir(base):
        yield from _walk(base, sources, descend=matcher.may_descend, accept=matcher.accepts)


def _walk(
    base: str,
    sources: SourcesConfig,
    descend: Callable[[tuple[str, ...]], bool],
    accept: Callable[[tuple[str, ...]], bool],
) -> Iterator[SourceObject]:
    """Depth-first walk of ``base``; descend/accept get the path components relative to base."""
    base = os.path.abspath(base)
    root_real = os.path.realpath(base)
    stat = os.stat(base)
    visited = {(stat.st_dev, stat.st_ino)}  # folders entered, against link loops and repeats
    stack = [(_sorted_entries(base), ())]
    while stack:
        entries, rel = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        parts = rel + (entry.name,)
        try:
            is_dir = entry.is_dir()
            wanted = descend(parts) if is_dir else accept(parts)
            if not wanted:
                continue
            if entry.is_symlink():
                problem = _symlink_problem(entry.path, root_real, sources.follow_symlinks)
                if problem:
                    yield _skipped(entry.path, problem)
                    continue
            if is_dir:
                stat = entry.stat()
                if (stat.st_dev, stat.st_ino) in visited:
                    yield _skipped(entry.path, "folder already listed (reached again through a symlink)")
                    continue
                visited.add((stat.st_dev, stat.st_ino))
                stack.append((_sorted_entries(entry.path), parts))
            elif entry.is_file():
                stat = entry.stat()
                yield SourceObject(entry.path, classify(entry.name, sources), stat.st_size, str(stat.st_mtime_ns))
            else:
                yield _skipped(entry.path, "not a regular file (FIFO, socket or device)")
        except OSError as error:  # e.g. a sub-folder without read permission
            yield _skipped(entry.path, f"cannot read: {error.strerror or error}")


def _sorted_entries(path: str) -> Iterator[os.DirEntry]:
    # S3 key order: compare names as if folders ended with "/" ("a-b" < "a/" < "a0").
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name + "/" if e.is_dir() else e.name)
    return iter(entries)


def _symlink_problem(path: str, root_real: str, follow: bool) -> str | None:
    if not os.path.exists(path):
        return "broken symlink"
    target = os.path.realpath(path)
    if not follow and os.path.commonpath([root_real, target]) != root_real:
        return f"symlink leads outside the input root {root_real} (set sources.follow_symlinks to read it)"
    return None


def _skipped(path: str, reason: str) -> SourceObject:
    return SourceObject(os.path.abspath(path), "skipped", 0, "", reason)


# --- globs ---------------------------------------------------------------------------------


def _split_glob(path: str, sep: str) -> tuple[str, list[str]]:
    """(literal folder before the first wildcard component, remaining pattern components)."""
    parts = path.split(sep)
    first = next(i for i, part in enumerate(parts) if _WILDCARDS.search(part))
    base = sep.join(parts[:first]) or (sep if path.startswith(sep) else ".")
    return base, parts[first:]


class _GlobMatcher:
    """Matches relative paths (as component tuples) against glob components."""

    def __init__(self, pattern: list[str], recursive: bool):
        self.pattern = pattern
        self.recursive = recursive
        self.components = [None if p == "**" else re.compile(_translate_component(p)) for p in pattern]
        self.full = re.compile(_translate(pattern) + r"(?:/(?P<rest>.+))?\Z", re.DOTALL)

    def may_descend(self, parts: tuple[str, ...]) -> bool:
        """Could a folder at ``parts`` contain a match (or be inside a matching folder that is expanded)?"""
        for i, name in enumerate(parts):
            if i >= len(self.components):
                return self.recursive  # inside a matching folder
            component = self.components[i]
            if component is None:
                return True
            if not component.fullmatch(name):
                return False
        return True

    def accepts(self, parts: tuple[str, ...]) -> bool:
        return self.accepts_key("/".join(parts))

    def accepts_key(self, key: str) -> bool:
        match = self.full.match(key)
        if match is None:
            return False
        rest = match.group("rest")
        return rest is None or self.recursive or "/" not in rest


def _translate(pattern: list[str]) -> str:
    out = []
    for i, component in enumerate(pattern):
        last = i == len(pattern) - 1
        if component == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
        else:
            out.append(_translate_component(component) + ("" if last else "/"))
    return "".join(out)


def _translate_component(component: str) -> str:
    """Regex for one glob component: * and ? never match "/"; [...] and [!...] are character classes."""
    out, i = [], 0
    while i < len(component):
        char = component[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and _class_end(component, i) is not None:
            end = _class_end(component, i)
            body = component[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = re.sub(r"([\\\[&~|^])", r"\\\1", body[1:] if negate else body)
            out.append(("[^/" if negate else "[") + body + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _class_end(component: str, start: int) -> int | None:
    """Index of the "]" closing the character class opened at ``start``, or None (a literal "[")."""
    j = start + 1
    if component[j : j + 1] in ("!", "^"):
        j += 1
    if component[j : j + 1] == "]":
        j += 1
    end = component.find("]", j)
    return None if end < 0 else end


# --- S3 ------------------------------------------------------------------------------------


def _iter_s3(bucket: str, key: str, sources: SourcesConfig, s3: S3Config) -> Iterator[SourceObject]:
    client = s3_client(s3)
    wildcard = _WILDCARDS.search(key)
    if wildcard:
        matcher = _GlobMatcher(key.split("/"), sources.recursive)
        for obj in _list_prefix(client, bucket, key[: wildcard.start()], None, sources, s3.max_attempts):
            if matcher.accepts_key(obj.uri[len(f"s3://{bucket}/") :]):
                yield obj
        return
    if key and not key.endswith("/"):
        try:
            head = call_with_retries(functools.partial(client.head_object, Bucket=bucket, Key=key),
                                     what=f"HEAD s3://{bucket}/{key}", attempts=s3.max_attempts)
        except Exception as error:
            code = str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchKey", "NotFound"):
                raise
        else:  # the URI names one object
            size, etag = int(head["ContentLength"]), head["ETag"].strip('"')
            yield SourceObject(f"s3://{bucket}/{key}", classify(key, sources), size, etag)
            return
        key += "/"
    yield from _list_prefix(client, bucket, key, None if sources.recursive else "/", sources, s3.max_attempts)


def _list_prefix(
    client, bucket: str, prefix: str, delimiter: str | None, sources: SourcesConfig, attempts: int
) -> Iterator[SourceObject]:
    """Objects under ``prefix`` page by page (_S3_PAGE_KEYS per request), in key order; folder markers left out.

    Each page is one request, retried on its own through transient failures (its
    continuation token is kept), so an outage in the middle of a long listing neither
    restarts it nor yields an object twice.
    """
    request = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": _S3_PAGE_KEYS}
    if delimiter:
        request["Delimiter"] = delimiter
    for number in itertools.count(1):
        page = call_with_retries(functools.partial(client.list_objects_v2, **request),
                                 what=f"LIST s3://{bucket}/{prefix} (page {number})", attempts=attempts)
        for item in page.get("Contents", ()):
            key = item["Key"]
            if key.endswith("/"):  # a zero-byte "folder" placeholder of consoles and sync tools
                continue
            size, etag = int(item["Size"]), item["ETag"].strip('"')
            yield SourceObject(f"s3://{bucket}/{key}", classify(key, sources), size, etag)
        if not page.get("IsTruncated"):
            return
        request["ContinuationToken"] = page["NextContinuationToken"]
