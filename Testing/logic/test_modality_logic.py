"""The Logic decides a volume node's modality as the CLI and training do (issue 19): from the node's metadata (the
Hounsfield units / attenuation quantity that Slicer's DICOM plugin sets for CT), else from its values whatever
the scalar type (float CTs are common in Slicer)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk
from vtkmodules.util import numpy_support


def _volume_node(mrml, array: np.ndarray):
    node = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True))
    node.SetAndObserveImageData(image)
    return node


def _coded(value: str, scheme: str, meaning: str):
    import slicer

    code = slicer.vtkCodedEntry()
    code.SetValueSchemeMeaning(value, scheme, meaning)
    return code


def test_float_ct_node_is_ct_and_prepared_like_the_cli(mrml, shared_data):
    import TextPromptSegLogic as tl

    from TextPromptSegLib.engine.preprocess import normalize_intensity
    from TextPromptSegLib.io.volumes import read_volume
    from TextPromptSegLib.modeling.checkpoint import read_inputs
    from TextPromptSegLib.resources import resource_path

    path = shared_data / "sts_sarcoma" / "STS_002" / "CT_image.nii.gz"
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[20:24]
    assert array.dtype == np.float32
    volume = tl.volume_from_node(_volume_node(mrml, array))
    cli = read_volume(path)
    assert volume.modality == cli.modality == "CT"
    inputs = read_inputs(resource_path("Models", "tgsam2-medium"))  # the bundled model's stated normalisation
    assert np.array_equal(normalize_intensity(volume.array, volume.modality, inputs=inputs),
                          normalize_intensity(cli.array[20:24], cli.modality, inputs=inputs))


def test_node_metadata_decides_before_values(mrml):
    import TextPromptSegLogic as tl

    offset_ct = np.random.default_rng(0).integers(0, 2000, size=(3, 20, 20)).astype(np.uint16)  # no HU values
    node = _volume_node(mrml, offset_ct)
    assert tl.volume_from_node(node).modality == "unknown"
    node.SetVoxelValueUnits(_coded("[hnsf'U]", "UCUM", "Hounsfield unit"))
    assert tl.node_metadata(node) == {"units": "[hnsf'U]"}
    assert tl.volume_from_node(node).modality == "CT"

    hu_like = np.random.default_rng(1).integers(-1000, 1500, size=(3, 20, 20)).astype(np.int16)
    mr_node = _volume_node(mrml, hu_like)
    assert tl.volume_from_node(mr_node).modality == "CT"
    mr_node.SetVoxelValueQuantity(_coded("110852", "DCM", "MR signal intensity"))
    assert tl.volume_from_node(mr_node).modality == "MR"  # what the node states wins over its values
