"""The panel's Qt-free helpers (TextPromptSegLogic/panel_support.py) on real MRML nodes from slicer-core: which
slice view gives the current slice for each slicing axis, which inputs each path takes, the frame count of a
sequence input, the click-update points removed before Segment, and version checks of the dependencies."""

from __future__ import annotations

import numpy as np
import pytest
import vtk
from vtkmodules.util import numpy_support


def _slice_nodes(scene, orientations):
    """Slice nodes as a layout has them (Red, Yellow, Green in the conventional layout), with Slicer's presets."""
    import slicer

    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    nodes = []
    for name, orientation in orientations:
        node = scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
        node.SetLayoutName(name)
        getattr(node, f"SetOrientationTo{orientation}")()
        assert node.GetOrientation() == orientation
        nodes.append(node)
    return nodes


def _volume(scene, dims=(40, 50, 60), directions=None, class_name="vtkMRMLScalarVolumeNode", components=1):
    node = scene.AddNewNodeByClass(class_name)
    image = vtk.vtkImageData()
    image.SetDimensions(*dims)
    values = (np.arange(int(np.prod(dims)) * components) % 251).astype(np.uint8)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values.reshape(-1, components) if components > 1
                                                               else values, deep=True))
    node.SetAndObserveImageData(image)
    if directions is not None:
        node.SetIJKToRASDirections(*np.asarray(directions, float).ravel())
    return node


CONVENTIONAL = [("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")]


@pytest.mark.slicer
@pytest.mark.parametrize("axis, expected", [("axial", "Red"), ("coronal", "Green"), ("sagittal", "Yellow")])
def test_the_view_of_the_named_slicing_axis_gives_the_current_slice(mrml, axis, expected):
    from TextPromptSegLogic import panel_support

    nodes = _slice_nodes(mrml.scene, CONVENTIONAL)
    volume = _volume(mrml.scene)
    chosen = panel_support.choose_slice_node(nodes, panel_support.slicing_direction(volume, axis))
    assert chosen is not None and chosen.GetName() == expected


@pytest.mark.slicer
def test_the_first_matching_view_in_layout_order_wins_and_none_when_no_view_matches(mrml):
    from TextPromptSegLogic import panel_support

    nodes = _slice_nodes(mrml.scene, [("Red", "Coronal"), ("Yellow", "Coronal"), ("Green", "Axial")])
    volume = _volume(mrml.scene)
    assert panel_support.choose_slice_node(nodes, panel_support.slicing_direction(volume, "coronal")).GetName() \
        == "Red"
    assert panel_support.choose_slice_node(nodes, panel_support.slicing_direction(volume, "sagittal")) is None


@pytest.mark.slicer
def test_automatic_axis_follows_the_volume_acquisition_direction(mrml):
    """A sagittally acquired volume stored with k along S (thick slices along i, i along R): with the automatic
    axis, the Yellow (sagittal) view gives the current slice, and its centre maps to the i index the Logic slices
    along (not k, the stored slice axis)."""
    import TextPromptSegLogic as tl
    from TextPromptSegLogic import panel_support

    nodes = _slice_nodes(mrml.scene, CONVENTIONAL)
    # i -> R, j -> A, k -> S; thick slices along i (sagittal acquisition), fine spacing in the other two
    volume = _volume(mrml.scene, dims=(20, 60, 50))
    volume.SetSpacing(3.0, 0.5, 0.5)
    assert tl.TextPromptSegLogic.slicing_axis(volume, None) == 0
    chosen = panel_support.choose_slice_node(nodes, panel_support.slicing_direction(volume, None))
    assert chosen.GetName() == "Yellow"
    chosen.JumpSliceByCentering(12.0, 0.0, 0.0)  # R = 12 mm -> k = 4
    assert panel_support.slice_center(chosen) == pytest.approx([12.0, 0.0, 0.0])
    assert tl.TextPromptSegLogic.slice_index_from_ras(volume, panel_support.slice_center(chosen), None) == 4


@pytest.mark.slicer
def test_a_reformatted_view_within_tolerance_still_counts(mrml):
    from TextPromptSegLogic import panel_support

    (red,) = _slice_nodes(mrml.scene, [("Red", "Axial")])
    transform = vtk.vtkTransform()
    transform.RotateX(20.0)  # tilted by 20 degrees: cos = 0.94
    matrix = red.GetSliceToRAS()
    rotated = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(transform.GetMatrix(), matrix, rotated)
    matrix.DeepCopy(rotated)
    red.UpdateMatrices()
    assert red.GetOrientation() != "Axial"
    assert panel_support.choose_slice_node([red], (0, 0, 1)) is red
    transform.RotateX(20.0)  # 40 degrees: not the axial slices any more
    vtk.vtkMatrix4x4.Multiply4x4(transform.GetMatrix(), matrix, rotated)
    matrix.DeepCopy(rotated)
    red.UpdateMatrices()
    assert panel_support.choose_slice_node([red], (0, 0, 1)) is None


