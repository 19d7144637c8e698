"""The module's Logic on real MRML (slicer-core; issue 3, must-show 1): segments land on the right voxels for
oblique and flipped IJK-to-RAS matrices, one named coloured segment per prompt, hand-drawn segments untouched
(even when named like the prompt or its library entry), re-running replaces only its own segment (and undo restores
it), cancel (before the run or between two slices) leaves the node unchanged, and the .seg.nrrd written by the
storage node reloads with names, colours and prompt tags."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtkmodules.util import numpy_support

from TextPromptSegLib.engine.progress import Cancelled


def _volume_node(mrml, array: np.ndarray, ijk_to_ras: np.ndarray):
    import slicer

    node = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
    node.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ijk_to_ras[r, c])
    node.SetIJKToRASMatrix(matrix)
    assert isinstance(node, slicer.vtkMRMLScalarVolumeNode)
    return node


def _draw_segment(seg_node, volume_node, mask: np.ndarray, name: str = "hand drawn",
                  color=(0.1, 0.9, 0.1)) -> str:
    """What a user's Segment Editor stroke leaves: a new segment holding ``mask`` (z, y, x on the volume grid)."""
    import slicer
    import TextPromptSegLogic as tl

    segment_id = seg_node.GetSegmentation().AddEmptySegment("", name, list(color))
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        tl.mask_to_oriented_image(mask, volume_node), seg_node, segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    return segment_id


def _segment_array(node, segment_id, volume_node, mrml) -> np.ndarray:
    labelmap = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert mrml.segmentations.ExportSegmentsToLabelmapNode(node, ids, labelmap, volume_node)
    image = labelmap.GetImageData()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(image.GetDimensions()[::-1]) > 0


