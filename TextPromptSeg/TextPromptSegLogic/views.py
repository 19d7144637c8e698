"""What the Logic offers the views: the per-slice quality strip, jumping to a slice, and placing points and a box.
A mixin of :class:`~.logic.TextPromptSegLogic`; main thread, no Qt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from .interactive import VisualPrompts


class ViewsMixin:
    """Quality strip, slice jumps and visual prompts (main thread)."""

    def slice_quality(self, segmentation_node, segment_id: str):
        """Per-slice object score and area of a segment (:class:`.interactive.SliceQuality`), or None.

        Comes from the last run or refinement, or from the segment's quality table in the scene (so it survives
        saving and reopening the scene).
        """
        from .interactive import find_quality_table, read_quality_table

        state = self._states.get((segmentation_node.GetID(), segment_id))
        if state is not None:
            return state.quality
        scene = segmentation_node.GetScene()
        table = find_quality_table(scene, segmentation_node, segment_id) if scene is not None else None
        return read_quality_table(table) if table is not None else None

    def least_confident_slice(self, segmentation_node, segment_id: str) -> Optional[int]:
        """The slice whose object score is closest to the present/absent threshold (None: no quality known)."""
        quality = self.slice_quality(segmentation_node, segment_id)
        return quality.least_confident if quality is not None else None

    def quality_chart(self, segmentation_node, segment_id: str):
        """The vtkMRMLPlotChartNode of a segment's per-slice strip (point ID = slice index), or None."""
        from .interactive import find_quality_table

        scene = segmentation_node.GetScene()
        table = find_quality_table(scene, segmentation_node, segment_id) if scene is not None else None
        chart_id = table.GetAttribute("TextPromptSeg.ChartNodeID") if table is not None else None
        return scene.GetNodeByID(chart_id) if chart_id else None

    @staticmethod
    def quality_plot_view_node(scene, chart=None):
        """The plot view node the panel's strip shows (one per scene, hidden from editors), set to ``chart``
        and to point selection, so a click on a point reports its slice."""
        import slicer

        nodes = scene.GetNodesByClass("vtkMRMLPlotViewNode")
        view = None
        for i in range(nodes.GetNumberOfItems()):
            if nodes.GetItemAsObject(i).GetAttribute("TextPromptSeg.QualityView") == "1":
                view = nodes.GetItemAsObject(i)
        if view is None:
            view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode", "TextPromptSeg quality strip")
            view.SetAttribute("TextPromptSeg.QualityView", "1")
            view.SetHideFromEditors(True)
        view.SetPlotChartNodeID(chart.GetID() if chart is not None else None)
        view.SetInteractionMode(slicer.vtkMRMLPlotViewNode.InteractionModeSelectPoints)
        return view

    def segment_axis(self, segmentation_node, segment_id: str, default: Optional[str] = None) -> Optional[str]:
        """The slicing axis a segment was propagated along (None: automatic), else ``default``."""
        quality = self.slice_quality(segmentation_node, segment_id)
        return quality.axis if quality is not None else default

    def slice_jump_point(self, volume_node, slice_index: int, segmentation_node=None,
                         segment_id: Optional[str] = None, axis: Optional[str] = None) -> np.ndarray:
        """World RAS (3,) to move the slice views to for slice ``slice_index`` of the slicing axis.

        The point is the centre of the segment on that slice when it has voxels there (so the views land on the
        structure), else the centre of the slice; it goes through the volume's IJK-to-RAS matrix and the
        engine's slice geometry, so it is right for oblique and flipped volumes. ``axis`` defaults to the
        segment's own slicing axis.
        """
        from .interactive import _num_frames, frame_to_ras, segment_mask_on_volume, slice_geometry

        if segmentation_node is not None and segment_id is not None and axis is None:
            axis = self.segment_axis(segmentation_node, segment_id)
        n_frames, height, width = _num_frames(volume_node, axis)
        if not 0 <= slice_index < n_frames:
            raise IndexError(f"slice {slice_index} is outside 0..{n_frames - 1}")
        row, col = (height - 1) / 2.0, (width - 1) / 2.0
        if segmentation_node is not None and segment_id is not None:
            mask = segment_mask_on_volume(segmentation_node, segment_id, volume_node)
            frame = slice_geometry(volume_node, axis).to_frames(mask)[slice_index]
            if frame.any():
                rows, cols = np.nonzero(frame)
                centre = np.array([rows.mean(), cols.mean()])
                nearest = np.argmin((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2)  # inside the segment
                row, col = float(rows[nearest]), float(cols[nearest])
        return frame_to_ras(volume_node, slice_index, row, col, axis)

    def jump_to_slice(self, volume_node, slice_index: int, segmentation_node=None, segment_id: Optional[str] = None,
                      axis: Optional[str] = None) -> np.ndarray:
        """Move every slice view to :meth:`slice_jump_point` (centred on it); returns the RAS point."""
        import slicer

        ras = self.slice_jump_point(volume_node, slice_index, segmentation_node, segment_id, axis)
        slicer.vtkMRMLSliceNode.JumpAllSlices(volume_node.GetScene(), float(ras[0]), float(ras[1]), float(ras[2]),
                                              slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        return ras

    def jump_to_least_confident_slice(self, volume_node, segmentation_node, segment_id: str) -> Optional[int]:
        """Move the slice views to the segment's least confident slice; returns it (None when unknown)."""
        index = self.least_confident_slice(segmentation_node, segment_id)
        if index is not None:
            self.jump_to_slice(volume_node, index, segmentation_node, segment_id)
        return index

    # ------------------------------------------------------------------ visual prompts (main thread)
    @staticmethod
    def prompt_node(scene, role: str, create: bool = True):
        """The scene's positive-point, negative-point or box markups node ("positive", "negative", "box")."""
        from .interactive import prompt_node

        return prompt_node(scene, role, create)

    @staticmethod
    def begin_placing(scene, node, persistent: bool = True) -> None:
        """Put the views in place mode for ``node`` (a click in a slice view adds a point or draws the box)."""
        from .interactive import begin_placing

        begin_placing(scene, node, persistent)

    @staticmethod
    def clear_visual_prompts(scene) -> None:
        """Remove every placed point and the box (the nodes stay, empty)."""
        from .interactive import prompt_node

        for role in ("positive", "negative", "box"):
            node = prompt_node(scene, role, create=False)
            if node is not None:
                node.RemoveAllControlPoints()

    @staticmethod
    def collect_visual_prompts(volume_node, axis: Optional[str] = None, point_nodes: Optional[Sequence[Any]] = None,
                               roi_node=None, box_slice: Optional[int] = None) -> VisualPrompts:
        """Points and the box placed as markups -> frame-space prompts for :meth:`start` (``visual=``).

        point_nodes: fiducial nodes labelled with ``TextPromptSeg.PointLabel`` (default: the scene's positive
        and negative prompt nodes); roi_node: a markups ROI (default: the scene's box node), projected onto
        ``box_slice`` (for example the Red view's slice) when it spans it, else onto its centre's slice.
        """
        from .interactive import VisualPrompts, points_to_frame, prompt_node, roi_to_frame_box

        scene = volume_node.GetScene()
        if point_nodes is None:
            point_nodes = [prompt_node(scene, role, create=False) for role in ("positive", "negative")]
        if roi_node is None:
            roi_node = prompt_node(scene, "box", create=False)
        prompts = VisualPrompts(point_prompts=points_to_frame(volume_node, [n for n in point_nodes if n], axis))
        if roi_node is not None and roi_node.GetNumberOfControlPoints() > 0:
            n, box = roi_to_frame_box(volume_node, roi_node, axis, box_slice)
            prompts.box_prompts[n] = box
        return prompts

