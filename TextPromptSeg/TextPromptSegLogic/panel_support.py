"""Helpers of the module panel that need no Qt: pure functions of MRML nodes (tested on slicer-core).

* which slice view shows the slices of the slicing axis (:func:`slicing_direction`, :func:`choose_slice_node`);
* which inputs each path accepts (:func:`input_problem`) and how many frames a sequence input has
  (:func:`frame_count`);
* which control points click updates used (:func:`control_point_ids`, :func:`remove_control_points`);
* whether installed packages meet the version constraints (:func:`unmet_requirements`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional

import numpy as np

from .nodes import vtk_matrix_to_numpy

# RAS normal of the slices of each named orientation (Slicer's axial, coronal and sagittal presets)
AXIS_NORMALS = {"axial": (0.0, 0.0, 1.0), "coronal": (0.0, 1.0, 0.0), "sagittal": (1.0, 0.0, 0.0)}
# a view shows the slices of the slicing axis when its normal is within about 25 degrees of the slicing direction
MIN_ALIGNMENT = 0.9


def slicing_direction(volume_node, axis: Optional[str] = None) -> np.ndarray:
    """Unit RAS vector along which slices are taken: the named orientation's normal for "axial", "coronal" or
    "sagittal"; for None (automatic) the volume's acquisition axis (the IJK axis the Logic slices along)."""
    if axis is not None:
        if axis not in AXIS_NORMALS:
            raise ValueError(f"axis must be one of {', '.join(AXIS_NORMALS)} or None, not {axis!r}")
        return np.array(AXIS_NORMALS[axis])
    import vtk

    from . import TextPromptSegLogic

    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    column = vtk_matrix_to_numpy(ijk_to_ras)[:3, TextPromptSegLogic.slicing_axis(volume_node, None)]
    return column / np.linalg.norm(column)


def slice_normal(slice_node) -> np.ndarray:
    """Unit RAS normal of a vtkMRMLSliceNode's slice plane (third column of SliceToRAS)."""
    column = vtk_matrix_to_numpy(slice_node.GetSliceToRAS())[:3, 2]
    return column / np.linalg.norm(column)


def slice_center(slice_node) -> list[float]:
    """RAS position of the slice plane's centre (translation of SliceToRAS)."""
    return [float(v) for v in vtk_matrix_to_numpy(slice_node.GetSliceToRAS())[:3, 3]]


def choose_slice_node(slice_nodes: Iterable[Any], direction: Sequence[float]):
    """The first slice node (layout order) whose slice normal is parallel to ``direction`` (either sense, within
    ``MIN_ALIGNMENT``), or None when no view shows slices of that axis."""
    direction = np.asarray(direction, float)
    direction = direction / np.linalg.norm(direction)
    for node in slice_nodes:
        if node is not None and abs(float(slice_normal(node) @ direction)) >= MIN_ALIGNMENT:
            return node
    return None


def input_problem(volume_node, sequence_mode: bool, played_by_sequence: bool = False) -> Optional[str]:
    """Why the panel cannot segment ``volume_node`` the selected way, or None.

    Scalar volumes and RGB vector volumes (vtkMRMLVectorVolumeNode with 3 components) are both accepted: the volume
    path segments an RGB volume of several slices; a single frame (a sequence's proxy, or one RGB image) needs the
    frames (2D+t) path."""
    if volume_node is None:
        return "Select an input volume."
    image = volume_node.GetImageData()
    if image is None:
        return f"The volume '{volume_node.GetName()}' has no image data."
    components = image.GetNumberOfScalarComponents()
    if components not in (1, 3):
        return (f"The volume '{volume_node.GetName()}' has {components} components per voxel: only grey (1) and "
                "RGB (3) images can be segmented.")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        return f"'{volume_node.GetName()}' is a labelmap: select an image volume."
    if sequence_mode:
        return None
    dims = image.GetDimensions()
    if min(dims) <= 1:
        kind = "an RGB frame" if components == 3 else "a single 2D frame"
        if played_by_sequence:
            return (f"'{volume_node.GetName()}' is {kind} of a sequence: tick 'Frames (2D+t)' to segment every "
                    "frame of the recording.")
        return (f"'{volume_node.GetName()}' is {kind} (one slice): tick 'Frames (2D+t)' for a multi-frame "
                "volume or a sequence, or load a 3D volume.")
    return None


