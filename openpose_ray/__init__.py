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

import importlib
import importlib.metadata
from typing import TYPE_CHECKING

# Every public name is loaded on first use (PEP 562), so that importing a part of the package
# loads only what that part needs: PoseEstimator imports torch (~1.5 s, ~250 MiB), which the
# job's driver and CPU workers never need; the rest imports OpenCV, which converting weights
# (openpose_ray.models) never needs.
_EXPORTS = {"PoseEstimator": "estimator", "Person": "person", "render": "drawing", "to_coco17": "coco",
            "PostprocessConfig": "config", "NetworkConfig": "config", "COCO18": "skeleton", "BODY25": "skeleton",
            "Skeleton": "skeleton"}
__all__ = ["PoseEstimator", "Person", "render", "to_coco17", "PostprocessConfig", "NetworkConfig", "COCO18", "BODY25",
           "Skeleton"]

if TYPE_CHECKING:
    from .coco import to_coco17
    from .config import NetworkConfig, PostprocessConfig
    from .drawing import render
    from .estimator import PoseEstimator
    from .person import Person
    from .skeleton import BODY25, COCO18, Skeleton


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


try:
    __version__ = importlib.metadata.version("openpose_ray")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