@pytest.mark.slicer
def test_input_problem_accepts_rgb_volumes_and_sends_single_frames_to_the_frames_path(mrml):
    from TextPromptSegLogic import panel_support

    scalar = _volume(mrml.scene)
    rgb = _volume(mrml.scene, dims=(64, 48, 6), class_name="vtkMRMLVectorVolumeNode", components=3)
    frame = _volume(mrml.scene, dims=(64, 48, 1), class_name="vtkMRMLVectorVolumeNode", components=3)
    rgba = _volume(mrml.scene, dims=(64, 48, 6), class_name="vtkMRMLVectorVolumeNode", components=4)
    labelmap = _volume(mrml.scene, class_name="vtkMRMLLabelMapVolumeNode")
    assert panel_support.input_problem(scalar, False) is None
    assert panel_support.input_problem(rgb, False) is None
    assert panel_support.input_problem(rgb, True) is None
    assert "Frames (2D+t)" in panel_support.input_problem(frame, False, played_by_sequence=True)
    assert "Frames (2D+t)" in panel_support.input_problem(frame, False)
    assert panel_support.input_problem(frame, True) is None
    assert "4 components" in panel_support.input_problem(rgba, False)
    assert "labelmap" in panel_support.input_problem(labelmap, False)
    assert panel_support.input_problem(None, False)


@pytest.mark.slicer
def test_rgb_volume_passes_the_logic_start_validation(mrml):
    """The volume path takes what the selector now offers: an RGB vector volume reaches the worker."""
    import TextPromptSegLogic as tl

    rgb = _volume(mrml.scene, dims=(64, 48, 6), class_name="vtkMRMLVectorVolumeNode", components=3)
    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: (_ for _ in ()).throw(RuntimeError("no model")))
    job = logic.start(rgb, ["the bright disc"], device="cpu")
    assert job.done.wait(60)
    assert isinstance(job.error, RuntimeError) and "no model" in str(job.error)  # validation passed
    logic.shutdown()


@pytest.mark.slicer
def test_frame_count_of_a_sequence_proxy_and_of_a_multi_frame_volume(mrml):
    import slicer
    from TextPromptSegLogic import panel_support

    sequences = slicer.vtkSlicerSequencesLogic()
    sequences.SetMRMLApplicationLogic(mrml.app_logic)
    sequences.SetMRMLScene(mrml.scene)
    sequence = mrml.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "US")
    for t in range(9):
        item = _volume(mrml.scene, dims=(32, 24, 1))
        sequence.SetDataNodeAtValue(item, str(t))
        mrml.scene.RemoveNode(item)
    browser = mrml.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    sequences.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    assert proxy is not None
    assert panel_support.played_by_sequence(proxy)
    assert panel_support.frame_count(proxy) == 9
    assert panel_support.frame_count(sequence) == 9
    browser.SetSelectedItemNumber(5)
    assert panel_support.current_frame(proxy) == 5
    multi = _volume(mrml.scene, dims=(32, 24, 7), class_name="vtkMRMLVectorVolumeNode", components=3)
    assert not panel_support.played_by_sequence(multi)
    assert panel_support.frame_count(multi) == 7
    assert panel_support.current_frame(multi) is None
    assert panel_support.frame_count(None) == 0


@pytest.mark.slicer
def test_click_update_points_are_removed_and_the_others_kept(mrml):
    """Points placed for click updates are removed before Segment collects the prompts; a point placed for Segment
    stays and is the only one collected."""
    import TextPromptSegLogic as tl
    from TextPromptSegLogic import panel_support

    volume = _volume(mrml.scene)
    positive = tl.TextPromptSegLogic.prompt_node(mrml.scene, "positive")
    positive.AddControlPoint(10.0, 10.0, 20.0)
    positive.AddControlPoint(12.0, 11.0, 20.0)
    clicks = panel_support.control_point_ids(positive)
    assert len(clicks) == 2
    positive.AddControlPoint(20.0, 20.0, 30.0)  # placed for the next Segment
    assert panel_support.remove_control_points(positive, clicks) == 2
    assert positive.GetNumberOfControlPoints() == 1
    assert panel_support.remove_control_points(positive, clicks) == 0  # already gone
    visual = tl.TextPromptSegLogic.collect_visual_prompts(volume, "axial")
    assert list(visual.point_prompts) == [30]
    assert panel_support.control_point_ids(None) == set()


@pytest.mark.parametrize("installed, requirement, unmet", [
    ("4.44.2", "transformers>=4.45", True),
    ("4.45.0", "transformers>=4.45", False),
    ("4.46.1", "transformers>=4.45", False),
    ("5.0.0.dev0", "transformers>=4.45", False),
    (None, "transformers>=4.45", True),
    ("1.1.0", "sam2==1.1.0", False),
    ("1.0", "sam2==1.1.0", True),
    ("1.1.1", "sam2==1.1.0", True),
    ("0.1.10", "iopath>=0.1.10", False),
    ("0.1.9", "iopath>=0.1.10", True),
    ("1.3.2", "hydra-core>=1.3.2", False),
    ("1.3.1", "hydra-core>=1.3.2", True),
])
@pytest.mark.parametrize("with_packaging", [True, False])
def test_unmet_requirements_compare_versions(monkeypatch, installed, requirement, unmet, with_packaging):
    import builtins

    from TextPromptSegLogic import panel_support

    if not with_packaging:  # Slicer without packaging: the small comparison
        real_import = builtins.__import__

        def no_packaging(name, *args, **kwargs):
            if name.startswith("packaging"):
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_packaging)
    result = panel_support.unmet_requirements([requirement], version_of=lambda name: installed)
    assert result == ([requirement] if unmet else [])


def test_unmet_requirements_reads_installed_metadata():
    from importlib import metadata

    from TextPromptSegLogic import panel_support

    numpy_version = metadata.version("numpy")
    assert panel_support.unmet_requirements([f"numpy>={numpy_version}"]) == []
    assert panel_support.unmet_requirements(["numpy>=999"]) == ["numpy>=999"]
    assert panel_support.unmet_requirements(["no-such-distribution-tps>=1"]) == ["no-such-distribution-tps>=1"]
