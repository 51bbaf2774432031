"""`openpose-ray run` and `jobs/annotate.py`: run the distributed job from a YAML config.

Both entry points take the same arguments::

    --config configs/NAME.yaml [--set dotted.key=value ...] [--force] [--break-lock] [-v]

Runs are incremental: inputs the output's manifest says were annotated with the
same model, weights and result-changing settings are left out (``--force``
annotates them again).

and print the job summary as JSON on stdout at the end (it is also written as
summary.json next to the tables). Exit code: 0 on success; 1 when inputs failed
and ``fail_on_error`` is set; 2 for a configuration error; 3 when the cluster
did not offer the inference actors' resources within
``inference.wait_for_actors_s`` (no input was listed, no output written); 4 when
another run holds the output's lock (openpose_ray.outputs.lock; nothing written),
or took it during this run (this run's shards are kept; it did not finalize).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from collections.abc import Sequence

from .config_loader import ConfigError, load_config, redacted_dict
from .storage import is_s3, parse

log = logging.getLogger(__name__)

_CLIENT_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE.yaml", help="job configuration (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set input=/data/photos --set inference.batch_size=8 (repeatable)")
    parser.add_argument("--force", action="store_true",
                        help="annotate every input again, also those already done in this output")
    parser.add_argument("--break-lock", action="store_true",
                        help="take the output's lock (_manifest/lock) even if the run holding it may still be "
                             "running; only when you know it is not")


def run_from_args(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.overrides)
        _check_local_inputs(config.input)
    except (ConfigError, OSError) as exc:
        print(f"openpose-ray run: error: {exc}", file=sys.stderr)
        return 2
    from .models.weights import WeightsUnavailable
    from .outputs.lock import LockHeld, LockLost
    from .pipeline.actor_pool import ActorsUnavailable  # imports Ray: only when a job really runs
    from .pipeline.runner import run_job

    if logging.getLogger("openpose_ray").getEffectiveLevel() > logging.INFO:
        logging.getLogger("openpose_ray").setLevel(logging.INFO)  # a job always reports its progress
    # Storage clients log request headers (Authorization, signed URLs) at DEBUG: never let them
    # through, whatever -v says. Our own messages are redacted; theirs are not.
    for name in _CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger(name).getEffectiveLevel()))
    log.info("configuration: %s", json.dumps(redacted_dict(config)))
    try:
        summary = run_job(config, force=args.force, break_lock=args.break_lock)
    except ConfigError as exc:  # a setting the cluster cannot honour (e.g. fp16 where only CPUs are)
        print(f"openpose-ray run: error: {exc}", file=sys.stderr)
        return 2
    except WeightsUnavailable as exc:  # default weights that cannot be fetched or converted: nothing ran
        log.debug("the weights failed", exc_info=exc.__cause__)  # -vv: the traceback
        print(f"openpose-ray run: error: {exc}", file=sys.stderr)
        return 2
    except ActorsUnavailable as exc:
        print(f"openpose-ray run: error: {exc}", file=sys.stderr)
        return 3
    except (LockHeld, LockLost) as exc:
        print(f"openpose-ray run: error: {exc}", file=sys.stderr)
        return 4
    print(json.dumps(summary, indent=2))
    failed = summary["frames_failed"]
    if failed:
        log.warning("%d frame(s) or input(s) failed; see the frames table (status = 'error')", failed)
    return 1 if failed and config.fail_on_error else 0


def _check_local_inputs(inputs: Sequence[str]) -> None:
    """A local input root that does not exist is a mistake in the command, not bad data: say so before starting Ray."""
    for uri in inputs:
        if is_s3(uri) or glob.has_magic(uri):
            continue
        path = parse(uri).key
        if not os.path.exists(path):
            raise FileNotFoundError(f"input {uri!r} does not exist (working directory {os.getcwd()})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of jobs/annotate.py."""
    parser = argparse.ArgumentParser(description="Annotate images and videos with human poses on Ray.")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more logging (default: progress)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_from_args(args)
