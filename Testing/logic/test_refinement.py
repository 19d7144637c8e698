"""Interactive refinement on real MRML with a model that tracks (issue 5, must-show 1).

The model is the tiny TGSAM-2 of Testing/fixtures/tgsam2-tiny-interactive, trained on the synthetic scenes of
Testing/interactive_model.py (bright discs A and B, a dark square Q) by scripts/train_interactive_test_model.py.
The volume is such a scene: 28 slices along k, disc A and square Q on slices 4..23, a second bright disc B on
slices 10..16 only, on an oblique, flipped IJK-to-RAS matrix, so every prompt also goes through the RAS -> IJK ->
frame mapping.

Shown: "the bright disc" run from slice 13 also takes disc B on 10..16 (the mistake text alone makes when two
objects of a kind are present, as with the two kidneys); slice 13 corrected by painting disc A alone (the
deliberately wrong slice, corrected with the Segment Editor) and refined pulls the neighbouring slices to A (Dice
to A and coverage of B, before vs after), slices beyond the reach of the change stay bit for bit as they were and
are not even visited although they hold disc A, the corrected slice stays exactly as painted, no slice is
re-encoded, and undo restores the segment bit for bit; on "the dark square", a positive click on disc A adds it
(and not B) and a negative one takes it out again; a box picks the boxed disc; a cancelled refinement restores the
slices it had already drawn; a changed volume invalidates the kept state.
"""

from __future__ import annotations

import queue
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import vtk
from test_logic import _draw_segment, _oblique_flipped, _segment_array, _volume_node

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from interactive_model import FIXTURE, GENERIC_PROMPTS, dice, make_scene  # noqa: E402

from TextPromptSegLib.engine.progress import Cancelled  # noqa: E402

K = 13  # the start, corrected and clicked slice
SLICES = 28
OBJECTS = (4, 23)  # slices holding disc A and square Q
B_SLICES = (10, 16)  # slices holding disc B too
NEAR = [i for i in range(B_SLICES[0], B_SLICES[1] + 1) if i != K]  # K's neighbours where the run took B as well


@pytest.fixture(scope="module")
def interactive_model():
    from TextPromptSegLib.modeling.build import build_model

    return build_model(FIXTURE)


@pytest.fixture()
def case(mrml, interactive_model):
    """The scene's volume node (oblique, flipped), a segmentation with a hand-drawn segment, a Logic, and the
    ground truth of discs A and B and square Q in frame space."""
    import TextPromptSegLogic as tl
    from TextPromptSegLogic.interactive import slice_geometry

    scene = make_scene(SLICES, interactive_model.image_size, np.random.default_rng(7), present=OBJECTS,
                       b_frames=B_SLICES)
    volume_node = _volume_node(mrml, scene.images, _oblique_flipped())
    seg_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    hand = np.zeros(scene.images.shape, bool)
    hand[2:5, 100:120, 5:30] = True
    hand_id = _draw_segment(seg_node, volume_node, hand)
    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: interactive_model)
    geometry = slice_geometry(volume_node)
    yield {"mrml": mrml, "scene": scene, "volume": volume_node, "seg": seg_node, "hand": (hand_id, hand),
           "logic": logic, "geometry": geometry, "A": geometry.to_frames(scene.a), "B": geometry.to_frames(scene.b),
           "Q": geometry.to_frames(scene.q)}
    logic.shutdown()


def _frames(case, segment_id) -> np.ndarray:
    """The segment exported by Slicer onto the volume grid (an empty segment exports no voxels), as frames."""
    try:
        volume = _segment_array(case["seg"], segment_id, case["volume"], case["mrml"])
    except AttributeError:  # vtk_to_numpy(None): nothing exported
        volume = np.zeros(case["scene"].images.shape, bool)
    return case["geometry"].to_frames(volume)


def _ras_of(case, mask_zyx_slice: np.ndarray, k: int) -> np.ndarray:
    """World RAS of the centre voxel of a disc on volume slice k."""
    rows, cols = np.nonzero(mask_zyx_slice)
    return (_oblique_flipped() @ np.array([cols.mean(), rows.mean(), k, 1.0]))[:3]


def _click(case, role: str, disc: str, k: int = K):
    node = case["logic"].prompt_node(case["mrml"].scene, role)
    node.AddControlPoint(vtk.vtkVector3d(*_ras_of(case, getattr(case["scene"], disc)[k], k)))
    return node


