"""`openpose-ray predict`: the people of images, videos and tars, in this process (no Ray), into one Parquet table.

Inputs are what the job takes (files, folders, globs, s3:// objects and
prefixes), listed, planned and decoded by the job's own :mod:`openpose_ray.sources`
(``SourcesConfig`` defaults: the same suffixes, EXIF and display-matrix
rotation, the ``max_image_pixels`` guard, tar bounds), so predict and the job
never disagree about what an input holds. A folder is read without its
subfolders unless ``--recursive``.

The table is the people table with ``member``, ``source_kind`` and
``timestamp`` after the parts; ``source`` is the absolute path or URI, as in
the job. ``--render DIR`` writes each image under its file name (prefixed by
its position where two share one), each video frame as
``<video name>_<frame index, 12 digits>.jpg`` and each tar member as
``<tar name>_<member path, / as _>``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import pyarrow.parquet as pq
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .atomic import atomic_path
from .estimator import PoseEstimator
from .jobconfig import S3Config, SourcesConfig
from .outputs.people_table import PEOPLE_EXTRA_FIELDS, PeopleTableBuilder
from .sources.webdataset import sample_key
from .drawing import draw
from .sources import Frame, SourceObject, decode_frames, error_kind, group_images, iter_objects, plan_tar, plan_video
from .storage import redact, text_form

log = logging.getLogger("openpose_ray.cli")

PREDICT_EXTRA_FIELDS = tuple(f for f in PEOPLE_EXTRA_FIELDS
                             if f.name in ("member", "sample_key", "source_kind", "timestamp"))
_PROGRESS_MIN_FRAMES = 6  # below this a progress bar is noise
_WHOLE_VIDEO = 1 << 40  # frames per segment: one segment, decoded in order


def list_inputs(inputs: Sequence[str], sources: SourcesConfig, s3: S3Config) -> tuple[list[SourceObject], list[str]]:
    """(objects to read, in input then listing order, each once; inputs or objects that cannot be read)."""
    objects: list[SourceObject] = []
    failed: list[str] = []
    seen: set[str] = set()
    for text in inputs:
        try:
            listed = list(iter_objects(text, sources, s3))
        except (FileNotFoundError, OSError, ValueError) as exc:
            log.error("%s: %s", redact(text), exc)
            failed.append(text)
            continue
        readable = [o for o in listed if o.kind in ("image", "video", "tar")]
        for obj in listed:
            if obj.kind == "skipped":
                log.error("%s: skipped: %s", redact(obj.uri), obj.reason)
                failed.append(obj.uri)
            elif obj.kind == "unsupported" and len(listed) == 1:  # named explicitly: say why nothing happens
                log.error("%s: not an image, video or tar by its suffix; skipped", redact(obj.uri))
                failed.append(obj.uri)
        if not readable and listed and len(listed) > 1:
            log.warning("%s: no image, video or tar files%s", redact(text),
                        "" if sources.recursive else " (--recursive scans subfolders)")
        for obj in readable:
            if obj.uri in seen:
                log.info("%s: given more than once; processed once", redact(obj.uri))
                continue
            seen.add(obj.uri)
            objects.append(obj)
    return objects, failed


def frames_of(obj: SourceObject, sources: SourcesConfig, s3: S3Config) -> Iterator[Frame]:
    """The frames of one object, decoded as the job decodes them (errors as error Frames)."""
    if obj.kind == "image":
        shards = list(group_images([obj], 1))
    elif obj.kind == "video":
        try:
            shards = plan_video(obj, _WHOLE_VIDEO, s3, frame_step=sources.frame_step, target_fps=sources.target_fps)
        except Exception as exc:  # an unreadable video is one error, as in the job
            yield Frame(obj.uri, None, 0, None, None, 0, 0, "error", redact(f"cannot read video: {exc}"),
                        error_kind(exc))
            return
    else:
        shards = plan_tar(obj)
    for shard in shards:
        yield from decode_frames(shard, sources, s3)


def render_name(frame: Frame, image_names: dict[str, str]) -> str:
    """The rendered file's name for one frame (see the module docstring)."""
    name = Path(frame.source).name if "://" not in frame.source else frame.source.rsplit("/", 1)[-1]
    if frame.member is not None:
        return f"{name}_{frame.member.replace('/', '_')}" + ("" if Path(frame.member).suffix else ".jpg")
    if frame.timestamp is not None:
        return f"{name}_{frame.frame_index:012d}.jpg"
    return image_names[frame.source]


def predict(objects: Sequence[SourceObject], sources: SourcesConfig, estimator: PoseEstimator, out: Path, *,
            render_dir: Path | None = None, image_names: dict[str, str] | None = None,
            s3: S3Config | None = None, render_style: str = "overlay") -> tuple[int, int, int, list[str]]:
    """Annotate every frame of ``objects`` (from :func:`list_inputs`) and write the table to ``out``.

    image_names: {image URI: rendered file name} when rendering into ``render_dir``.
    render_style: "overlay" or "pose_map" (drawing.draw).
    Returns (images done, video and tar frames done, people, what failed).
    """
    s3, names, failed = s3 or S3Config(), image_names or {}, []
    builder = PeopleTableBuilder(estimator.skeleton, extra_fields=PREDICT_EXTRA_FIELDS)
    done_images = done_frames = 0
    progress = tqdm(objects, unit="input", file=sys.stderr, disable=None if len(objects) >= _PROGRESS_MIN_FRAMES else True)
    with logging_redirect_tqdm():
        for obj in progress:
            for frame in frames_of(obj, sources, s3):
                where = redact(frame.source) + (f" member {frame.member}" if frame.member else "") + (
                    f" frame {frame.frame_index}" if obj.kind == "video" else "")
                if frame.status != "ok":
                    log.error("%s: %s; skipped", where, frame.error)
                    failed.append(where)
                    continue
                try:
                    people = estimator.estimate([frame.image])[0]
                    if render_dir is not None:
                        path = render_dir / render_name(frame, names)
                        if not cv2.imwrite(str(path), draw(frame.image, people, estimator.skeleton, render_style)):
                            raise OSError(f"OpenCV could not write {path}")
                except Exception as exc:  # one bad input must not end a long run; it is counted and reported
                    log.error("%s: %s: %s; skipped", where, type(exc).__name__, exc,
                              exc_info=log.isEnabledFor(logging.DEBUG))
                    failed.append(where)
                    continue
                member = None if frame.member is None else text_form(frame.member)
                builder.add(text_form(frame.source), frame.frame_index, people,
                            {"member": member, "sample_key": sample_key(member), "source_kind": obj.kind,
                             "timestamp": frame.timestamp})
                if obj.kind == "image":
                    done_images += 1
                else:
                    done_frames += 1
    table = builder.to_table()
    with atomic_path(out) as tmp:
        pq.write_table(table, str(tmp))
    return done_images, done_frames, table.num_rows, failed
