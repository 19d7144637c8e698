"""A real MRML scene from slicer-core, set up the way trame-slicer's SlicerApp does (no Qt)."""

from __future__ import annotations

from types import SimpleNamespace


def make_scene() -> SimpleNamespace:
    """vtkMRMLScene + application logic + Colors, Volumes and Segmentations logics (converter rules registered)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = slicer.vtkMRMLColorLogic()
    color_logic.SetMRMLScene(scene)
    app_logic.SetModuleLogic("Colors", color_logic)
    volumes_logic = slicer.vtkSlicerVolumesLogic()
    volumes_logic.SetMRMLApplicationLogic(app_logic)
    volumes_logic.SetMRMLScene(scene)
    app_logic.SetModuleLogic("Volumes", volumes_logic)
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLApplicationLogic(app_logic)
    segmentations_logic.SetMRMLScene(scene)
    app_logic.SetModuleLogic("Segmentations", segmentations_logic)
    return SimpleNamespace(scene=scene, app_logic=app_logic, volumes=volumes_logic, segmentations=segmentations_logic)


def read_seg_nrrd(scene_env: SimpleNamespace, path) -> object:
    """Load a .seg.nrrd through vtkMRMLSegmentationStorageNode into a new segmentation node."""
    import slicer

    scene = scene_env.scene
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"slicer-core could not read {path}")
    assert isinstance(node, slicer.vtkMRMLSegmentationNode)
    return node