def _paint_slice(case, segment_id, k: int, frame_mask: np.ndarray) -> np.ndarray:
    """What the Segment Editor does: replace the segment's voxels on one slice. Returns the painted frames."""
    import slicer
    import TextPromptSegLogic as tl

    frames = _frames(case, segment_id).copy()
    frames[k] = frame_mask
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        tl.mask_to_oriented_image(case["geometry"].from_frames(frames), case["volume"]), case["seg"], segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    return frames


def _mean_dice(frames: np.ndarray, truth: np.ndarray, slices) -> float:
    return float(np.mean([dice(frames[i], truth[i]) for i in slices]))


def _covered(frames: np.ndarray, truth: np.ndarray, slices) -> float:
    """The fraction of ``truth``'s pixels on ``slices`` that ``frames`` holds."""
    return float(sum((frames[i] & truth[i]).sum() for i in slices) / sum(truth[i].sum() for i in slices))


def _wrong_then_painted(case) -> tuple[str, np.ndarray, np.ndarray]:
    """The deliberately wrong slice: "the bright disc" run from slice K takes both discs on B_SLICES; then slice K
    painted with disc A alone (what the Segment Editor does). Returns the segment, its frames before painting and
    after painting."""
    [outcome] = case["logic"].process(case["volume"], case["seg"], ["the bright disc"], device="cpu", start_slice=K)
    first = _frames(case, outcome.segment_id)
    return outcome.segment_id, first, _paint_slice(case, outcome.segment_id, K, case["A"][K])


def _run_on(case, prompt: str, visual=None) -> str:
    [outcome] = case["logic"].process(case["volume"], case["seg"], [prompt], device="cpu", start_slice=K,
                                      visual=visual)
    return outcome.segment_id


@pytest.mark.slow
def test_a_corrected_slice_pulls_its_neighbours_and_leaves_far_slices(case):
    logic, A, B = case["logic"], case["A"], case["B"]
    segment_id, first, painted = _wrong_then_painted(case)
    session = logic.session_for(case["seg"], segment_id)
    assert session is not None and session.encode_count == SLICES
    a_only = [i for i in range(OBJECTS[0], OBJECTS[1] + 1) if not B_SLICES[0] <= i <= B_SLICES[1]]
    print(f"\ntext run: Dice to A where A is alone {_mean_dice(first, A, a_only):.3f}; on slices {NEAR[0]}..{NEAR[-1]}"
          f" it covers A {_covered(first, A, NEAR):.2f} and B {_covered(first, B, NEAR):.2f}")
    assert _mean_dice(first, A, a_only) >= 0.8  # the run found disc A ...
    assert _covered(first, B, NEAR) >= 0.7  # ... and took disc B too: the slices to correct

    outcome = logic.refine_from_slice(case["volume"], case["seg"], segment_id, K, device="cpu")
    after = _frames(case, segment_id)

    assert np.array_equal(after[K], A[K]) and np.array_equal(after[K], painted[K])  # the corrected slice as drawn
    before_dice, after_dice = _mean_dice(painted, A, NEAR), _mean_dice(after, A, NEAR)
    before_b, after_b = _covered(painted, B, NEAR), _covered(after, B, NEAR)
    far = [i for i in range(SLICES) if i not in outcome.visited_slices]
    far_a = [i for i in far if A[i].any()]
    print(f"neighbours {NEAR[0]}..{NEAR[-1]} of slice {K}: Dice to disc A {before_dice:.3f} before, {after_dice:.3f} "
          f"after; disc B covered {before_b:.2f} before, {after_b:.2f} after; "
          f"visited {sorted(outcome.visited_slices)}, changed {sorted(outcome.changed_slices)}; "
          f"not visited: {far} ({len(far_a)} of them hold disc A), voxels changed there: "
          f"{sum(int((after[i] != painted[i]).sum()) for i in far)}")
    assert after_dice >= 0.85 and after_dice >= before_dice + 0.15  # toward the correction ...
    assert after_b <= 0.1 and _covered(after, A, NEAR) >= 0.85  # ... B dropped, A kept
    assert len(far) >= 8 and min(far) == 0 and max(far) == SLICES - 1  # both directions stopped early ...
    assert len(far_a) >= 4  # ... also on slices that hold the object
    assert all(np.array_equal(after[i], painted[i]) for i in far)  # far slices: bit for bit
    unchanged = [i for i in range(SLICES) if i not in outcome.changed_slices]
    assert all(np.array_equal(after[i], painted[i]) for i in unchanged)
    assert outcome.encoded_slices == 0 and session.encode_count == SLICES  # nothing re-encoded
    assert logic.session_for(case["seg"], segment_id) is session
    hand_id, hand = case["hand"]
    assert np.array_equal(_segment_array(case["seg"], hand_id, case["volume"], case["mrml"]), hand)

    # the per-slice strip follows the refinement
    quality = logic.slice_quality(case["seg"], segment_id)
    assert np.allclose(quality.areas_mm2, after.reshape(SLICES, -1).sum(1) * 0.8 * 0.8)

    assert logic.undo()  # back to the painted state, bit for bit, and to the state before the refinement
    restored = _frames(case, segment_id)
    print(f"undo: {int((restored != painted).sum())} voxels differ from the segment before the refinement")
    assert np.array_equal(restored, painted)
    assert logic.segment_state(case["seg"], segment_id).corrections == {}


