"""People through a video: a track id that follows each person from frame to frame.

Method (online, one pass over the video's frames in order):

1. Every live track predicts where its person is in the current frame: its
   last pose moved by its velocity (the mean displacement of the parts it had
   in its last two matched frames, per video frame) times the frames elapsed.
2. Each (track, person) pair gets a keypoint similarity: COCO's object
   keypoint similarity ``exp(-d^2 / (2 s^2 k^2))`` per part (``k = 2 sigma``
   of the part, :attr:`Skeleton.oks_sigmas`; ``s^2`` the larger keypoint-box
   area of the two poses, at least ``min_area_px``), summed over the parts both
   poses have and divided by the parts either has: a part only one pose has
   counts 0, so two half-seen people never look alike by chance.
3. The assignment of largest total similarity is taken (Hungarian,
   scipy.optimize.linear_sum_assignment); a pair below ``min_similarity`` is
   no match.
4. A matched track takes the person's pose; a person left over starts a new
   track (ids 0, 1, 2, ... per video, in order of first appearance and
   person_index within a frame); a track unmatched for more than
   ``max_gap_frames`` video frames ends and its id is never reused.

The result depends only on the video's people, frame by frame, so it is the
same however the video was cut into segments (:mod:`openpose_ray.outputs.tracks`
runs it once a video is complete). Coordinates: source pixels, as in the
people table. Nothing here mutates its inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import TrackingConfig
from .person import keypoints_bbox
from .skeleton import Skeleton

DEFAULT_OKS_SIGMA = 0.08  # per part, for skeletons that define none


@dataclass(frozen=True)
class FramePeople:
    """The people of one video frame: frame_index (int), keypoints float32[P, K, 3] (x, y, confidence
    in source pixels; confidence 0 = part not found), in person_index order."""

    frame_index: int
    keypoints: np.ndarray


@dataclass
class _Track:
    track_id: int
    keypoints: np.ndarray  # float32[K, 3], last matched pose
    frame_index: int  # where it was last matched
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # px per video frame

    def predicted(self, frame_index: int) -> np.ndarray:
        moved = self.keypoints.copy()
        moved[:, :2] += self.velocity * (frame_index - self.frame_index)
        return moved


def part_sigmas(skeleton: Skeleton) -> np.ndarray:
    """float64[K]: the skeleton's per-part OKS sigmas (DEFAULT_OKS_SIGMA where it defines none)."""
    if skeleton.oks_sigmas is None:
        return np.full(skeleton.num_parts, DEFAULT_OKS_SIGMA)
    return np.asarray(skeleton.oks_sigmas, dtype=np.float64)


def similarity(a: np.ndarray, b: np.ndarray, sigmas: np.ndarray, min_area_px: float) -> np.ndarray:
    """float64[A, B]: keypoint similarity of poses a float32[A, K, 3] and b float32[B, K, 3] (module docstring)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    found_a, found_b = a[:, :, 2] > 0, b[:, :, 2] > 0
    box_a, box_b = keypoints_bbox(a).astype(np.float64), keypoints_bbox(b).astype(np.float64)
    area = np.maximum((box_a[:, 2] * box_a[:, 3])[:, None], (box_b[:, 2] * box_b[:, 3])[None, :])
    area = np.maximum(area, min_area_px)  # [A, B]
    squared = ((a[:, None, :, :2].astype(np.float64) - b[None, :, :, :2]) ** 2).sum(-1)  # [A, B, K]
    k = 2.0 * sigmas
    per_part = np.exp(-squared / (2.0 * area[..., None] * k**2))
    both = found_a[:, None, :] & found_b[None, :, :]
    either = (found_a[:, None, :] | found_b[None, :, :]).sum(-1)
    return np.where(both, per_part, 0.0).sum(-1) / np.maximum(either, 1)


def track(frames: Iterable[FramePeople], skeleton: Skeleton, config: TrackingConfig) -> list[np.ndarray]:
    """Track ids of every person: one int64[P] per frame, in the order of ``frames``.

    frames: a video's frames in increasing frame_index (frames with nobody may
    be left out; only frame indices measure gaps).
    """
    from scipy.optimize import linear_sum_assignment

    sigmas = part_sigmas(skeleton)
    live: list[_Track] = []
    next_id = 0
    ids_per_frame = []
    previous_frame = None
    for frame in frames:
        if previous_frame is not None and frame.frame_index <= previous_frame:
            raise ValueError(f"frames must be in increasing frame_index: {frame.frame_index} after {previous_frame}")
        previous_frame = frame.frame_index
        live = [t for t in live if frame.frame_index - t.frame_index - 1 <= config.max_gap_frames]  # frames missed
        poses = np.asarray(frame.keypoints, dtype=np.float32)
        if len(poses) == 0:  # a frame with nobody may come as any empty array
            poses = poses.reshape(0, skeleton.num_parts, 3)
        if poses.shape[1:] != (skeleton.num_parts, 3):
            raise ValueError(f"frame {frame.frame_index}: keypoints have shape {poses.shape}, expected "
                             f"[P, {skeleton.num_parts}, 3] for skeleton {skeleton.name!r}; track with the model's skeleton")
        ids = np.full(len(poses), -1, np.int64)
        if live and len(poses):
            predicted = np.stack([t.predicted(frame.frame_index) for t in live])
            scores = similarity(predicted, poses, sigmas, config.min_area_px)
            rows, cols = linear_sum_assignment(scores, maximize=True)
            for row, col in zip(rows, cols):
                if scores[row, col] >= config.min_similarity:
                    _follow(live[row], poses[col], frame.frame_index)
                    ids[col] = live[row].track_id
        for person in np.flatnonzero(ids < 0):
            live.append(_Track(next_id, poses[person].copy(), frame.frame_index))
            ids[person] = next_id
            next_id += 1
        ids_per_frame.append(ids)
    return ids_per_frame


def _follow(state: _Track, pose: np.ndarray, frame_index: int) -> None:
    """Move a track to its newly matched pose; its velocity from the parts both poses have."""
    common = (state.keypoints[:, 2] > 0) & (pose[:, 2] > 0)
    elapsed = frame_index - state.frame_index
    if common.any() and elapsed > 0:
        state.velocity = (pose[common, :2].astype(np.float64) - state.keypoints[common, :2]).mean(0) / elapsed
    state.keypoints = pose.copy()
    state.frame_index = frame_index


def track_rows(frame_index: Sequence[int], person_index: Sequence[int], keypoints: np.ndarray,
               skeleton: Skeleton, config: TrackingConfig) -> np.ndarray:
    """int64[R]: track ids of people-table rows of one video, in the rows' order.

    frame_index, person_index: int[R]; keypoints: float32[R, K, 3]. Rows may come
    in any order (e.g. segment files read one after the other): they are put in
    (frame_index, person_index) order for tracking and the ids handed back in
    the given order.
    """
    frame_index, person_index = np.asarray(frame_index, np.int64), np.asarray(person_index, np.int64)
    order = np.lexsort((person_index, frame_index))
    sorted_frames = frame_index[order]
    starts = np.flatnonzero(np.r_[True, sorted_frames[1:] != sorted_frames[:-1]]) if len(order) else np.zeros(0, int)
    bounds = np.r_[starts, len(order)]
    frames = [FramePeople(int(sorted_frames[s]), keypoints[order[s:e]]) for s, e in zip(bounds[:-1], bounds[1:])]
    ids = np.concatenate(track(frames, skeleton, config)) if frames else np.zeros(0, np.int64)
    result = np.empty(len(order), np.int64)
    result[order] = ids
    return result
