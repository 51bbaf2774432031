"""`openpose-ray export`: a job's output as OpenPose JSON files or COCO keypoint results (see exports)::

    openpose-ray export OUTPUT --format openpose-json --to DEST [--endpoint-url URL]
    openpose-ray export OUTPUT --format coco --to DEST/results.json [--annotations person_keypoints.json]

Prints the counts as JSON. Exit code: 0 success; 2 invalid usage (no job
output at OUTPUT, an unreadable annotation file, an output whose people come
from models of two skeletons while a model change is under way).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .exports import FORMATS, MixedSkeletonsError, export
from .jobconfig import S3Config
from .storage import redact


class ExportUsageError(Exception):
    """Reported in one line, exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="the job's output folder or s3:// prefix")
    parser.add_argument("--format", required=True, choices=FORMATS, help="openpose-json: one file per frame, as "
                        "OpenPose's --write_json; coco: one COCO keypoint results file")
    parser.add_argument("--to", required=True, metavar="DEST", help="folder or s3:// prefix (openpose-json); "
                        "file or s3:// object (coco)")
    parser.add_argument("--annotations", type=Path, metavar="COCO.json",
                        help="coco: take image ids from this annotation file (by file name); default: the "
                             "file name's digits, as COCO names its images")
    parser.add_argument("--endpoint-url", help="S3 API URL for an S3-compatible store; default: AWS or $AWS_ENDPOINT_URL")
    parser.add_argument("--region", help="S3 region; default: the AWS chain's")


def run_from_args(args: argparse.Namespace) -> int:
    annotations = None
    if args.annotations is not None:
        try:
            annotations = json.loads(args.annotations.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportUsageError(f"cannot read --annotations {args.annotations}: {exc}") from None
    try:
        counts = export(args.output, args.format, args.to, S3Config(endpoint_url=args.endpoint_url, region=args.region),
                        annotations)
    except FileNotFoundError as exc:
        raise ExportUsageError(f"{redact(args.output)} holds no job output (no manifest): {exc}") from None
    except MixedSkeletonsError as exc:
        raise ExportUsageError(f"{redact(args.output)}: {exc}") from None
    print(json.dumps(counts))
    return 0