def _oblique_flipped() -> np.ndarray:
    c, s = np.cos(0.35), np.sin(0.35)
    m = np.eye(4)
    m[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([-0.8, 0.8, -2.5])  # flipped i and k
    m[:3, 3] = (12.0, -40.0, 100.0)
    return m


@pytest.fixture()
def la_array(shared_data) -> np.ndarray:
    case = sorted((shared_data / "la2018" / "train").iterdir())[0]
    return sitk.GetArrayFromImage(sitk.ReadImage(str(case / "image.nii.gz")))[36:44].copy()


def test_volume_node_geometry_round_trip(mrml):
    """Voxels and geometry cross the MRML boundary exactly: a mask placed in RAS comes back on the same voxels."""
    import TextPromptSegLogic as tl

    array = np.arange(6 * 10 * 12, dtype=np.int16).reshape(6, 10, 12)
    node = _volume_node(mrml, array, _oblique_flipped())
    volume = tl.volume_from_node(node)
    assert np.array_equal(volume.array, array)
    # library LPS geometry == node RAS geometry up to the LPS<->RAS flip
    image = volume.to_sitk()
    ras = _oblique_flipped() @ np.array([3, 7, 4, 1.0])
    assert np.allclose(image.TransformIndexToPhysicalPoint((3, 7, 4)), (-ras[0], -ras[1], ras[2]))
    # a mask placed at that RAS point lands on voxel (k=4, j=7, i=3) of the segment
    mask = np.zeros(array.shape, bool)
    i, j, k = image.TransformPhysicalPointToIndex((-ras[0], -ras[1], ras[2]))
    mask[k, j, i] = True
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    segment_id = seg.GetSegmentation().AddEmptySegment("", "probe", [1.0, 0.0, 0.0])
    import slicer

    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        tl.mask_to_oriented_image(mask, node), seg, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    back = _segment_array(seg, segment_id, node, mrml)
    assert np.argwhere(back).tolist() == [[4, 7, 3]]


def test_masks_are_written_on_their_bounding_box_and_replace_the_whole_segment(mrml):
    """mask_to_oriented_image covers only the mask's bounding box, yet a replace with it replaces the whole segment:
    voxels of the previous mask outside the new box are cleared, and an empty mask empties the segment."""
    import slicer
    import TextPromptSegLogic as tl

    node = _volume_node(mrml, np.zeros((9, 20, 24), np.int16), _oblique_flipped())
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    segment_id = seg.GetSegmentation().AddEmptySegment("", "box", [1.0, 0.0, 0.0])
    neighbour_id = seg.GetSegmentation().AddEmptySegment("", "neighbour", [0.0, 1.0, 0.0])
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    big, small, neighbour = (np.zeros((9, 20, 24), bool) for _ in range(3))
    big[1:8, 2:18, 3:20] = True
    small[6:8, 15:19, 20:23] = True  # mostly outside the big box
    neighbour[0, 0:2, 0:5] = True
    logic.SetBinaryLabelmapToSegment(tl.mask_to_oriented_image(neighbour, node), seg, neighbour_id, logic.MODE_REPLACE)
    logic.SetBinaryLabelmapToSegment(tl.mask_to_oriented_image(big, node), seg, segment_id, logic.MODE_REPLACE)
    assert np.array_equal(_segment_array(seg, segment_id, node, mrml), big)

    image = tl.mask_to_oriented_image(small, node)
    assert image.GetExtent() == (20, 22, 15, 18, 6, 7)
    logic.SetBinaryLabelmapToSegment(image, seg, segment_id, logic.MODE_REPLACE)
    assert np.array_equal(_segment_array(seg, segment_id, node, mrml), small)
    logic.SetBinaryLabelmapToSegment(tl.mask_to_oriented_image(np.zeros_like(small), node), seg, segment_id,
                                     logic.MODE_REPLACE)
    export = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    mrml.segmentations.ExportSegmentsToLabelmapNode(seg, ids, export, node)
    scalars = export.GetImageData().GetPointData().GetScalars() if export.GetImageData() else None
    assert scalars is None or not numpy_support.vtk_to_numpy(scalars).any()
    assert np.array_equal(_segment_array(seg, neighbour_id, node, mrml), neighbour)  # the other segment kept


def test_two_prompts_two_named_segments_and_hand_drawn_untouched(mrml, la_array, tiny_model, tmp_path):
    import TextPromptSegLogic as tl

    volume_node = _volume_node(mrml, la_array, _oblique_flipped())
    seg_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    # the user's own segments, named exactly like the library entry of one prompt and like the other prompt
    drawn = np.zeros(la_array.shape, bool)
    drawn[2:5, 20:40, 30:60] = True
    hand_id = _draw_segment(seg_node, volume_node, drawn, name="Left atrium")
    drawn_aorta = np.zeros(la_array.shape, bool)
    drawn_aorta[4:7, 50:60, 10:20] = True
    aorta_hand_id = _draw_segment(seg_node, volume_node, drawn_aorta, name="the aorta", color=(0.9, 0.1, 0.1))

    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: tiny_model)
    outcomes = logic.process(volume_node, seg_node, ["the left atrium", "the aorta"], device="cpu", start_slice=4)
    segmentation = seg_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 4
    assert {o.segment_id for o in outcomes}.isdisjoint({hand_id, aorta_hand_id})
    names = [segmentation.GetSegment(o.segment_id).GetName() for o in outcomes]
    assert names == ["Left atrium", "Aorta"]
    colors = [segmentation.GetSegment(o.segment_id).GetColor() for o in outcomes]
    assert colors[0] != colors[1]
    assert [o.matched for o in outcomes] == ["Left atrium (name)", "Aorta (name)"]

    def user_segments_untouched():
        for segment_id, mask, name, color in ((hand_id, drawn, "Left atrium", (0.1, 0.9, 0.1)),
                                              (aorta_hand_id, drawn_aorta, "the aorta", (0.9, 0.1, 0.1))):
            segment = segmentation.GetSegment(segment_id)
            assert segment.GetName() == name and np.allclose(segment.GetColor(), color)
            assert tl.segment_prompt(segment) == ""
            assert np.array_equal(_segment_array(seg_node, segment_id, volume_node, mrml), mask)

    user_segments_untouched()

    # re-running one prompt replaces only its own segment; undo restores it bit for bit
    before = {o.segment_id: _segment_array(seg_node, o.segment_id, volume_node, mrml) for o in outcomes}
    rerun = logic.process(volume_node, seg_node, ["the aorta"], device="cpu", start_slice=1)
    assert rerun[0].segment_id == outcomes[1].segment_id and segmentation.GetNumberOfSegments() == 4
    user_segments_untouched()
    assert np.array_equal(_segment_array(seg_node, outcomes[0].segment_id, volume_node, mrml),
                          before[outcomes[0].segment_id])
    assert logic.undo()
    assert np.array_equal(_segment_array(seg_node, outcomes[1].segment_id, volume_node, mrml),
                          before[outcomes[1].segment_id])
    user_segments_untouched()

    # the storage node writes a .seg.nrrd that reloads with names, colours and prompt tags
    storage = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    path = tmp_path / "result.seg.nrrd"
    storage.SetFileName(str(path))
    assert storage.WriteData(seg_node)
    from mrml import read_seg_nrrd

    reloaded = read_seg_nrrd(mrml, path).GetSegmentation()
    prompts = {}
    for i in range(reloaded.GetNumberOfSegments()):
        value = vtk.reference("")
        segment = reloaded.GetNthSegment(i)
        if segment.GetTag(tl.PROMPT_TAG, value):
            prompts[segment.GetName()] = (str(value), segment.GetColor())
    assert prompts["Left atrium"][0] == "the left atrium" and prompts["Aorta"][0] == "the aorta"
    assert np.allclose(prompts["Aorta"][1], colors[1])


