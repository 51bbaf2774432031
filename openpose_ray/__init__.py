"""OpenPose-style multi-person pose estimation for large image and video collections, on Ray.

Public API::

    from openpose_ray import PoseEstimator, render, to_coco17
    estimator = PoseEstimator.from_pretrained("mobilenet_thin", device="cpu")
    people = estimator.estimate([bgr_image])[0]      # list[Person], keypoints float32[18, 3]
    annotated = render(bgr_image, people)
"""

import importlib.metadata

from .coco import to_coco17
from .config import NetworkConfig, PostprocessConfig
from .estimator import PoseEstimator
from .person import Person
from .render import render
from .skeleton import COCO18, Skeleton

__all__ = ["PoseEstimator", "Person", "render", "to_coco17", "PostprocessConfig", "NetworkConfig", "COCO18", "Skeleton"]

try:
    __version__ = importlib.metadata.version("openpose_ray")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
