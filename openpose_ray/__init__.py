"""OpenPose-style multi-person pose estimation for large image and video collections, on Ray.

Public API::

    from openpose_ray import PoseEstimator, render, to_coco17
    estimator = PoseEstimator.from_pretrained("mobilenet_thin", device="cpu")
    people = estimator.estimate([bgr_image])[0]      # list[Person], keypoints float32[K, 3]
    annotated = render(bgr_image, people, estimator.skeleton)
    coco = to_coco17(people[0], estimator.skeleton)  # float32[17, 3], COCO-17 order

K and the part order are those of ``estimator.skeleton``: 18 for the COCO-18
models (COCO18), 25 for BODY_25 (BODY25).
"""

import importlib.metadata

from .coco import to_coco17
from .config import NetworkConfig, PostprocessConfig
from .person import Person
from .render import render
from .skeleton import BODY25, COCO18, Skeleton

__all__ = ["PoseEstimator", "Person", "render", "to_coco17", "PostprocessConfig", "NetworkConfig", "COCO18", "BODY25",
           "Skeleton"]


def __getattr__(name: str):
    # PoseEstimator imports torch (~1.5 s, ~250 MiB): loaded on first use, so that the job's
    # driver and its CPU workers (decode, post-processing, writing), which import this package
    # but never run a network, do not pay for it in start-up time and memory.
    if name == "PoseEstimator":
        from .estimator import PoseEstimator

        return PoseEstimator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    __version__ = importlib.metadata.version("openpose_ray")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
