"""2D+t sequences on real MRML (slicer-core; issue 5): a vtkMRMLSequenceNode of single-frame volume nodes (grey
ultrasound or RGB endoscopy), browsed by a vtkMRMLSequenceBrowserNode, goes through the Logic
(``start_sequence``) and comes back as a segmentation Sequence synchronised in the same browser, with the trained
tiny model reaching Dice >= 0.85 on held-out sequences; a correction drawn on the proxy segmentation of one frame
propagates (``SequenceRun.refine``), the corrected frame stays exactly as drawn, and undo restores every frame.
Also: multi-frame volumes, cancel, bad inputs, and the .seq.nrrd files Slicer reads and writes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import vtk
from vtkmodules.util import numpy_support

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from synthetic import CORRECTION_FRAME, SHADOW_SEEDS, dice, moving_object_sequence, shadowed_sequence  # noqa: E402

from TextPromptSegLib.engine.progress import Cancelled  # noqa: E402

PROMPT = "the bright disc"
HELD_OUT = (7101, 7102, 7103)  # sequences no training step saw (training seeds are 1100000 + step)


@pytest.fixture()
def env(mrml):
    """The scene of ``mrml`` plus the Sequences module logic (which creates and updates proxy nodes)."""
    import slicer

    sequences = slicer.vtkSlicerSequencesLogic()
    sequences.SetMRMLApplicationLogic(mrml.app_logic)
    sequences.SetMRMLScene(mrml.scene)
    mrml.app_logic.SetModuleLogic("Sequences", sequences)
    mrml.sequences = sequences
    return mrml


def _ijk_to_ras(spacing=(0.25, 0.3)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.diag([-spacing[0], spacing[1], 1.0])  # flipped columns (anisotropic pixels by default)
    m[:3, 3] = (40.0, -12.0, 7.0)
    return m


def _frame_node(frame: np.ndarray, spacing=(0.25, 0.3)):
    """A single-slice scalar (grey) or vector (RGB) volume node holding ``frame`` (H, W[, 3])."""
    import slicer

    rgb = frame.ndim == 3
    node = slicer.vtkMRMLVectorVolumeNode() if rgb else slicer.vtkMRMLScalarVolumeNode()
    image = vtk.vtkImageData()
    image.SetDimensions(frame.shape[1], frame.shape[0], 1)
    values = np.ascontiguousarray(frame).reshape(-1, 3) if rgb else np.ascontiguousarray(frame).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values, deep=True))
    node.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, _ijk_to_ras(spacing)[r, c])
    node.SetIJKToRASMatrix(matrix)
    return node


def _recording(env, frames: np.ndarray, name: str = "US", spacing=(0.25, 0.3)):
    """A sequence of frame volume nodes (index: time in s) played by a browser, as a loaded recording is."""
    scene = env.scene
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("s")
    for t, frame in enumerate(frames):
        sequence.SetDataNodeAtValue(_frame_node(frame, spacing), f"{0.04 * t:.2f}")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", name + " browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    env.sequences.UpdateProxyNodesFromSequences(browser)
    return sequence, browser


def _run(logic, node, env, **kwargs):
    job = logic.start_sequence(node, [PROMPT], device="cpu", sequences_logic=env.sequences, **kwargs)
    assert job.done.wait(300)
    return job.finish()


def _item_masks(run) -> np.ndarray:
    from TextPromptSegLogic.sequences import item_mask

    out = []
    for t, frame_node in enumerate(run.source.frame_nodes):
        item = run.output_node.GetDataNodeAtValue(run.source.index_values[t], True)
        out.append(item_mask(item, run.segment_ids[PROMPT], frame_node)[0])
    return np.stack(out)


@pytest.mark.parametrize("rgb", [False, True])
def test_sequence_node_gives_a_segmentation_sequence(env, sequence_model, rgb):
    import TextPromptSegLogic as tl

    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: sequence_model)
    scores = []
    for seed in HELD_OUT:
        frames, truth = moving_object_sequence(seed, 12, rgb=rgb)
        sequence, browser = _recording(env, frames, f"US{seed}")
        proxy = browser.GetProxyNode(sequence)
        assert proxy.IsA("vtkMRMLVectorVolumeNode" if rgb else "vtkMRMLScalarVolumeNode")
        run = _run(logic, proxy, env)  # the volume the panel's selector shows: its sequence is segmented

        output = run.output_node
        assert output.IsA("vtkMRMLSequenceNode") and output.GetDataNodeClassName() == "vtkMRMLSegmentationNode"
        assert output.GetNumberOfDataNodes() == 12
        assert [output.GetNthIndexValue(i) for i in range(12)] == [sequence.GetNthIndexValue(i) for i in range(12)]
        assert (output.GetIndexName(), output.GetIndexUnit()) == ("time", "s")
        assert run.browser_node is browser and browser.IsSynchronizedSequenceNode(output, True)
        assert browser.GetSaveChanges(output)
        item = output.GetNthDataNode(5)
        segment = item.GetSegmentation().GetSegment(run.segment_ids[PROMPT])
        value = vtk.reference("")
        assert segment.GetTag(tl.PROMPT_TAG, value) and str(value) == PROMPT
        assert segment.GetName() == PROMPT and len(run.outcomes) == 1

        masks = _item_masks(run)
        scores.append(dice(masks, truth))
        # the proxy segmentation shows the browser's current frame
        seg_proxy = browser.GetProxyNode(output)
        for t in (2, 9):
            browser.SetSelectedItemNumber(t)
            env.sequences.UpdateProxyNodesFromSequences(browser)
            from TextPromptSegLogic.sequences import item_mask

            shown = item_mask(seg_proxy, run.segment_ids[PROMPT], run.source.frame_nodes[t])[0]
            assert np.array_equal(shown, masks[t])
    # a re-run of the same prompt updates the same segmentation sequence and segment
    again = _run(logic, proxy, env, start_frame=0)
    assert again.output_node is output and again.segment_ids == run.segment_ids
    assert output.GetNthDataNode(0).GetSegmentation().GetNumberOfSegments() == 1
    print(f"{'RGB' if rgb else 'grey'} Slicer sequences: Dice {np.round(scores, 3)}")
    assert np.mean(scores) >= 0.85
    logic.shutdown()


def _correct_and_refine(env, logic, seed):
    """Segment a shadowed recording in MRML, paint the true disc into the proxy on the correction frame (as the
    Segment Editor would), refine from it; returns (run, truth, masks before, masks after, refinement)."""
    import slicer
    import TextPromptSegLogic as tl

    frames, truth = shadowed_sequence(seed)
    sequence, browser = _recording(env, frames, f"US{seed}", spacing=(0.3, 0.3))  # square pixels, as in the lib test
    run = _run(logic, sequence, env)
    before = _item_masks(run)
    k = CORRECTION_FRAME
    browser.SetSelectedItemNumber(k)
    env.sequences.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(run.output_node)
    drawn = tl.mask_to_oriented_image(truth[k][None], run.source.frame_nodes[k])
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        drawn, proxy, run.segment_ids[PROMPT], slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    job = run.refine()  # the browser's current frame, the run's only prompt
    assert job.done.wait(300)
    refinement = job.finish()
    return run, truth, before, _item_masks(run), refinement


def test_correction_on_the_proxy_propagates_and_undo_restores(env, sequence_model):
    import TextPromptSegLogic as tl

    from TextPromptSegLib.engine.sequence import segment_sequence
    from TextPromptSegLib.io.volumes import sequence_from_array

    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: sequence_model)
    k = CORRECTION_FRAME
    gains = []
    for seed in SHADOW_SEEDS[:3]:
        run, truth, before, after, refinement = _correct_and_refine(env, logic, seed)
        assert np.array_equal(after[k], truth[k])  # the corrected frame exactly as drawn
        # MRML holds exactly what the engine computes for the same frames (same pixel size) and correction
        frames = sequence_from_array(shadowed_sequence(seed)[0], spacing=(0.3, 0.3))
        result, interactive = segment_sequence(frames, [PROMPT], sequence_model)
        assert np.array_equal(before, interactive.frame_masks(result.segments[0]))
        expected = interactive.refine(result.segments[0], k, truth[k])
        assert np.array_equal(after, interactive.frame_masks(expected.segment))
        assert refinement.changed == expected.changed
        untouched = [t for t in range(len(truth)) if t not in refinement.visited]
        assert all(np.array_equal(after[t], before[t]) for t in untouched)
        neighbours = [k - 2, k - 1, k + 1, k + 2]
        gains.append(np.mean([dice(after[j][None], truth[j][None]) - dice(before[j][None], truth[j][None])
                              for j in neighbours]))
    print(f"Slicer refinement: neighbours' Dice gain per recording {np.round(gains, 3)}")
    assert np.mean(gains) > 0.03

    # cancel: nothing changes; undo: the refinement, then the segmentation, bit for bit
    cancelled = run.refine()
    cancelled.cancel.cancel()
    assert cancelled.done.wait(300)
    with pytest.raises(Cancelled):
        cancelled.finish()
    assert np.array_equal(_item_masks(run), after)
    assert run.undo()
    restored = _item_masks(run)
    assert np.array_equal(np.delete(restored, k, 0), np.delete(before, k, 0))
    assert np.array_equal(restored[k], truth[k])  # the user's own edit is not the refinement's to undo
    assert run.undo()  # the segmentation itself: the segment disappears from every item
    assert all(run.output_node.GetNthDataNode(i).GetSegmentation().GetSegment(run.segment_ids[PROMPT]) is None
               for i in range(len(truth)))
    assert not run.undo()
    logic.shutdown()


def test_multi_frame_rgb_volume_is_segmented_frame_by_frame(env, sequence_model):
    import TextPromptSegLogic as tl

    frames, truth = moving_object_sequence(HELD_OUT[0], 12, rgb=True)
    node = env.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "endoscopy video")
    image = vtk.vtkImageData()
    image.SetDimensions(frames.shape[2], frames.shape[1], frames.shape[0])  # k = time
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(frames.reshape(-1, 3), deep=True))
    node.SetAndObserveImageData(image)
    node.SetSpacing(0.5, 0.5, 40.0)  # a large "spacing" along time must not change the slicing axis
    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: sequence_model)
    run = _run(logic, node, env)
    output = run.output_node
    assert output.IsA("vtkMRMLSegmentationNode") and output.GetSegmentation().GetNumberOfSegments() == 1
    from TextPromptSegLogic.sequences import item_mask

    masks = item_mask(output, run.segment_ids[PROMPT], node)  # (t, y, x) on the volume's grid
    score = dice(masks, truth)
    print(f"multi-frame RGB volume: Dice {score:.3f}")
    assert score >= 0.85
    assert run.undo() and output.GetSegmentation().GetNumberOfSegments() == 0
    logic.shutdown()


def test_cancel_leaves_the_scene_unchanged(env, sequence_model):
    import TextPromptSegLogic as tl

    frames, _ = moving_object_sequence(HELD_OUT[0], 12)
    sequence, _ = _recording(env, frames)
    before = env.scene.GetNumberOfNodes()
    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: sequence_model)
    job = logic.start_sequence(sequence, [PROMPT], device="cpu", sequences_logic=env.sequences)
    job.cancel.cancel()
    assert job.done.wait(300)
    with pytest.raises(Cancelled):
        job.finish()
    assert env.scene.GetNumberOfNodes() == before
    logic.shutdown()


def test_bad_sequences_are_refused_before_any_work(env, sequence_model):
    import slicer
    import TextPromptSegLogic as tl

    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: sequence_model)
    volumes = env.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "4D CT")
    for t in range(2):
        node = slicer.vtkMRMLScalarVolumeNode()
        image = vtk.vtkImageData()
        image.SetDimensions(20, 20, 6)
        image.AllocateScalars(vtk.VTK_SHORT, 1)
        node.SetAndObserveImageData(image)
        volumes.SetDataNodeAtValue(node, str(t))
    with pytest.raises(ValueError, match="3D volume"):
        logic.start_sequence(volumes, [PROMPT])
    transforms = env.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "probe poses")
    for t in range(2):
        transforms.SetDataNodeAtValue(slicer.vtkMRMLLinearTransformNode(), str(t))
    with pytest.raises(ValueError, match="not image frames"):
        logic.start_sequence(transforms, [PROMPT])
    with pytest.raises(ValueError, match="prompt"):
        logic.start_sequence(volumes, ["  "])


@pytest.mark.parametrize("rgb", [False, True])
def test_seq_nrrd_files_read_and_written_like_slicer(env, tmp_path, rgb):
    """Slicer's own .seq.nrrd (vtkMRMLVolumeSequenceStorageNode) reads as the right frames, and the label
    sequence we write loads back in Slicer as labelmap frames on the input frames' geometry."""
    import slicer

    from TextPromptSegLib.io.volumes import read_volume
    from TextPromptSegLib.io.writers import write_label_sequence

    frames, truth = moving_object_sequence(HELD_OUT[1], 6, size=48, rgb=rgb)
    sequence, _ = _recording(env, frames)
    storage = env.scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    storage.SetFileName(str(tmp_path / "recording.seq.nrrd"))
    assert storage.WriteData(sequence)
    volume = read_volume(tmp_path / "recording.seq.nrrd")
    assert volume.is_sequence and np.array_equal(volume.array, frames)
    assert volume.sequence.values == tuple(sequence.GetNthIndexValue(i) for i in range(6))
    assert (volume.sequence.name, volume.sequence.unit) == ("time", "s")
    assert np.allclose(volume.spacing[:2], (0.25, 0.3))

    write_label_sequence(volume, truth.astype(np.uint8) * 3, tmp_path / "labels.seq.nrrd")
    labels = env.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "labels")
    reader = env.scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    reader.SetFileName(str(tmp_path / "labels.seq.nrrd"))
    assert reader.ReadData(labels)
    assert labels.GetNumberOfDataNodes() == 6 and labels.GetIndexName() == "time"
    for t in range(6):
        item = labels.GetNthDataNode(t)
        assert item.IsA("vtkMRMLLabelMapVolumeNode")
        assert labels.GetNthIndexValue(t) == sequence.GetNthIndexValue(t)
        image = item.GetImageData()
        array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(image.GetDimensions()[::-1])
        assert np.array_equal(array[0], truth[t].astype(np.uint8) * 3)
        got, want = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        item.GetIJKToRASMatrix(got)
        sequence.GetNthDataNode(t).GetIJKToRASMatrix(want)
        got = np.array([[got.GetElement(r, c) for c in range(4)] for r in range(4)])
        want = np.array([[want.GetElement(r, c) for c in range(4)] for r in range(4)])
        # every voxel of the single-slice frame at the same RAS position (i, j axes and origin; Slicer's reader
        # picks the k direction of a one-slice frame itself, which moves no voxel)
        assert np.allclose(got[:3, [0, 1, 3]], want[:3, [0, 1, 3]])
    assert isinstance(labels, slicer.vtkMRMLSequenceNode)