def test_cancel_leaves_the_segmentation_unchanged(mrml, la_array, tiny_model):
    import TextPromptSegLogic as tl

    volume_node = _volume_node(mrml, la_array, np.eye(4))
    seg_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: tiny_model)
    job = logic.start(volume_node, ["the left atrium"], device="cpu", start_slice=2)
    job.cancel.cancel()
    job.done.wait(120)
    with pytest.raises(Cancelled):
        logic.finish(job, volume_node, seg_node)
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 0
    logic.shutdown()


def test_cancel_during_propagation_stops_at_the_next_slice(mrml, la_array, tiny_model, monkeypatch):
    """The worker is held inside the third slice's tracking step while the user cancels: that slice finishes, no
    other slice is tracked, and the node is unchanged."""
    import TextPromptSegLogic as tl

    volume_node = _volume_node(mrml, la_array, np.eye(4))
    seg_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    inside, release = threading.Event(), threading.Event()
    steps = []
    track_step = tiny_model.track_step

    def held_track_step(index, cond, *args, **kwargs):
        if steps or (index, cond) == (2, True):  # from the start slice on (the CPU time estimate comes first)
            steps.append(index)
        if len(steps) == 3:
            inside.set()
            release.wait(60)
        return track_step(index, cond, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "track_step", held_track_step)
    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: tiny_model)
    job = logic.start(volume_node, ["the left atrium"], device="cpu", start_slice=2)
    try:
        assert inside.wait(120), "the worker never reached the third slice"
        job.cancel.cancel()
    finally:
        release.set()
    assert job.done.wait(120)
    with pytest.raises(Cancelled):
        logic.finish(job, volume_node, seg_node)
    assert steps == [2, 3, 4]  # the start slice, then forward; nothing after the cancel
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 0
    logic.shutdown()


def test_bad_input_is_reported_before_any_work(mrml, tiny_model):
    import TextPromptSegLogic as tl

    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: tiny_model)
    seg_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(ValueError, match="prompt"):
        logic.start(_volume_node(mrml, np.ones((3, 20, 20), np.int16), np.eye(4)), ["  "])
    with pytest.raises(ValueError, match="scalar volume"):
        logic.start(seg_node, ["the spleen"])


def test_slice_index_from_ras(mrml):
    import TextPromptSegLogic as tl

    node = _volume_node(mrml, np.zeros((6, 10, 12), np.int16), _oblique_flipped())
    ras = _oblique_flipped() @ np.array([5, 2, 3, 1.0])
    assert tl.TextPromptSegLogic.slice_index_from_ras(node, ras[:3]) == 3
