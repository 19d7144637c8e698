"""segment_volume and the engine on a real volume (issue 7, must-show 2): every slice gets a result, the
processing order is as designed, encoding is batched and shared across prompts, cancel mid-run stops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from TextPromptSegLib.engine.pipeline import PreparedVolume, SegmentRequest, segment_volume
from TextPromptSegLib.engine.progress import Cancelled, CancelToken
from TextPromptSegLib.engine.propagation import Propagator
from TextPromptSegLib.io.volumes import InputError, Volume, read_volume


@pytest.fixture(scope="module")
def la_volume(shared_data) -> Volume:
    case = sorted((shared_data / "la2018" / "train").iterdir())[0]
    volume = read_volume(case / "image.nii.gz")
    volume.array = volume.array[30:46]  # 16 slices keep the test fast
    return volume


def test_bidirectional_propagation_from_a_middle_slice(la_volume, tiny_model):
    events = []
    result = segment_volume(la_volume, [SegmentRequest("the left atrium")], tiny_model, start_slice=7,
                            encode_batch_size=4, progress=events.append)
    seg = result.segments[0]
    run = seg.propagation
    n = la_volume.shape[0]
    assert run.order == [7, *range(8, n), *range(6, -1, -1)]  # start, forward to the end, backward to 0
    assert np.all(np.isfinite(seg.slice_scores)) and seg.slice_scores.shape == (n,)
    assert seg.mask.shape == la_volume.shape and seg.mask.dtype == bool
    assert [e.done for e in events if e.phase == "propagate"] == list(range(1, n + 1))


@pytest.mark.parametrize("direction,expected", [("forward", [7, 8, 9]), ("backward", [7, 6, 5])])
def test_one_direction_only(la_volume, tiny_model, direction, expected):
    result = segment_volume(la_volume, [SegmentRequest("the left atrium")], tiny_model, start_slice=7,
                            direction=direction)
    seg = result.segments[0]
    assert seg.propagation.order[:3] == expected
    untouched = range(0, 7) if direction == "forward" else range(8, la_volume.shape[0])
    assert all(np.isinf(seg.slice_scores[i]) for i in untouched)
    assert not result.geometry.to_frames(seg.mask)[list(untouched)].any()


def test_slice_range_limits_the_run_and_the_start_slice_search(la_volume, tiny_model):
    events = []
    result = segment_volume(la_volume, [SegmentRequest("the left atrium")], tiny_model, slice_range=(4, 11),
                            progress=events.append)
    seg = result.segments[0]
    located = [e.slice_index for e in events if e.phase == "locate"]
    assert located and all(4 <= i <= 11 for i in located)  # the coarse pass looks only inside the range
    assert 4 <= seg.start_slice <= 11
    assert sorted(seg.propagation.order) == list(range(4, 12))  # every slice of the range, once
    outside = [*range(0, 4), *range(12, la_volume.shape[0])]
    assert all(np.isinf(seg.slice_scores[i]) for i in outside)
    assert not result.geometry.to_frames(seg.mask)[outside].any()
    fixed = segment_volume(la_volume, [SegmentRequest("the left atrium")], tiny_model, start_slice=5,
                           slice_range=(5, 8)).segments[0]
    assert fixed.propagation.order == [5, 6, 7, 8]
    for bad in ((8, 4), (-1, 3), (0, la_volume.shape[0])):
        with pytest.raises(IndexError, match="slice range"):
            segment_volume(la_volume, [SegmentRequest("the left atrium")], tiny_model, slice_range=bad)
    with pytest.raises(IndexError, match="outside 5..8"):
        segment_volume(la_volume, [SegmentRequest("the left atrium")], tiny_model, start_slice=2, slice_range=(5, 8))


def test_time_estimate_comes_first_and_changes_nothing(la_volume, tiny_model):
    """The measured estimate is reported before any other work, reuses its encodings (each slice is still encoded
    once) and leaves the result bit for bit as without it. (How close it is to the real time is a benchmark
    matter: benchmarks/bench_propagation.py prints both.)"""
    propagator = Propagator(tiny_model, "cpu", encode_batch_size=4)
    prepared = PreparedVolume(la_volume, tiny_model.image_size)
    session = propagator.start_session(prepared.frame_source())
    events = []
    estimated = segment_volume(la_volume, [SegmentRequest("the left atrium")], propagator=propagator, session=session,
                               prepared=prepared, estimate=True, progress=events.append).segments[0]
    assert events[0].phase == "estimate" and 0 < events[0].eta_seconds < float("inf")
    assert [e.phase for e in events[1:]].count("estimate") == 0
    assert session.encode_count == len(prepared)
    plain = segment_volume(la_volume, [SegmentRequest("the left atrium")], tiny_model).segments[0]
    assert torch.equal(estimated.propagation.logits, plain.propagation.logits)
    assert estimated.propagation.order == plain.propagation.order


def test_encoding_is_batched_and_shared_between_prompts(la_volume, tiny_model):
    propagator = Propagator(tiny_model, "cpu", encode_batch_size=4)
    prepared = PreparedVolume(la_volume, tiny_model.image_size)
    source = prepared.frame_source()
    session = propagator.start_session(source)
    segment_volume(la_volume, [SegmentRequest("the left atrium"), SegmentRequest("the aorta")], propagator=propagator,
                   start_slice=3, session=session, prepared=prepared)
    assert max(source.requests) <= 4  # never more than one batch of frames in memory
    assert session.encode_count == len(prepared)  # each slice encoded once for both prompts

    # the position encodings depend on the image size only: every cached slice shares one copy, counted once
    cached = [session.backbone(i) for i in range(len(prepared))]
    assert all(c["vision_pos_enc"] is cached[0]["vision_pos_enc"] for c in cached)
    fpn_bytes = sum(x.nbytes for c in cached for x in c["backbone_fpn"])
    assert session._cache_size == fpn_bytes
    fresh = tiny_model.encode_backbone(tiny_model.normalize_images(source.get([5])))
    assert all(torch.equal(a, b) for a, b in zip(fresh["vision_pos_enc"], cached[5]["vision_pos_enc"]))


def test_cancel_mid_run_raises_and_stops(la_volume, tiny_model):
    token = CancelToken()
    seen = []

    def progress(event):
        seen.append(event.slice_index)
        if event.phase == "propagate" and event.done == 5:
            token.cancel()

    with pytest.raises(Cancelled):
        segment_volume(la_volume, [SegmentRequest("the left atrium")], tiny_model, start_slice=2, progress=progress,
                       cancel=token)
    assert len([s for s in seen if s >= 0]) == 5  # stopped within one slice of the cancel


def test_mask_prompt_is_kept_exactly_and_points_are_accepted(la_volume, tiny_model):
    prepared = PreparedVolume(la_volume, tiny_model.image_size)
    drawn = np.zeros(prepared.frames.shape[1:3], bool)
    drawn[40:70, 50:90] = True
    request = SegmentRequest("the left atrium", mask_prompts={5: drawn}, point_prompts={9: ([(55, 70)], [1])})
    result = segment_volume(la_volume, [request], tiny_model)
    seg = result.segments[0]
    assert seg.start_slice == 5
    assert np.array_equal(result.geometry.to_frames(seg.mask)[5], drawn)


@pytest.mark.parametrize("array,message", [
    (np.zeros((1, 64, 64), np.int16), "slice"),
    (np.full((8, 64, 64), 5, np.int16), "constant"),
    (np.zeros((8, 4, 4), np.int16) + np.arange(16).reshape(4, 4).astype(np.int16), "too small"),
])
def test_bad_volumes_are_rejected_clearly(tiny_model, array, message):
    with pytest.raises(InputError, match=message):
        segment_volume(Volume(array), [SegmentRequest("the spleen")], tiny_model)


def test_nan_voxels_are_handled(tiny_model):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(4, 32, 32)).astype(np.float32)
    array[1, 3:9, 4:7] = np.nan
    result = segment_volume(Volume(array), [SegmentRequest("the spleen")], tiny_model, start_slice=0)
    assert result.segments[0].mask.shape == (4, 32, 32)


def test_empty_prompt_is_rejected(la_volume, tiny_model):
    with pytest.raises(ValueError, match="empty"):
        segment_volume(la_volume, [SegmentRequest("  ")], tiny_model)


def test_refine_reuses_encodings_and_keeps_far_slices(la_volume, tiny_model):
    propagator = Propagator(tiny_model, "cpu", encode_batch_size=8)
    prepared = PreparedVolume(la_volume, tiny_model.image_size)
    session = propagator.start_session(prepared.frame_source())
    first = session.propagate("the left atrium", start_index=8)
    encoded = session.encode_count
    correction = np.zeros((tiny_model.image_size,) * 2, bool)
    correction[40:80, 40:80] = True
    refined = session.refine("the left atrium", first, frame=12, mask=correction, unchanged_run=2)
    assert session.encode_count == encoded  # no re-encoding
    assert refined.order[0] == 12
    untouched = [i for i in range(len(prepared)) if i not in refined.order]
    for i in untouched:
        assert torch.equal(refined.logits[i], first.logits[i])
