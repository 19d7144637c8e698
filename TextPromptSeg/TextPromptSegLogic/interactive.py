"""MRML helpers for interactive work: markups prompts -> frame space, segment slices in and out, the per-slice
quality table. No Qt; everything here runs on the main thread (it reads or writes MRML nodes).

Coordinates: markups positions are world RAS; a volume under a parent transform is brought back to its own RAS
first. RAS -> IJK uses the volume's RAS-to-IJK matrix (any oblique or flipped direction), and IJK -> frame
(slice n, row, col) uses the engine's :class:`~TextPromptSegLib.engine.geometry.SliceGeometry`, the same mapping
that lays out the frames the model sees, so a point lands on the frame pixel of the voxel it is in.

Point polarity: positive and negative clicks live in two fiducial nodes (green and red), each tagged with the
attribute ``TextPromptSeg.PointLabel`` = "1" or "0". A node-level label (as SegmentWithSAM also does with two
nodes) survives scene saving and is visible in the Markups module; SlicerNNInteractive instead stores polarity in
each control point's "selected" flag, which any click in the Markups module toggles without saying so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .nodes import geometry_from_node, mask_to_oriented_image, segment_labelmap_copy, vtk_matrix_to_numpy

POINT_LABEL_ATTRIBUTE = "TextPromptSeg.PointLabel"
PROMPT_ROLE_ATTRIBUTE = "TextPromptSeg.PromptRole"  # "positive", "negative" or "box"
QA_SEGMENTATION_ATTRIBUTE = "TextPromptSeg.SegmentationNodeID"
QA_SEGMENT_ATTRIBUTE = "TextPromptSeg.SegmentID"
QA_AXIS_ATTRIBUTE = "TextPromptSeg.Axis"
QA_LEAST_CONFIDENT_ATTRIBUTE = "TextPromptSeg.LeastConfidentSlice"
QA_COLUMNS = ("slice", "object score", "object probability (%)", "area (mm2)", "area (% of largest)")
_ROLES = {"positive": ("TextPromptSeg positive points", (0.2, 0.85, 0.3), "1"),
          "negative": ("TextPromptSeg negative points", (0.95, 0.25, 0.2), "0"),
          "box": ("TextPromptSeg box", (0.3, 0.6, 1.0), None)}


def volume_shape_zyx(volume_node) -> tuple[int, int, int]:
    dims = volume_node.GetImageData().GetDimensions()
    return int(dims[2]), int(dims[1]), int(dims[0])


def slice_geometry(volume_node, axis: Optional[str] = None):
    """The engine's SliceGeometry for a volume node (same choice of slicing axis as segmentation)."""
    from TextPromptSegLib.engine.geometry import SliceGeometry


    spacing, _, direction = geometry_from_node(volume_node)
    return SliceGeometry.for_volume(direction, spacing, axis)


def world_to_volume_ras(volume_node, points_world: np.ndarray) -> np.ndarray:
    """(P, 3) world RAS -> (P, 3) RAS of the volume node's own frame (undoing a parent transform, if any)."""
    return _through_parent(volume_node, points_world, to_world=False)


def volume_ras_to_world(volume_node, points_ras: np.ndarray) -> np.ndarray:
    """(P, 3) RAS of the volume node's own frame -> (P, 3) world RAS."""
    return _through_parent(volume_node, points_ras, to_world=True)


def _through_parent(volume_node, points: np.ndarray, to_world: bool) -> np.ndarray:
    points = np.asarray(points, float).reshape(-1, 3)
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return points
    import slicer
    import vtk

    transform = vtk.vtkGeneralTransform()
    source, target = (parent, None) if to_world else (None, parent)
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(source, target, transform)
    return np.array([transform.TransformPoint(*p) for p in points])


