"""Visual prompts and the per-slice strip on real MRML (issue 5): markups points and ROI boxes placed in RAS land
on the right frame pixel of an oblique, flipped volume for every slicing axis; the jump point of a slice maps
back to that slice and the slice views move there; the quality table is kept in the scene; visual prompts reach
the model through the Logic."""

from __future__ import annotations

import numpy as np
import pytest
import vtk
from test_logic import _oblique_flipped, _volume_node

from TextPromptSegLib.engine.geometry import AXES


def _ras(matrix: np.ndarray, ijk) -> np.ndarray:
    return (matrix @ np.r_[np.asarray(ijk, float), 1.0])[:3]


@pytest.fixture()
def probe_volume(mrml):
    """(7, 11, 13) volume whose voxel values are their flat index, with an oblique, flipped IJK-to-RAS."""
    array = np.arange(7 * 11 * 13, dtype=np.int16).reshape(7, 11, 13)
    return array, _volume_node(mrml, array, _oblique_flipped())


@pytest.mark.parametrize("axis", [None, *AXES])
def test_points_land_on_the_frame_pixel_of_their_voxel(mrml, probe_volume, axis):
    import TextPromptSegLogic as tl
    from TextPromptSegLogic.interactive import slice_geometry

    array, node = probe_volume
    logic = tl.TextPromptSegLogic()
    positive = logic.prompt_node(mrml.scene, "positive")
    negative = logic.prompt_node(mrml.scene, "negative")
    voxels = {"positive": [(3, 7, 4), (12, 0, 6)], "negative": [(0, 10, 0), (5, 5, 2)]}
    rng = np.random.default_rng(0)
    for role, node_ in (("positive", positive), ("negative", negative)):
        for ijk in voxels[role]:  # anywhere inside the voxel: up to 0.45 voxel off its centre
            node_.AddControlPoint(vtk.vtkVector3d(*_ras(_oblique_flipped(), np.add(ijk, rng.uniform(-.45, .45, 3)))))
    prompts = logic.collect_visual_prompts(node, axis)
    frames = slice_geometry(node, axis).to_frames(array)
    found = {}
    for n, (rows_cols, labels) in prompts.point_prompts.items():
        for (row, col), label in zip(rows_cols, labels):
            found[int(frames[n, int(round(row)), int(round(col))])] = label
    expected = {int(array[k, j, i]): 1 if role == "positive" else 0 for role in voxels for i, j, k in voxels[role]}
    assert found == expected
    assert not prompts.box_prompts


def test_points_follow_a_parent_transform_of_the_volume(mrml, probe_volume):
    """A volume moved by a transform (e.g. after registration): a point placed on a voxel as shown in the views
    (world RAS) still lands on that voxel's frame pixel, and the frame's RAS maps back to that world point."""
    import TextPromptSegLogic as tl
    from TextPromptSegLogic.interactive import frame_to_ras, ras_to_frame, slice_geometry, volume_ras_to_world

    array, node = probe_volume
    rotation = vtk.vtkTransform()
    rotation.Translate(12.0, -30.0, 5.5)
    rotation.RotateWXYZ(25.0, 0.3, 0.2, 0.9)
    transform_node = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform_node.SetMatrixTransformToParent(rotation.GetMatrix())
    node.SetAndObserveTransformNodeID(transform_node.GetID())
    world = np.array([rotation.TransformPoint(*_ras(_oblique_flipped(), ijk)) for ijk in ((3, 7, 4), (12, 0, 6))])
    assert np.allclose(volume_ras_to_world(node, [_ras(_oblique_flipped(), (3, 7, 4))]), world[:1])

    logic = tl.TextPromptSegLogic()
    positive = logic.prompt_node(mrml.scene, "positive")
    for point in world:
        positive.AddControlPoint(vtk.vtkVector3d(*point))
    prompts = logic.collect_visual_prompts(node)
    frames = slice_geometry(node).to_frames(array)
    found = sorted(int(frames[n, int(round(r)), int(round(c))]) for n, (rc, _) in prompts.point_prompts.items()
                   for r, c in rc)
    assert found == sorted(int(array[k, j, i]) for i, j, k in ((3, 7, 4), (12, 0, 6)))
    n, row, col = ras_to_frame(node, world[:1])[0]
    assert np.allclose(frame_to_ras(node, n, row, col), world[0], atol=1e-6)


