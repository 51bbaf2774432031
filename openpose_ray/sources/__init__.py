"""The sources stage: list inputs, plan shards, decode frames. Pure Python, no Ray.

Data flows ``iter_objects`` -> ``group_images`` / ``plan_video`` / ``plan_tar`` ->
``decode_frames``; each step is a plain function over frozen, picklable values
(:class:`SourceObject`, :class:`Shard`, :class:`Frame`), so a pipeline can run each in
any process. S3 clients are built where they are used, from an S3Config.
"""

from .decoding import Frame, decode_frames
from .errors import (ERROR_KINDS, RETRIED_KINDS, AccessDenied, ObjectChanged, ObjectMissing, SourceError,
                     UnreadableVideo, error_kind)
from .images import ImageDecodeError, decode_image, probe_image
from .listing import SourceObject, classify, iter_objects
from .planning import Shard, group_images, plan_tar, plan_video, shard_id
from .s3io import S3RangeReader, open_stream, open_uri, read_bytes

__all__ = [
    "ERROR_KINDS",
    "RETRIED_KINDS",
    "AccessDenied",
    "Frame",
    "ImageDecodeError",
    "ObjectChanged",
    "ObjectMissing",
    "S3RangeReader",
    "Shard",
    "SourceError",
    "SourceObject",
    "UnreadableVideo",
    "classify",
    "decode_image",
    "decode_frames",
    "error_kind",
    "group_images",
    "iter_objects",
    "open_stream",
    "open_uri",
    "plan_tar",
    "plan_video",
    "probe_image",
    "read_bytes",
    "shard_id",
]