def ras_to_frame(volume_node, points_world, axis: Optional[str] = None) -> np.ndarray:
    """(P, 3) world RAS -> (P, 3) continuous (n, row, col) in frame space of the slicing axis.

    ``n`` is the slice index (round it); row and col are pixel positions with pixel centres at integers.
    """
    import vtk

    ras = world_to_volume_ras(volume_node, points_world)
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    ijk = (vtk_matrix_to_numpy(ras_to_ijk) @ np.c_[ras, np.ones(len(ras))].T).T[:, :3]
    geometry = slice_geometry(volume_node, axis)
    shape = volume_shape_zyx(volume_node)
    return np.array([geometry.voxel_to_frame(p, shape) for p in ijk]).reshape(-1, 3)


def frame_to_ras(volume_node, n: float, row: float, col: float, axis: Optional[str] = None) -> np.ndarray:
    """Frame position (n, row, col) -> (3,) world RAS: the inverse of :func:`ras_to_frame`."""
    import vtk

    geometry = slice_geometry(volume_node, axis)
    ijk = geometry.frame_to_voxel(n, row, col, volume_shape_zyx(volume_node))
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    ras = (vtk_matrix_to_numpy(ijk_to_ras) @ np.r_[ijk, 1.0])[:3]
    return volume_ras_to_world(volume_node, ras[None])[0]


def _num_frames(volume_node, axis: Optional[str]) -> tuple[int, int, int]:
    geometry = slice_geometry(volume_node, axis)
    frames_shape = geometry.to_frames(np.empty(volume_shape_zyx(volume_node), bool)).shape
    return frames_shape[0], frames_shape[1], frames_shape[2]


@dataclass
class VisualPrompts:
    """Clicks and boxes in frame space of the slicing axis, as ``SegmentRequest`` takes them.

    point_prompts: {slice: ([(row, col), ...], [1 positive / 0 negative, ...])};
    box_prompts: {slice: (row0, col0, row1, col1)}.
    """

    point_prompts: dict[int, tuple[list[tuple[float, float]], list[int]]] = field(default_factory=dict)
    box_prompts: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.point_prompts or self.box_prompts)

    @property
    def slices(self) -> list[int]:
        return sorted({*self.point_prompts, *self.box_prompts})


def point_label(node) -> int:
    """1 (positive) or 0 (negative) from a fiducial node's ``TextPromptSeg.PointLabel`` attribute."""
    value = node.GetAttribute(POINT_LABEL_ATTRIBUTE)
    if value not in ("0", "1"):
        raise ValueError(f"markups node {node.GetName()!r} is not a TextPromptSeg point list: set its attribute "
                         f"{POINT_LABEL_ATTRIBUTE} to 1 (positive) or 0 (negative)")
    return int(value)


def control_points_world(node) -> np.ndarray:
    """(P, 3) world RAS of a markups node's placed control points (undefined and hidden ones are skipped)."""
    import slicer

    points = []
    for i in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(i) != slicer.vtkMRMLMarkupsNode.PositionDefined:
            continue
        if not node.GetNthControlPointVisibility(i):
            continue
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        points.append(p)
    return np.array(points, float).reshape(-1, 3)


def points_to_frame(volume_node, point_nodes: Sequence[Any], axis: Optional[str] = None,
                    ) -> dict[int, tuple[list[tuple[float, float]], list[int]]]:
    """Control points of labelled fiducial nodes -> {slice: ([(row, col), ...], [label, ...])} in frame space.

    Points outside the volume raise ValueError (a click that would silently land on a border slice is a bug).
    """
    n_frames, height, width = _num_frames(volume_node, axis)
    out: dict[int, tuple[list[tuple[float, float]], list[int]]] = {}
    for node in point_nodes:
        if node is None:
            continue
        label = point_label(node)
        positions = control_points_world(node)
        if not len(positions):
            continue
        for n, row, col in ras_to_frame(volume_node, positions, axis):
            index = int(round(n))
            if not (0 <= index < n_frames and -0.5 <= row < height - 0.5 and -0.5 <= col < width - 0.5):
                raise ValueError(f"a point of {node.GetName()!r} lies outside the input volume")
            rows_cols, labels = out.setdefault(index, ([], []))
            rows_cols.append((float(row), float(col)))
            labels.append(label)
    return out