@pytest.mark.parametrize("axis", [None, "coronal"])
def test_roi_box_projects_onto_the_slice_it_cuts(mrml, probe_volume, axis):
    """An ROI aligned with the voxel grid and spanning voxels i 2..9, j 3..8 on slice k = 4 becomes the
    frame-space rectangle of exactly those voxels (for a coronal slicing axis: the ROI cuts several slices and is
    projected onto the one asked for)."""
    import TextPromptSegLogic as tl
    from TextPromptSegLogic.interactive import slice_geometry

    array, node = probe_volume
    matrix = _oblique_flipped()
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    roi = tl.TextPromptSegLogic.prompt_node(mrml.scene, "box")
    orientation = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            orientation.SetElement(r, c, matrix[r, c] / spacing[c])
    roi.SetAndObserveObjectToNodeMatrix(orientation)
    roi.SetCenterWorld(*_ras(matrix, (5.5, 5.5, 4)))
    roi.SetSize(*(np.array([7.0, 5.0, 0.0]) * spacing))  # corner voxel centres i 2/9, j 3/8; drawn on one slice
    geometry = slice_geometry(node, axis)
    marked = np.zeros(array.shape, bool)
    marked[4, 3:9, 2:10] = True
    frames = geometry.to_frames(marked)
    want_slice = 4 if axis is None else 5
    prompts = tl.TextPromptSegLogic.collect_visual_prompts(node, axis, box_slice=want_slice)
    if axis is not None:  # coronal: slicing along j, so the box is seen edge-on and spans slices 3..8
        assert list(prompts.box_prompts) == [want_slice]
    (n, box), = prompts.box_prompts.items()
    rows, cols = np.nonzero(frames[n])
    assert n == want_slice
    assert np.allclose(box, (rows.min(), cols.min(), rows.max(), cols.max()), atol=1e-6)


def test_points_outside_the_volume_are_refused(mrml, probe_volume):
    import TextPromptSegLogic as tl

    _, node = probe_volume
    positive = tl.TextPromptSegLogic.prompt_node(mrml.scene, "positive")
    positive.AddControlPoint(vtk.vtkVector3d(*_ras(_oblique_flipped(), (30, 5, 3))))
    with pytest.raises(ValueError, match="outside"):
        tl.TextPromptSegLogic.collect_visual_prompts(node)


def test_point_labels_come_from_the_node_attribute(mrml, probe_volume):
    from TextPromptSegLogic.interactive import POINT_LABEL_ATTRIBUTE, points_to_frame

    _, node = probe_volume
    unlabelled = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    unlabelled.AddControlPoint(vtk.vtkVector3d(*_ras(_oblique_flipped(), (3, 3, 3))))
    with pytest.raises(ValueError, match=POINT_LABEL_ATTRIBUTE):
        points_to_frame(node, [unlabelled])
    unlabelled.SetAttribute(POINT_LABEL_ATTRIBUTE, "0")
    (rows_cols, labels), = points_to_frame(node, [unlabelled]).values()
    assert labels == [0]


def test_jump_point_maps_back_to_its_slice_and_moves_the_views(mrml, probe_volume):
    import slicer
    import TextPromptSegLogic as tl
    from TextPromptSegLogic.interactive import ras_to_frame, slice_geometry

    array, node = probe_volume
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    segment_id = seg.GetSegmentation().AddEmptySegment("", "probe", [1.0, 0.0, 0.0])
    mask = np.zeros(array.shape, bool)
    mask[5, 1:4, 8:12] = True
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        tl.mask_to_oriented_image(mask, node), seg, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    logic = tl.TextPromptSegLogic()
    geometry = slice_geometry(node, None)
    frames = geometry.to_frames(mask)
    n = int(np.flatnonzero(frames.reshape(len(frames), -1).any(1))[0])
    ras = logic.slice_jump_point(node, n, seg, segment_id)
    back_n, row, col = ras_to_frame(node, ras[None])[0]
    assert round(back_n) == n and frames[n, int(round(row)), int(round(col))]  # on the slice, inside the segment
    empty = logic.slice_jump_point(node, 0)
    assert round(ras_to_frame(node, empty[None])[0, 0]) == 0

    red = mrml.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    logic.jump_to_slice(node, n, seg, segment_id)
    slice_to_ras = tl.vtk_matrix_to_numpy(red.GetSliceToRAS())
    normal, origin = slice_to_ras[:3, 2], slice_to_ras[:3, 3]
    assert abs(normal @ (ras - origin)) < 1e-6  # the Red plane passes through the point


def test_visual_prompts_need_one_prompt(mrml, probe_volume, tiny_model):
    import TextPromptSegLogic as tl
    from TextPromptSegLogic.interactive import VisualPrompts

    _, node = probe_volume
    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: tiny_model)
    visual = VisualPrompts(point_prompts={2: ([(3.0, 4.0)], [1])})
    with pytest.raises(ValueError, match="one structure"):
        logic.start(node, ["the liver", "the spleen"], visual=visual)


