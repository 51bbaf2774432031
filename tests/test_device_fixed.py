"""Peaks in fixed-size buffers (postprocess.device_fixed) and the engine's pipelined chunks, on the CPU.

The fixed path must give what the CPU fast path gives (PoseEstimator.estimate's numpy post-processing)
on the shared photos: the same peaks at the same pixels and the same limb candidates; it must have no
data-dependent shape (so CUDA graphs and compile take it whole); and the engine must queue chunk k+1's
device work before it builds chunk k's results on the host, from input buffers it reuses.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest
import torch

from openpose_ray.compiled import StaticCompiled
from openpose_ray.config import PostprocessConfig
from openpose_ray.postprocess.device_fixed import (fixed_peaks_and_candidates, packed_peaks, packed_width, peak_tables,
                                                   unpack)
from openpose_ray.postprocess.limbs import score_limbs
from openpose_ray.postprocess.peaks import find_peaks_in_fields
from openpose_ray.postprocess.upsampled import UpsampledField
from openpose_ray.skeleton import COCO18

CONFIG = PostprocessConfig()


@pytest.fixture(scope="module")
def photo_fields(estimator, data_dir):
    paths = [*sorted((data_dir / "coco_val2017_mini").glob("*.jpg")),
             *sorted((data_dir / "coco_val2014_samples").glob("*.jpg"))]
    return [(heat, paf) for heat, paf, _ in estimator.fields([cv2.imread(str(p)) for p in paths])]


def test_fixed_buffers_give_the_peaks_and_limbs_of_the_cpu_fast_path(photo_fields):
    """24 photos (1 to 14 peaks of a part): every peak at the same pixel, every candidate limb the same
    pair, scores equal to float rounding (measured: peaks 1.8e-7, limbs 2.4e-7)."""
    most = 0
    for heat, paf in photo_fields:
        peaks = find_peaks_in_fields(heat, CONFIG, COCO18.num_parts)
        candidates = score_limbs(peaks, UpsampledField(paf, CONFIG.upsample, CONFIG.upsample_interpolation), COCO18,
                                 CONFIG)
        packed = fixed_peaks_and_candidates(torch.from_numpy(heat)[None], torch.from_numpy(paf)[None], COCO18, CONFIG)
        assert packed.shape == (1, packed_width(COCO18))
        (got_peaks, got_candidates), = unpack(packed.numpy(), COCO18)
        np.testing.assert_array_equal(got_peaks.part, peaks.part)
        np.testing.assert_array_equal(got_peaks.xy, peaks.xy)
        np.testing.assert_allclose(got_peaks.score, peaks.score, atol=1e-6)
        for name in ("limb", "a", "b"):
            np.testing.assert_array_equal(getattr(got_candidates, name), getattr(candidates, name))
        np.testing.assert_allclose(got_candidates.score, candidates.score, atol=1e-6)
        most = max(most, np.bincount(peaks.part).max())
    assert most == 14  # a crowd photo: within the default capacity of 16


def test_a_batch_is_each_frame_alone_and_a_full_part_is_flagged(photo_fields):
    """Frames of one geometry in one batch give what each gives alone; a part with more peaks than the
    capacity makes unpack say None for that frame only (the engine then finds it exactly)."""
    same = [f for f in photo_fields if f[0].shape == photo_fields[0][0].shape][:3]
    heat = torch.from_numpy(np.stack([h for h, _ in same]))
    pafs = torch.from_numpy(np.stack([p for _, p in same]))
    together = fixed_peaks_and_candidates(heat, pafs, COCO18, CONFIG)
    alone = torch.cat([fixed_peaks_and_candidates(heat[i : i + 1], pafs[i : i + 1], COCO18, CONFIG) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)
    counts = [np.bincount(find_peaks_in_fields(h, CONFIG, COCO18.num_parts).part).max() for h, _ in same]
    capacity = sorted(counts)[1]  # the frame with the most peaks of a part overflows, the others fit
    small = unpack(fixed_peaks_and_candidates(heat, pafs, COCO18, CONFIG, capacity).numpy(), COCO18, capacity)
    assert [f is None for f in small] == [c > capacity for c in counts] and sum(c > capacity for c in counts) == 1


def test_every_shape_is_static_so_compile_takes_it_whole(photo_fields):
    """fullgraph=True, dynamic=False: a data-dependent shape (nonzero, a count turned into an int) would fail
    here; padded to a bucket through StaticCompiled, the frames' results are unchanged."""
    heat = torch.from_numpy(np.stack([photo_fields[i][0] for i in range(3)]))
    pafs = torch.from_numpy(np.stack([photo_fields[i][1] for i in range(3)]))
    tables = peak_tables(*heat.shape[-2:], COCO18, CONFIG, heat.device)
    function = functools.partial(packed_peaks, num_parts=COCO18.num_parts, config=CONFIG, capacity=16)
    eager = function(heat, pafs, *tables)
    torch._dynamo.reset()
    whole = torch.compile(function, fullgraph=True, dynamic=False, backend="aot_eager")
    assert torch.equal(whole(heat, pafs, *tables), eager)
    padded = StaticCompiled(function, torch.device("cpu"), backend="aot_eager", batched=2, name="peak finder")
    assert torch.equal(padded(heat, pafs, *tables), eager)  # 3 frames padded to 4 and cut back
    assert padded.failed is None and list(padded.compile_seconds)[0][0] == 4


def test_chunks_are_pipelined_from_reused_buffers(estimator, data_dir, monkeypatch):
    """Chunk k+1's network is queued before chunk k's results are built on the host, and the input buffers
    are made once (a ring of 3) for all chunks of all calls."""
    import openpose_ray.inference as inference

    engine = estimator.with_config().engine
    events = []
    network_fields, original_unpack = engine.network_fields, inference.unpack
    monkeypatch.setattr(engine, "network_fields", lambda batch: events.append("network") or network_fields(batch))
    monkeypatch.setattr(inference, "unpack", lambda *a: events.append("host") or original_unpack(*a))
    photo = cv2.imread(str(sorted((data_dir / "coco_val2017_mini").glob("*.jpg"))[0]))
    prepared = [estimator.prepare(photo)] * 5
    first = engine.peaks(prepared, CONFIG, batch_size=1)
    assert events == ["network", "network", "host", "network", "host", "network", "host", "network", "host", "host"]
    second = engine.peaks(prepared, CONFIG, batch_size=1)
    assert engine.transfers.inputs.allocated == 3  # 10 chunks, 3 buffers
    for a, b in zip(first + second, first[:1] * 10):
        np.testing.assert_array_equal(a.peaks.xy, b.peaks.xy)
        np.testing.assert_array_equal(a.candidates.score, b.candidates.score)


def test_the_input_ring_hands_buffers_out_in_turn_and_lets_old_shapes_go():
    from openpose_ray.transfers import HostRing

    ring = HostRing(pin=False, depth=2)
    first = [ring.take((4, 8, 8, 3)).buffer for _ in range(5)]
    assert [b is first[0] for b in first] == [True, False, True, False, True] and ring.allocated == 2
    for width in range(9, 20):  # photos of many shapes: at most 8 shapes' buffers are kept
        ring.take((4, 8, width, 3))
    assert len(ring._rings) == 8 and ((4, 8, 8, 3), torch.uint8) not in ring._rings