@pytest.mark.slow
def test_a_positive_click_adds_the_clicked_object_and_a_negative_one_removes_it(case):
    logic, A, B, Q = case["logic"], case["A"], case["B"], case["Q"]
    segment_id = _run_on(case, "the dark square")
    first = _frames(case, segment_id)
    on_k = [K]
    print(f"\n'the dark square' on slice {K}: covers the square {_covered(first, Q, on_k):.2f}, disc A "
          f"{_covered(first, A, on_k):.2f}, disc B {_covered(first, B, on_k):.2f}")
    assert _covered(first, Q, on_k) >= 0.7 and _covered(first, A, on_k) <= 0.2 and _covered(first, B, on_k) <= 0.2

    positive = _click(case, "positive", "a")
    negative = logic.prompt_node(case["mrml"].scene, "negative")
    outcome = logic.update_from_points(case["volume"], case["seg"], segment_id, [negative, positive], device="cpu")
    added = _frames(case, segment_id)
    print(f"positive click on disc A (slice {K}): A covered {_covered(first, A, on_k):.2f} -> "
          f"{_covered(added, A, on_k):.2f}; square kept {_covered(added, Q, on_k):.2f}, disc B "
          f"{_covered(added, B, on_k):.2f}; changed {sorted(outcome.changed_slices)}")
    assert outcome.slice_index == K and K in outcome.changed_slices and outcome.encoded_slices == 0
    assert _covered(added, A, on_k) >= 0.7 and _covered(added, Q, on_k) >= 0.7  # the clicked region is added ...
    assert _covered(added, B, on_k) <= 0.3  # ... and only that one
    untouched = [i for i in range(SLICES) if i not in outcome.changed_slices]
    assert untouched and all(np.array_equal(added[i], first[i]) for i in untouched)

    assert logic.undo()  # the click undone bit for bit
    restored = _frames(case, segment_id)
    print(f"undo: {int((restored != first).sum())} voxels differ from the segment before the click")
    assert np.array_equal(restored, first)

    # the same click again gives A and Q; then, the positive point removed, a negative click on A takes A out
    logic.update_from_points(case["volume"], case["seg"], segment_id, [negative, positive], device="cpu")
    assert np.array_equal(_frames(case, segment_id), added)  # deterministic: redone, the same voxels
    positive.RemoveAllControlPoints()
    negative = _click(case, "negative", "a")
    logic.update_from_points(case["volume"], case["seg"], segment_id, [positive, negative], device="cpu")
    removed = _frames(case, segment_id)
    print(f"negative click on disc A: A covered {_covered(added, A, on_k):.2f} -> {_covered(removed, A, on_k):.2f}, "
          f"square kept {_covered(removed, Q, on_k):.2f}")
    assert _covered(removed, A, on_k) <= 0.2 and _covered(removed, Q, on_k) >= 0.7


@pytest.mark.slow
def test_a_box_picks_the_boxed_disc(case):
    import TextPromptSegLogic as tl

    logic, A, B = case["logic"], case["A"], case["B"]
    scene = case["scene"]
    rows, cols = np.nonzero(scene.b[K])
    roi = logic.prompt_node(case["mrml"].scene, "box")
    matrix = _oblique_flipped()
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    orientation = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            orientation.SetElement(r, c, matrix[r, c] / spacing[c])
    roi.SetAndObserveObjectToNodeMatrix(orientation)
    roi.SetCenterWorld(*(matrix @ np.array([cols.mean(), rows.mean(), K, 1.0]))[:3])
    roi.SetSize((np.ptp(cols) + 2) * spacing[0], (np.ptp(rows) + 2) * spacing[1], 0.0)
    visual = logic.collect_visual_prompts(case["volume"])
    assert list(visual.box_prompts) == [K]
    segment_id = _run_on(case, GENERIC_PROMPTS[0], visual)
    frames = _frames(case, segment_id)
    print(f"\nbox on disc B: Dice to B {dice(frames[K], B[K]):.2f}, to A {dice(frames[K], A[K]):.2f} on slice {K} "
          f"({int(frames[K].sum())} pixels, B {int(B[K].sum())}, within B {int((frames[K] & B[K]).sum())})")
    assert dice(frames[K], B[K]) >= 0.7 and dice(frames[K], A[K]) <= 0.2
    assert isinstance(logic.slice_quality(case["seg"], segment_id), tl.SliceQuality)


