"""Volume and segmentation nodes <-> numpy: geometry, metadata, voxels and labelmaps (main thread, no Qt)."""

from __future__ import annotations

from typing import Optional

import numpy as np

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def vtk_matrix_to_numpy(matrix) -> np.ndarray:
    """A vtkMatrix4x4 as a (4, 4) array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def geometry_from_node(volume_node) -> tuple[tuple, tuple, np.ndarray]:
    """(spacing (x, y, z), origin, direction 3x3) in LPS from a volume node's IJK->RAS matrix."""
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    lps = LPS_FROM_RAS @ vtk_matrix_to_numpy(ijk_to_ras)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return tuple(spacing), tuple(lps[:3, 3]), lps[:3, :3] / spacing


def node_metadata(volume_node) -> dict:
    """What a volume node says about its modality, for ``decide_modality``: the voxel value quantity and units codes
    that Slicer's DICOM plugin sets from the SOP class (Hounsfield units for CT), and the DICOM Modality of its
    first instance when Slicer's DICOM database knows it."""
    import slicer

    meta = {}
    for key, getter in (("units", "GetVoxelValueUnits"), ("quantity", "GetVoxelValueQuantity")):
        code = getattr(volume_node, getter)() if hasattr(volume_node, getter) else None
        if code is not None and code.GetCodeValue():
            meta[key] = code.GetCodeValue()
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if uids and database is not None:
        meta["0008,0060"] = database.fileValue(database.fileForInstance(uids[0]), "0008,0060")
    return meta


def volume_from_node(volume_node, modality: Optional[str] = None):
    """A library ``Volume`` from a vtkMRMLScalarVolumeNode (voxels (z, y, x) and IJK->LPS geometry); its modality
    decided by ``decide_modality`` from the node's metadata, else its values (as training and the CLI do)."""
    from vtkmodules.util import numpy_support

    from TextPromptSegLib.engine.preprocess import decide_modality
    from TextPromptSegLib.io.volumes import Volume

    image = volume_node.GetImageData() if volume_node is not None else None
    if image is None or image.GetPointData().GetScalars() is None:
        raise ValueError("the input volume has no image data")
    dims = image.GetDimensions()
    components = image.GetNumberOfScalarComponents()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    array = array.reshape(dims[::-1] + ((components,) if components > 1 else ()))
    array = array.copy()  # the worker must not read a buffer the main thread may modify
    spacing, origin, direction = geometry_from_node(volume_node)
    return Volume(array, spacing, origin, direction, modality or decide_modality(array, node_metadata(volume_node)))


def mask_to_oriented_image(mask: np.ndarray, volume_node):
    """(z, y, x) bool mask on the volume's grid -> vtkOrientedImageData with the volume's IJK->RAS.

    The image covers only the mask's bounding box (its extent is in the volume's IJK indices; one zero voxel for an
    empty mask): a segment on a large CT is written in a fraction of the time and memory of the whole grid.
    """
    import slicer
    import vtk
    from vtkmodules.util import numpy_support

    mask = np.asarray(mask, bool)
    nonzero = [np.flatnonzero(mask.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]  # z, y, x
    if any(len(ix) == 0 for ix in nonzero):
        (z0, z1), (y0, y1), (x0, x1) = (0, 0), (0, 0), (0, 0)
    else:
        (z0, z1), (y0, y1), (x0, x1) = ((int(ix[0]), int(ix[-1])) for ix in nonzero)
    box = mask[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1]
    image = slicer.vtkOrientedImageData()
    image.SetExtent(x0, x1, y0, y1, z0, z1)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(box, dtype=np.uint8).ravel(), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def segment_labelmap_copy(segmentation_node, segment_id: str):
    """This segment's own binary labelmap, extracted from its (possibly shared) layer by its label value.

    Returns a vtkOrientedImageData (all zero for an empty segment) or None when the segment does not exist.
    """
    import slicer
    from vtkmodules.util import numpy_support

    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        return None
    layer = segment.GetRepresentation("Binary labelmap")
    copy = slicer.vtkOrientedImageData()
    copy.DeepCopy(layer)
    scalars = copy.GetPointData().GetScalars()
    if scalars is not None and scalars.GetNumberOfTuples() > 0:
        values = numpy_support.vtk_to_numpy(scalars)
        binary = (values == segment.GetLabelValue()).astype(np.uint8)
        copy.GetPointData().SetScalars(numpy_support.numpy_to_vtk(binary, deep=True))
    return copy