def _browser_and_sequence(node):
    """(browser, sequence) when a sequence browser plays a sequence into ``node`` (its proxy), else (None, None)."""
    scene = node.GetScene() if node is not None else None
    if scene is None or node.IsA("vtkMRMLSequenceNode"):
        return None, None
    from .sequences import browser_for

    browser = browser_for(scene, node)
    sequence = browser.GetSequenceNode(node) if browser is not None else None
    return (browser, sequence) if sequence is not None else (None, None)


def played_by_sequence(node) -> bool:
    """Whether ``node`` is the proxy of a sequence that a browser plays (one frame of a recording)."""
    return _browser_and_sequence(node)[1] is not None


def frame_count(node) -> int:
    """Frames of a sequence input as the frames path reads it: the items of a Sequence node (or of the sequence a
    browser plays into this proxy volume), else the k dimension of a multi-frame volume; 0 without image data."""
    if node is None:
        return 0
    if node.IsA("vtkMRMLSequenceNode"):
        return node.GetNumberOfDataNodes()
    sequence = _browser_and_sequence(node)[1]
    if sequence is not None:
        return sequence.GetNumberOfDataNodes()
    image = node.GetImageData() if node.IsA("vtkMRMLVolumeNode") else None
    return image.GetDimensions()[2] if image is not None else 0


def current_frame(node) -> Optional[int]:
    """The frame a sequence browser shows in ``node`` (its selected item), or None when no browser plays it."""
    browser = _browser_and_sequence(node)[0]
    return browser.GetSelectedItemNumber() if browser is not None else None


# ---------------------------------------------------------------------------------------------- click points
def control_point_ids(node) -> set[str]:
    """IDs of the control points of a markups node (empty for None)."""
    if node is None:
        return set()
    return {node.GetNthControlPointID(i) for i in range(node.GetNumberOfControlPoints())}


def remove_control_points(node, ids: Iterable[str]) -> int:
    """Remove the control points with these IDs (those already gone are skipped); returns how many were removed."""
    if node is None:
        return 0
    removed = 0
    for point_id in set(ids):
        index = node.GetNthControlPointIndexByID(point_id)
        if index >= 0:
            node.RemoveNthControlPoint(index)
            removed += 1
    return removed


# ---------------------------------------------------------------------------------------------- dependencies
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*((?:[<>=!~]=?|===)\s*[^,;\s]+"
                          r"(?:\s*,\s*(?:[<>=!~]=?|===)\s*[^,;\s]+)*)?\s*$")


def _version_tuple(version: str) -> tuple:
    """'4.45.2' -> (4, 45, 2); pre/post/local parts are dropped ('2.3.0+cu121' -> (2, 3, 0))."""
    parts = []
    for piece in re.split(r"[.+-]", version.strip()):
        match = re.match(r"\d+", piece)
        if match:
            parts.append(int(match.group()))
        if not match or match.group() != piece:
            break
    return tuple(parts)


def _compare(have: tuple, want: tuple) -> int:
    width = max(len(have), len(want))
    have, want = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
    return (have > want) - (have < want)


def _satisfies(version: str, specifier: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(specifier).contains(version, prereleases=True)
    except ImportError:  # a small comparison where packaging is missing
        pass
    have = _version_tuple(version)
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        op, want = re.match(r"(===|[<>=!~]=?)\s*(.+)", clause).groups()
        target = _version_tuple(want)
        order = _compare(have, target)
        ok = {">=": order >= 0, ">": order > 0, "<=": order <= 0, "<": order < 0, "==": order == 0,
              "===": order == 0, "!=": order != 0,
              "~=": order >= 0 and _compare(have[:len(target) - 1], target[:-1]) == 0}[op]
        if not ok:
            return False
    return True


def unmet_requirements(requirements: Iterable[str],
                       version_of: Optional[Callable[[str], Optional[str]]] = None) -> list[str]:
    """The requirement strings ('transformers>=4.45') whose distribution is missing or has a version outside the
    constraint. version_of(name) -> installed version or None (default: importlib.metadata)."""
    if version_of is None:
        from importlib import metadata

        def version_of(name: str) -> Optional[str]:
            for candidate in dict.fromkeys((name, name.replace("-", "_"), name.replace("_", "-"))):
                try:  # older importlib.metadata does not normalise '-' and '_'
                    return metadata.version(candidate)
                except metadata.PackageNotFoundError:
                    pass
            return None

    unmet = []
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise ValueError(f"not a requirement: {requirement!r}")
        name, specifier = match.group(1), (match.group(2) or "").replace(" ", "")
        installed = version_of(name)
        if installed is None or (specifier and not _satisfies(installed, specifier)):
            unmet.append(requirement)
    return unmet