@pytest.mark.slow
def test_cancelled_refinement_restores_the_slices_it_drew(case):
    logic = case["logic"]
    segment_id, _, painted = _wrong_then_painted(case)
    gate = threading.Event()
    logic._worker_thread().submit(gate.wait)  # hold the worker so the job's progress queue can be watched

    job = logic.start_refine_from_slice(case["volume"], case["seg"], segment_id, K, device="cpu")

    class CancelAfterTwoSlices(queue.Queue):
        def put(self, item, *args, **kwargs):
            super().put(item, *args, **kwargs)
            if item.mask is not None and item.slice_index in (K - 2, K + 2):
                job.cancel.cancel()

    job.events = CancelAfterTwoSlices()
    gate.set()
    drawn = []
    while not job.done.wait(0.05):
        drawn += logic.show_refinement_progress(job, job.poll(), case["volume"], case["seg"])
    drawn += logic.show_refinement_progress(job, job.poll(), case["volume"], case["seg"])
    assert {K + 1, K + 2} <= set(drawn) or {K - 1, K - 2} <= set(drawn)  # slices were drawn while it ran
    with pytest.raises(Cancelled):
        logic.finish(job, case["volume"], case["seg"])
    assert np.array_equal(_frames(case, segment_id), painted)  # and put back on cancel


@pytest.mark.slow
def test_a_changed_volume_invalidates_the_kept_state(case):
    logic, A, B = case["logic"], case["A"], case["B"]
    segment_id, _, painted = _wrong_then_painted(case)
    session = logic.session_for(case["seg"], segment_id)
    case["volume"].GetImageData().Modified()  # e.g. the user edited the voxels
    outcome = logic.refine_from_slice(case["volume"], case["seg"], segment_id, K, device="cpu")
    assert logic.session_for(case["seg"], segment_id) is not session  # a new session for the new voxels
    after = _frames(case, segment_id)
    assert np.array_equal(after[K], A[K]) and outcome.encoded_slices > 0
    near = [K - 2, K - 1, K + 1, K + 2]  # refined from the segment's voxels: the correction still carries
    print(f"\nrefined from the voxels: Dice to A on {near} {_mean_dice(painted, A, near):.3f} -> "
          f"{_mean_dice(after, A, near):.3f}, B covered {_covered(painted, B, near):.2f} -> "
          f"{_covered(after, B, near):.2f}")
    assert _mean_dice(after, A, near) >= max(0.85, _mean_dice(painted, A, near) + 0.15)
    assert _covered(after, B, near) <= 0.1


@pytest.mark.slow
def test_quality_strip_is_kept_in_the_scene(case):
    import TextPromptSegLogic as tl

    logic = case["logic"]
    segment_id, _, _ = _wrong_then_painted(case)
    quality = logic.slice_quality(case["seg"], segment_id)
    assert quality.scores.shape == (SLICES,) and quality.least_confident is not None
    reached = np.flatnonzero(~np.isnan(quality.scores))
    assert np.abs(quality.scores[quality.least_confident]) == np.abs(quality.scores[reached]).min()
    inside = list(range(OBJECTS[0] + 1, OBJECTS[1]))
    assert (quality.scores[inside] > 0).all() and (quality.scores[:3] < 0).all() and (quality.scores[-3:] < 0).all()
    chart = logic.quality_chart(case["seg"], segment_id)
    assert chart is not None and chart.GetNumberOfPlotSeriesNodes() == 2

    fresh = tl.TextPromptSegLogic()  # e.g. after reopening the scene: only the table node is left
    stored = fresh.slice_quality(case["seg"], segment_id)
    assert np.allclose(stored.scores, quality.scores, equal_nan=True) and stored.least_confident == \
        quality.least_confident
    ras = fresh.slice_jump_point(case["volume"], stored.least_confident, case["seg"], segment_id)
    from TextPromptSegLogic.interactive import ras_to_frame

    assert round(ras_to_frame(case["volume"], ras[None])[0, 0]) == stored.least_confident
