"""A Ray Data datasource that lists the inputs lazily and streams work items.

Each input root (path, glob or s3:// prefix) becomes one read task that walks
its listing as a generator and yields small blocks of work items as it goes:
image shards (grouped while listing), videos and tars to plan, and skipped
objects to count. The driver never holds the listing, and work on the first
shards starts while later pages are still being listed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ..jobconfig import JobConfig
from ..outputs.manifest import NEW, DoneIndex
from ..sources.listing import SourceObject, iter_objects
from ..sources.planning import group_images
from ..storage import text_form
from .records import ROW_SCHEMA, AlreadyDone, Skipped, ToPlan, to_row

# Work items per yielded block: small, so downstream stages start early.
_ITEMS_PER_BLOCK = 16
# Inputs already done are counted, not passed on one by one: one AlreadyDone item per this many.
_DONE_PER_ITEM = 10_000


def iter_work_items(input_uri: str, config: JobConfig, done: DoneIndex | None = None) -> Iterator[dict]:
    """Work items of one input root, in listing order, as rows of pipeline.records.

    Records: a Shard of images; a ToPlan per video or tar; a Skipped per object that is
    not processed (unsupported type), counted in the summary; an AlreadyDone count of
    inputs that ``done`` (the manifest of earlier runs) says need no work. Images
    already done are left out before grouping, so new images form new shards.
    Image shards group consecutive images across folders, up to
    ``sources.images_per_shard``, unless ``write.partition_by`` is source_dir.
    """
    objects = iter_objects(input_uri, config.sources, config.s3)
    pending_images: list[SourceObject] = []
    already_done = 0
    by_folder = config.write.partition_by == "source_dir"

    def flush() -> Iterator[dict]:
        for shard in group_images(pending_images, config.sources.images_per_shard):
            yield to_row(shard, shard.shard_id)
        pending_images.clear()

    for obj in objects:
        todo = (done.todo(text_form(obj.uri), obj.version) if done is not None and obj.kind in ("image", "video", "tar")
                else NEW)
        if todo.action == "done":
            already_done += 1
            if already_done == _DONE_PER_ITEM:
                yield to_row(AlreadyDone(already_done))
                already_done = 0
            continue
        if obj.kind == "image":
            # Shards span folders (a dataset with an image per folder still gets full shards), except
            # when the tables are partitioned by folder: a shard's rows go to one partition.
            if by_folder and pending_images and _parent(pending_images[-1].uri) != _parent(obj.uri):
                yield from flush()
            pending_images.append(obj)
            if len(pending_images) >= config.sources.images_per_shard:
                yield from flush()
        elif obj.kind in ("video", "tar"):
            yield to_row(ToPlan(obj, todo), text_form(obj.uri))
        else:
            yield to_row(Skipped(obj.uri, obj.reason or "file type not annotated (see sources.*_extensions)"),
                         text_form(obj.uri))
    yield from flush()
    if already_done:
        yield to_row(AlreadyDone(already_done))


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0]


def _blocks(input_uri: str, config: JobConfig, done_ref) -> Iterator[pa.Table]:
    items = iter_work_items(input_uri, config, ray.get(done_ref) if done_ref is not None else None)
    while True:
        chunk = list(itertools.islice(items, _ITEMS_PER_BLOCK))
        if not chunk:
            return
        yield pa.Table.from_pylist(chunk, schema=ROW_SCHEMA)


class ListingDatasource(Datasource):
    """One streaming read task per input root of ``config.input``.

    done_ref: an ObjectRef of the run's DoneIndex (inputs to leave out), or None to
    process everything; a reference so that a large index is stored once, not
    pickled into every read task.
    """

    def __init__(self, config: JobConfig, done_ref=None):
        self._config = config
        self._done_ref = done_ref

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        config, done_ref = self._config, self._done_ref
        return [
            ReadTask(
                lambda uri=uri: _blocks(uri, config, done_ref),
                BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None),
                schema=ROW_SCHEMA,
            )
            for uri in config.input
        ]

    def get_name(self) -> str:
        return "ListInputs"