def roi_corners_world(roi_node) -> np.ndarray:
    """(8, 3) world RAS corners of a markups ROI (oriented boxes included)."""
    size = np.array(roi_node.GetSize(), float)
    object_to_world = vtk_matrix_to_numpy(roi_node.GetObjectToWorldMatrix())
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    corners = signs * size / 2.0
    return (object_to_world @ np.c_[corners, np.ones(8)].T).T[:, :3]


def roi_to_frame_box(volume_node, roi_node, axis: Optional[str] = None, slice_index: Optional[int] = None,
                     ) -> tuple[int, tuple[float, float, float, float]]:
    """A markups ROI -> (slice, (row0, col0, row1, col1)) in frame space.

    The box is the ROI projected onto the slice it cuts: ``slice_index`` (for example the slice shown in the
    Red view) when the ROI spans it, else the slice of the ROI's centre; the rectangle is the frame-space extent
    of the ROI's eight corners (exact for a box drawn on a slice, the bounding rectangle for an oblique one),
    clipped to the slice. Raises ValueError when the ROI misses the volume or that slice.
    """
    if roi_node.GetNumberOfControlPoints() == 0 or sum(v > 0 for v in roi_node.GetSize()) < 2:
        raise ValueError("the box is not placed yet")
    n_frames, height, width = _num_frames(volume_node, axis)
    corners = ras_to_frame(volume_node, roi_corners_world(roi_node), axis)
    first, last = corners[:, 0].min(), corners[:, 0].max()
    if slice_index is None or not first - 0.5 <= slice_index <= last + 0.5:
        center = [0.0, 0.0, 0.0]
        roi_node.GetCenterWorld(center)
        slice_index = int(round(ras_to_frame(volume_node, np.array([center]), axis)[0, 0]))
    if not 0 <= slice_index < n_frames:
        raise ValueError("the box lies outside the input volume")
    r0, r1 = max(corners[:, 1].min(), 0.0), min(corners[:, 1].max(), height - 1.0)
    c0, c1 = max(corners[:, 2].min(), 0.0), min(corners[:, 2].max(), width - 1.0)
    if r0 > r1 or c0 > c1:
        raise ValueError("the box does not overlap the input volume")
    return int(slice_index), (float(r0), float(c0), float(r1), float(c1))


def prompt_node(scene, role: str, create: bool = True):
    """The scene's TextPromptSeg prompt markups node of ``role`` ("positive", "negative" or "box")."""
    if role not in _ROLES:
        raise ValueError(f"role must be one of {', '.join(_ROLES)}, not {role!r}")
    name, color, label = _ROLES[role]
    class_name = "vtkMRMLMarkupsROINode" if role == "box" else "vtkMRMLMarkupsFiducialNode"
    nodes = scene.GetNodesByClass(class_name)
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute(PROMPT_ROLE_ATTRIBUTE) == role:
            return node
    if not create:
        return None
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetAttribute(PROMPT_ROLE_ATTRIBUTE, role)
    if label is not None:
        node.SetAttribute(POINT_LABEL_ATTRIBUTE, label)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        if role != "box":
            display.SetTextScale(0.0)  # the colour says it all; labels would cover the structure
    return node


def begin_placing(scene, node, persistent: bool = True) -> None:
    """Switch the views to placing control points into ``node`` (what the markups toolbar does)."""
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    if selection is None or interaction is None:
        raise RuntimeError("the scene has no selection or interaction node (no application logic)")
    selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
    selection.SetActivePlaceNodeID(node.GetID())
    interaction.SetPlaceModePersistence(1 if persistent else 0)
    interaction.SetCurrentInteractionMode(interaction.Place)


