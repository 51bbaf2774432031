"""People found by a job compared with PoseEstimator.estimate on the CPU: bit for bit, or within the CUDA bound.

A job on the CPU runs the very code of estimate() on the same pixels, so its
rows must be equal to the last bit. A job on a CUDA device (local.yaml's
``device: auto`` on a GPU machine) runs IEEE fp32 convolutions too (TF32 off,
``inference.precision: fp32``), but sums in another order, and finds peaks on
the device: the people and the pixels of their parts must still be equal, and
confidences and scores agree within ``CUDA_CONFIDENCE_ATOL``.
"""

from __future__ import annotations

import numpy as np

# fp32 fields of the same network on CUDA and on the CPU differ by ~1e-6
# (accumulation order); 1e-4 leaves a margin for the cubic upsampling and blur.
CUDA_CONFIDENCE_ATOL = 1e-4


def job_estimator(estimator, config):
    """``estimator`` (CPU, shared network) with the job config's model and post-processing settings."""
    model = config.model
    return estimator.with_config(net_size=model.net_size, resize_mode=model.resize_mode,
                                 aspect_buckets=model.aspect_buckets, scales=model.scales, postprocess=config.postprocess)


def ran_on_cuda(summary: dict) -> bool:
    """Whether the job whose summary this is ran its inference on a CUDA device."""
    return summary["inference"]["device"] == "cuda"


def assert_same_person(keypoints: np.ndarray, score: float, person, *, exact: bool, where: str) -> None:
    """A job's row (keypoints float32[K, 3], score) against an estimate() Person."""
    if exact:
        assert np.array_equal(keypoints, person.keypoints), where
        assert np.float32(score) == np.float32(person.score), where
        return
    np.testing.assert_array_equal(keypoints[:, 2] > 0, person.keypoints[:, 2] > 0, err_msg=where)
    np.testing.assert_allclose(keypoints[:, :2], person.keypoints[:, :2], atol=1e-3, err_msg=where)
    np.testing.assert_allclose(keypoints[:, 2], person.keypoints[:, 2], atol=CUDA_CONFIDENCE_ATOL, err_msg=where)
    assert abs(float(score) - float(person.score)) <= CUDA_CONFIDENCE_ATOL, where
