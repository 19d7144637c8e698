"""Engine side of interactive refinement (issue 5): boxes become SAM-2 box points, clicks correct the current
mask, a refinement reports (through progress) exactly the slices it changed and keeps every other slice bit for
bit, and existing masks can stand in for a previous result. Behaviour that needs a model that tracks is tested
on real MRML with a trained model in Testing/logic/test_refinement.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from TextPromptSegLib.engine.pipeline import (
    PreparedVolume,
    SegmentRequest,
    model_point_prompts,
    refine_volume,
    result_from_masks,
    segment_volume,
)
from TextPromptSegLib.engine.propagation import Propagator, masks_match
from TextPromptSegLib.io.volumes import read_volume


@pytest.fixture(scope="module")
def la_volume(shared_data):
    case = sorted((shared_data / "la2018" / "train").iterdir())[0]
    volume = read_volume(case / "image.nii.gz")
    volume.array = volume.array[30:42]
    return volume


@pytest.fixture()
def present_model(tiny_model):
    """The shared tiny model with its object-score head saying "present" (restored afterwards), so that random
    weights give non-empty, slice-dependent masks and refinements change something."""
    bias = tiny_model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.fill_(20.0)
    yield tiny_model
    with torch.no_grad():
        bias.copy_(saved)


def test_a_box_becomes_two_corner_points_before_the_clicks(la_volume, tiny_model):
    prepared = PreparedVolume(la_volume, tiny_model.image_size)
    transform = prepared.transform
    prompts = model_point_prompts(transform, {4: ([(50.0, 60.0)], [0])}, {4: (80.0, 90.0, 20.0, 30.0)})
    assert prompts[4]["labels"] == [2, 3, 0]
    expected = transform.frame_points_to_model(np.array([[20.0, 30.0], [80.0, 90.0], [50.0, 60.0]]))
    assert np.allclose(prompts[4]["coords"], expected)  # top-left corner first, whatever order it was given in
    with pytest.raises(ValueError, match="labels"):
        model_point_prompts(transform, {1: ([(1.0, 2.0)], [2])})

    result = segment_volume(la_volume, [SegmentRequest("the left atrium", box_prompts={6: (20, 30, 80, 90)})],
                            tiny_model)
    assert result.segments[0].start_slice == 6  # the boxed slice conditions the propagation


def test_refinement_reports_and_writes_only_changed_slices(la_volume, present_model):
    prepared = PreparedVolume(la_volume, present_model.image_size)
    session = Propagator(present_model, "cpu").start_session(prepared.frame_source())
    first = session.propagate("the left atrium", start_index=5)
    encoded = session.encode_count
    shape = prepared.frames.shape[1:3]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    drawn = (yy - shape[0] * 0.4) ** 2 + (xx - shape[1] * 0.6) ** 2 < (min(shape) * 0.15) ** 2
    events = []
    refined = refine_volume(prepared, session, "the left atrium", first, 8, mask=drawn, unchanged_iou=0.9,
                            progress=events.append)
    assert session.encode_count == encoded
    assert refined.changed[0] == 8 and np.array_equal(refined.frame_masks[8], drawn)
    shown = {e.slice_index for e in events if e.mask is not None}
    assert shown == set(refined.changed)  # every changed slice was announced with its mask, nothing else
    for e in events:
        if e.mask is not None:
            assert e.phase == "refine" and e.mask.shape == shape and np.array_equal(e.mask, refined.frame_masks[
                e.slice_index])
    new, old = refined.propagation, first
    for i in range(len(prepared)):
        if i not in refined.changed:  # visited but matching, or never visited: the previous logits bit for bit
            assert torch.equal(new.logits[i], old.logits[i]) and new.scores[i] == old.scores[i]
    assert set(refined.visited) >= set(refined.changed)

    # a click on a slice: the previous logits go in as the dense prompt; the result differs from a click alone
    click = ([(shape[0] * 0.4, shape[1] * 0.6)], [1])
    with_previous = refine_volume(prepared, session, "the left atrium", first, 3, points=click)
    blank = result_from_masks(prepared, np.zeros(prepared.frames.shape[:3], bool))
    without = refine_volume(prepared, session, "the left atrium", blank, 3, points=click)
    assert not torch.equal(with_previous.propagation.logits[3], without.propagation.logits[3])
    assert session.encode_count == encoded


def test_masks_match_tolerance():
    a = torch.full((8, 8), -5.0)
    a[2:6, 2:6] = 5.0
    b = a.clone()
    b[2, 2] = -5.0  # 15 of 16 pixels: IoU 0.9375
    assert masks_match(a, a) and not masks_match(a, b)
    assert masks_match(a, b, 0.9) and not masks_match(a, b, 0.95)
    assert masks_match(torch.full((8, 8), -1024.0), torch.full((8, 8), float("-inf")), 0.95)  # two empty masks


def test_existing_masks_stand_in_for_a_previous_result(la_volume, tiny_model):
    prepared = PreparedVolume(la_volume, tiny_model.image_size)
    shape = prepared.frames.shape[:3]
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    masks = np.zeros(shape, bool)
    masks[3:9] = (yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2) ** 2 < (min(shape[1:]) * 0.25) ** 2
    result = result_from_masks(prepared, masks)
    back = prepared.transform.logits_to_frame(result.logits)
    inter = (back & masks).sum()
    assert 2 * inter / (back.sum() + masks.sum()) > 0.95
    assert result.start_index in range(3, 9) and (result.scores > 0).tolist() == masks.any((1, 2)).tolist()