# ---------------------------------------------------------------------------------------------- segment slices
def segment_mask_on_volume(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """This segment's voxels on the input volume's grid: (z, y, x) bool (nearest-neighbour if the grids differ)."""
    import slicer
    import vtk
    from vtkmodules.util import numpy_support


    shape = volume_shape_zyx(volume_node)
    labelmap = segment_labelmap_copy(segmentation_node, segment_id)
    if labelmap is None:
        raise ValueError(f"segment {segment_id!r} is not in {segmentation_node.GetName()!r}")
    extent = labelmap.GetExtent()
    if labelmap.GetPointData().GetScalars() is None or extent[1] < extent[0]:
        return np.zeros(shape, bool)
    reference = slicer.vtkOrientedImageData()
    reference.SetDimensions(shape[2], shape[1], shape[0])
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    reference.SetImageToWorldMatrix(matrix)
    out = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, reference, out)
    scalars = out.GetPointData().GetScalars()
    if scalars is None:
        return np.zeros(shape, bool)
    array = numpy_support.vtk_to_numpy(scalars).reshape(shape)
    return array > 0


def write_frames(volume_node, segmentation_node, segment_id: str, geometry, masks: dict[int, np.ndarray]) -> None:
    """Replace the segment's voxels on the slices ``masks`` names ({slice: (H, W) bool in frame space}), only there.

    The segment's current voxels are read on the volume grid, those slices replaced in numpy and the whole segment
    written back with a replace, once for all the slices (other segments, shared layer or not, keep their voxels; so
    do this segment's other slices). Extent-limited min/max merges would touch only a slab, but slicer-core's
    merges dropped a slab's new voxels when the segment lies next to another segment, so they are not used.
    """
    if not masks:
        return
    current = geometry.to_frames(segment_mask_on_volume(segmentation_node, segment_id, volume_node)).copy()
    outside = [n for n in masks if not 0 <= n < len(current)]
    if outside:
        raise ValueError(f"slices {sorted(outside)} are outside the volume (0..{len(current) - 1})")
    for n, mask in masks.items():
        current[n] = np.asarray(mask, bool)
    write_segment(volume_node, segmentation_node, segment_id, geometry, current)


def write_segment(volume_node, segmentation_node, segment_id: str, geometry, frames: np.ndarray) -> None:
    """Replace the whole segment with ``frames`` ((N, H, W) bool in frame space of ``geometry``); other segments,
    shared layer or not, keep their voxels."""
    import slicer


    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(mask_to_oriented_image(geometry.from_frames(frames), volume_node),
                                            segmentation_node, segment_id, logic.MODE_REPLACE):
        raise RuntimeError(f"Slicer could not write the segment {segment_id!r}")


def slice_digests(frames: np.ndarray) -> list[bytes]:
    """A short digest per frame of a (N, H, W) bool stack (to notice slices edited since they were written)."""
    return [hashlib.blake2b(np.packbits(f).tobytes(), digest_size=8).digest() for f in np.asarray(frames, bool)]


# ---------------------------------------------------------------------------------------------- quality
@dataclass
class SliceQuality:
    """Per-slice quality of one segment along its slicing axis.

    scores: (N,) object-score logits (> 0: object present; NaN: slice not reached); areas_mm2: (N,) segment area
    per slice; least_confident: the reached slice whose score is closest to the decision threshold 0 (None when
    no slice was reached); axis: the slicing axis name given to the run (None: automatic).
    """

    scores: np.ndarray
    areas_mm2: np.ndarray
    least_confident: Optional[int]
    axis: Optional[str] = None

    @classmethod
    def from_arrays(cls, scores, areas_mm2, axis: Optional[str] = None) -> SliceQuality:
        scores = np.asarray(scores, float).copy()
        scores[~np.isfinite(scores)] = np.nan
        reached = np.flatnonzero(~np.isnan(scores))
        least = int(reached[np.argmin(np.abs(scores[reached]))]) if len(reached) else None
        return cls(scores, np.asarray(areas_mm2, float), least, axis)

    @property
    def probabilities(self) -> np.ndarray:
        """(N,) object probability in % (0 where not reached)."""
        with np.errstate(over="ignore"):
            p = 100.0 / (1.0 + np.exp(-np.nan_to_num(self.scores, nan=-np.inf)))
        return p