def test_prompt_nodes_and_place_mode(mrml):
    """The panel's buttons: one labelled, coloured point list per polarity (found again, not duplicated), the
    views switched to placing into it, and the strip's plot view in point-selection mode."""
    import slicer
    import TextPromptSegLogic as tl
    from TextPromptSegLogic.interactive import POINT_LABEL_ATTRIBUTE

    logic = tl.TextPromptSegLogic
    positive, negative = logic.prompt_node(mrml.scene, "positive"), logic.prompt_node(mrml.scene, "negative")
    assert (positive.GetAttribute(POINT_LABEL_ATTRIBUTE), negative.GetAttribute(POINT_LABEL_ATTRIBUTE)) == ("1", "0")
    assert logic.prompt_node(mrml.scene, "positive") is positive
    assert positive.GetDisplayNode().GetSelectedColor() != negative.GetDisplayNode().GetSelectedColor()
    assert logic.prompt_node(mrml.scene, "box").IsA("vtkMRMLMarkupsROINode")
    logic.begin_placing(mrml.scene, negative)
    interaction = mrml.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    selection = mrml.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert selection.GetActivePlaceNodeID() == negative.GetID()
    view = logic.quality_plot_view_node(mrml.scene)
    assert view.GetInteractionMode() == slicer.vtkMRMLPlotViewNode.InteractionModeSelectPoints
    assert logic.quality_plot_view_node(mrml.scene) is view


@pytest.mark.parametrize("axis", [None, "coronal", "sagittal"])
def test_slab_writes_change_only_their_slices(mrml, probe_volume, axis):
    """Refinement results are written as a slab of slices along the slicing axis: exactly those voxels change,
    every other slice of the segment and every other segment keep theirs bit for bit."""
    import slicer
    import TextPromptSegLogic as tl
    from test_logic import _segment_array
    from TextPromptSegLogic.interactive import segment_mask_on_volume, slice_geometry, write_frames

    array, node = probe_volume
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    rng = np.random.default_rng(1)
    masks = {}
    for name in ("refined", "other"):
        masks[name] = rng.random(array.shape) < 0.3
        sid = seg.GetSegmentation().AddEmptySegment("", name, [1.0, 0.0, 0.0])
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            tl.mask_to_oriented_image(masks[name], node), seg, sid,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        masks[name + "_id"] = sid
    geometry = slice_geometry(node, axis)
    frames = geometry.to_frames(masks["refined"]).copy()
    new = rng.random((2, *frames.shape[1:])) < 0.5
    write_frames(node, seg, masks["refined_id"], geometry, {1: new[0], 2: new[1]})
    frames[1:3] = new
    assert np.array_equal(segment_mask_on_volume(seg, masks["refined_id"], node), geometry.from_frames(frames))
    assert np.array_equal(_segment_array(seg, masks["refined_id"], node, mrml), geometry.from_frames(frames))
    assert np.array_equal(_segment_array(seg, masks["other_id"], node, mrml), masks["other"])


@pytest.mark.parametrize("count", [1, 2])
def test_slab_write_of_a_compact_segment(mrml, count):
    """A segment made of two discs on some slices (Slicer keeps its labelmap cropped to them), next to a segment
    drawn by hand: a slab of one or two slices that drops one disc is written exactly; the other slices of the
    segment and the hand-drawn segment keep their voxels."""
    import slicer
    import TextPromptSegLogic as tl
    from test_logic import _segment_array
    from TextPromptSegLogic.interactive import slice_geometry, write_frames

    node = _volume_node(mrml, np.zeros((12, 40, 40), np.float32), _oblique_flipped())
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    yy, xx = np.mgrid[:40, :40]
    a, b = (yy - 12) ** 2 + (xx - 12) ** 2 <= 25, (yy - 27) ** 2 + (xx - 25) ** 2 <= 30
    geometry = slice_geometry(node)
    hand = np.zeros((12, 40, 40), bool)
    hand[0:2, 30:38, 0:8] = True
    hand_id = seg.GetSegmentation().AddEmptySegment("", "hand", [0.0, 1.0, 0.0])
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        tl.mask_to_oriented_image(hand, node), seg, hand_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    frames = np.zeros((12, 40, 40), bool)
    frames[3:9] = a | b
    sid = seg.GetSegmentation().AddEmptySegment("", "discs", [0.0, 0.0, 1.0])
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        tl.mask_to_oriented_image(geometry.from_frames(frames), node), seg, sid,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    write_frames(node, seg, sid, geometry, {5 + i: a for i in range(count)})
    frames[5 : 5 + count] = a
    assert np.array_equal(_segment_array(seg, sid, node, mrml), geometry.from_frames(frames))
    assert np.array_equal(_segment_array(seg, hand_id, node, mrml), hand)