def write_quality_table(scene, segmentation_node, segment_id: str, quality: SliceQuality, name: str):
    """Create or update the segment's per-slice table node (kept in the scene, saved with it) and its plot.

    Returns (table node, chart node). Columns: QA_COLUMNS; the chart plots object probability and area (both
    in %) against the slice index, so a point ID in the plot is the slice index.
    """
    import vtk

    table_node = find_quality_table(scene, segmentation_node, segment_id)
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} per-slice QA")
        table_node.SetAttribute(QA_SEGMENTATION_ATTRIBUTE, segmentation_node.GetID())
        table_node.SetAttribute(QA_SEGMENT_ATTRIBUTE, segment_id)
    table = vtk.vtkTable()
    largest = float(np.nanmax(quality.areas_mm2)) if len(quality.areas_mm2) and np.nanmax(quality.areas_mm2) > 0 \
        else 1.0
    columns = (np.arange(len(quality.scores), dtype=float), quality.scores, quality.probabilities,
               quality.areas_mm2, 100.0 * quality.areas_mm2 / largest)
    for title, values in zip(QA_COLUMNS, columns):
        array = vtk.vtkDoubleArray()
        array.SetName(title)
        for v in values:
            array.InsertNextValue(float(v))
        table.AddColumn(array)
    table_node.SetAndObserveTable(table)
    table_node.SetAttribute(QA_AXIS_ATTRIBUTE, quality.axis or "auto")
    table_node.SetAttribute(QA_LEAST_CONFIDENT_ATTRIBUTE,
                            "" if quality.least_confident is None else str(quality.least_confident))
    chart = _quality_chart(scene, table_node, name)
    return table_node, chart


def _quality_chart(scene, table_node, name: str):
    import slicer

    chart_id = table_node.GetAttribute("TextPromptSeg.ChartNodeID")
    chart = scene.GetNodeByID(chart_id) if chart_id else None
    if chart is not None:
        return chart
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} per-slice QA")
    chart.SetXAxisTitle("slice")
    chart.SetYAxisTitle("%")
    chart.SetLegendVisibility(True)
    for column, color in ((QA_COLUMNS[2], (0.95, 0.55, 0.1)), (QA_COLUMNS[4], (0.2, 0.55, 0.95))):
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {column}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(QA_COLUMNS[0])
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetColor(*color)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    table_node.SetAttribute("TextPromptSeg.ChartNodeID", chart.GetID())
    return chart


def find_quality_table(scene, segmentation_node, segment_id: str):
    nodes = scene.GetNodesByClass("vtkMRMLTableNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute(QA_SEGMENTATION_ATTRIBUTE) == segmentation_node.GetID() and \
                node.GetAttribute(QA_SEGMENT_ATTRIBUTE) == segment_id:
            return node
    return None


def read_quality_table(table_node) -> SliceQuality:
    """The SliceQuality stored in a table node by :func:`write_quality_table` (works after a scene reload)."""
    table = table_node.GetTable()
    scores = np.array([table.GetValueByName(r, QA_COLUMNS[1]).ToDouble() for r in range(table.GetNumberOfRows())])
    areas = np.array([table.GetValueByName(r, QA_COLUMNS[3]).ToDouble() for r in range(table.GetNumberOfRows())])
    axis = table_node.GetAttribute(QA_AXIS_ATTRIBUTE)
    return SliceQuality.from_arrays(scores, areas, None if axis in (None, "auto") else axis)
