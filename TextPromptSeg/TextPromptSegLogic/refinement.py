"""Refinement of the Logic (issue 5): engine sessions kept per volume, per-segment engine state, "refine from this
slice" and click updates. A mixin of :class:`~.logic.TextPromptSegLogic`; no Qt."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

from .interactive import SliceQuality
from .jobs import RefineOutcome, SegmentationJob, SegmentState, _Engine, _UndoEntry
from .nodes import geometry_from_node, segment_labelmap_copy, vtk_matrix_to_numpy
from .segments import segment_prompt

log = logging.getLogger(__name__)


class RefinementMixin:
    """Engine sessions (worker thread), segment state (main thread) and refinement."""

    # ------------------------------------------------------------------ engine sessions (worker thread)
    def _engine_key(self, volume_node, model: Optional[str], device: Optional[str], axis: Optional[str],
                    window, channel_nodes: Sequence[Any] = ()) -> tuple:
        """What an encoded session and a segment's engine state depend on (main thread: reads the nodes)."""
        import vtk

        matrix = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(matrix)

        def stamp(node) -> tuple:
            image = node.GetImageData()
            return node.GetID(), image.GetMTime() if image is not None else 0

        return (*stamp(volume_node), tuple(np.round(vtk_matrix_to_numpy(matrix), 9).ravel()), model or "",
                device or "auto", axis or "auto", repr(window), self.precision,
                tuple(stamp(n) for n in channel_nodes))

    def _engine_for(self, key: tuple, volume, model: Optional[str], device: str, axis: Optional[str],
                    window, progress: Optional[Callable[[Any], None]] = None) -> _Engine:
        """The session for ``key``, encoding nothing until the model asks for a slice (worker thread)."""
        engine = self._engines.get(key)
        if engine is not None:
            self._engines.move_to_end(key)
            return engine
        if volume is None:
            raise RuntimeError("The encoded volume was released meanwhile; press the button again.")
        from TextPromptSegLib.engine.pipeline import PreparedVolume
        from TextPromptSegLib.engine.tpp_engine import make_propagator

        propagator = make_propagator(self._model(model, device, progress), device, self.encode_batch_size,
                                     precision=self.precision)
        if hasattr(propagator, "cache_bytes"):
            propagator.cache_bytes = int(self.session_cache_bytes)
        prepared = PreparedVolume.for_model(volume, propagator.model, axis, window)
        engine = _Engine(key, propagator, prepared, propagator.start_session(prepared.frame_source()))
        self._engines[key] = engine
        while len(self._engines) > max(1, self.max_sessions):
            self._engines.popitem(last=False)
        return engine

    def session_for(self, segmentation_node, segment_id: str):
        """The engine Session (encoded slices) that a segment's refinements reuse, or None."""
        state = self._states.get((segmentation_node.GetID(), segment_id))
        engine = self._engines.get(state.key) if state is not None else None
        return engine.session if engine is not None else None

    def segment_state(self, segmentation_node, segment_id: str) -> Optional[SegmentState]:
        return self._states.get((segmentation_node.GetID(), segment_id))

    # ------------------------------------------------------------------ state and quality (main thread)
    def _keep_states(self, job: SegmentationJob, result, segmentation_node, outcomes) -> None:
        from .interactive import slice_digests

        axis = job.info.get("axis")
        for request, seg, outcome in zip(job.info["requests"], result.segments, outcomes):
            frames = result.geometry.to_frames(seg.mask)
            state = SegmentState(
                key=job.info["key"], prompt=seg.prompt, axis=axis, propagation=seg.propagation,
                corrections={int(n): np.asarray(m, bool).copy() for n, m in request.mask_prompts.items()},
                digests=slice_digests(frames),
                quality=SliceQuality.from_arrays(seg.slice_scores, seg.slice_areas_mm2, axis),
                channels=tuple(job.info.get("channels", ())))
            self._set_state(segmentation_node, outcome.segment_id, state)

    def _set_state(self, segmentation_node, segment_id: str, state: Optional[SegmentState],
                   remove_table: bool = False) -> None:
        """Store (or drop) a segment's state and bring its per-slice quality table in line."""
        from .interactive import find_quality_table, write_quality_table

        key = (segmentation_node.GetID(), segment_id)
        scene = segmentation_node.GetScene()
        if state is None:
            self._states.pop(key, None)
            table = find_quality_table(scene, segmentation_node, segment_id) if scene is not None else None
            if table is not None and remove_table:
                chart = scene.GetNodeByID(table.GetAttribute("TextPromptSeg.ChartNodeID") or "")
                if chart is not None:
                    for i in range(chart.GetNumberOfPlotSeriesNodes()):
                        scene.RemoveNode(chart.GetNthPlotSeriesNode(i))
                    scene.RemoveNode(chart)
                scene.RemoveNode(table)
            return
        self._states[key] = state
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        if scene is not None and segment is not None:
            write_quality_table(scene, segmentation_node, segment_id, state.quality, segment.GetName())
    # ------------------------------------------------------------------ refinement
    def can_refine(self, segmentation_node, segment_id: Optional[str]) -> bool:
        """Whether a segment exists to refine (any segment works: one without engine state is refined from its
        current voxels with its prompt tag, or its name, as the text)."""
        return bool(segment_id) and segmentation_node is not None and \
            segmentation_node.GetSegmentation().GetSegment(segment_id) is not None

    def start_refine_from_slice(self, volume_node, segmentation_node, segment_id: str, slice_index: int,
                                model: Optional[str] = None, device: str = "auto", axis: Optional[str] = None,
                                window=None) -> SegmentationJob:
        """"Refine from this slice": the segment's voxels on ``slice_index`` (as the user corrected them with the
        Segment Editor) become a mask prompt, kept exactly, and the model re-propagates both ways only as far as
        the masks change. Returns the job; :meth:`finish` writes the changed slices (undoable)."""
        return self._start_refinement(volume_node, segmentation_node, segment_id, slice_index, None, model, device,
                                      axis, window)

    def start_point_update(self, volume_node, segmentation_node, segment_id: str, point_nodes: Sequence[Any],
                           slice_index: Optional[int] = None, model: Optional[str] = None, device: str = "auto",
                           axis: Optional[str] = None, window=None) -> SegmentationJob:
        """A click update: the positive/negative points on one slice correct the segment's mask there (the
        current mask is the model's dense prompt), then the change propagates as far as it goes.

        slice_index: which slice's points to use; default: the slice of the last control point of the last
        non-empty node in ``point_nodes`` (put the node that just received a point last).
        """
        from .interactive import control_points_world, points_to_frame, ras_to_frame

        clicks = points_to_frame(volume_node, point_nodes, axis)
        if not clicks:
            raise ValueError("Place a positive or negative point on the volume first.")
        if slice_index is None:
            for node in reversed(list(point_nodes)):
                positions = control_points_world(node) if node is not None else np.zeros((0, 3))
                if len(positions):
                    slice_index = int(round(ras_to_frame(volume_node, positions[-1:], axis)[0, 0]))
                    break
        if slice_index not in clicks:
            raise ValueError(f"No point lies on slice {slice_index}.")
        return self._start_refinement(volume_node, segmentation_node, segment_id, slice_index, clicks[slice_index],
                                      model, device, axis, window)

    def refine_from_slice(self, volume_node, segmentation_node, segment_id: str, slice_index: int,
                          timeout: Optional[float] = None, **options: Any) -> RefineOutcome:
        """:meth:`start_refine_from_slice` and wait (batch scripts and tests)."""
        job = self.start_refine_from_slice(volume_node, segmentation_node, segment_id, slice_index, **options)
        return self.finish(self._wait(job, timeout), volume_node, segmentation_node)

    def update_from_points(self, volume_node, segmentation_node, segment_id: str, point_nodes: Sequence[Any],
                           slice_index: Optional[int] = None, timeout: Optional[float] = None,
                           **options: Any) -> RefineOutcome:
        """:meth:`start_point_update` and wait (batch scripts and tests)."""
        job = self.start_point_update(volume_node, segmentation_node, segment_id, point_nodes, slice_index,
                                      **options)
        return self.finish(self._wait(job, timeout), volume_node, segmentation_node)

    def _start_refinement(self, volume_node, segmentation_node, segment_id: str, slice_index: int, clicks,
                          model: Optional[str], device: str, axis: Optional[str], window) -> SegmentationJob:
        """Read the segment on the main thread, refine on the worker; ``clicks``: (rows_cols, labels) or None."""
        from TextPromptSegLib.engine.progress import CancelToken

        from .interactive import segment_mask_on_volume, slice_digests, slice_geometry

        if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError("Select a scalar volume as input.")
        if not self.can_refine(segmentation_node, segment_id):
            raise ValueError("Select the segment to refine.")
        state = self._states.get((segmentation_node.GetID(), segment_id))
        scene = volume_node.GetScene()
        channel_nodes = [scene.GetNodeByID(i) for i in state.channels] if state is not None and scene else []
        if any(n is None for n in channel_nodes):
            channel_nodes, state = [], None  # an extra input volume was removed: refine from the voxels
        key = self._engine_key(volume_node, model, device, axis, window, channel_nodes)
        if state is not None and state.key != key:
            log.info("volume, model, device or axis changed since segment %s was made: refining from its voxels",
                     segment_id)
            state = None
        frames = slice_geometry(volume_node, axis).to_frames(
            segment_mask_on_volume(segmentation_node, segment_id, volume_node))
        if not 0 <= slice_index < len(frames):
            raise ValueError(f"Slice {slice_index} is outside the volume (0..{len(frames) - 1}).")
        keep: dict[int, np.ndarray] = {}
        if state is not None:
            keep.update(state.corrections)
            edited = [i for i, (now, then) in enumerate(zip(slice_digests(frames), state.digests)) if now != then]
            keep.update({i: frames[i].copy() for i in edited})  # slices the user edited are kept as they are
        keep.pop(slice_index, None)
        corrected = frames[slice_index].copy() if clicks is None else None
        previous = state.propagation if state is not None else None
        current = frames.copy() if state is None else None  # the "previous result" of a segment without state
        prompt = state.prompt if state is not None else self._segment_prompt(segmentation_node, segment_id)
        volume = None if key in self._engines else self.input_volume(volume_node, channel_nodes, model)
        job = SegmentationJob(cancel=CancelToken(), kind="refine", info={
            "key": key, "axis": axis, "segment_id": segment_id, "slice_index": slice_index, "prompt": prompt,
            "channels": tuple(n.GetID() for n in channel_nodes),
            "keep": keep, "clicks": clicks is not None})
        unchanged_run, unchanged_iou = self.unchanged_run, self.unchanged_iou

        def run() -> None:
            from TextPromptSegLib.engine.device import pick_device
            from TextPromptSegLib.engine.pipeline import refine_volume, result_from_masks

            engine = self._engine_for(key, volume, model, str(pick_device(device)), axis, window)
            if not hasattr(engine.session, "refine"):
                raise ValueError("Refinement needs a TGSAM-2 model; the selected model cannot refine.")
            before = engine.session.encode_count
            prev = previous if previous is not None else result_from_masks(engine.prepared, current)
            job.result = refine_volume(engine.prepared, engine.session, prompt, prev, slice_index,
                                       mask=corrected, points=clicks, keep=keep, unchanged_run=unchanged_run,
                                       unchanged_iou=unchanged_iou, progress=job.events.put, cancel=job.cancel)
            job.info["encoded"] = engine.session.encode_count - before

        return self.submit(job, run, "refinement")

    def show_refinement_progress(self, job: SegmentationJob, events: Sequence[Any], volume_node,
                                 segmentation_node) -> list[int]:
        """Main thread, while a refinement runs: draw the slices it already changed (progress events that carry a
        mask) into the segment at once, so the user sees the first updated slice without waiting for the end.
        The segment is kept first, so a cancel or an error restores it and :meth:`undo` undoes the whole
        refinement. Returns the slices drawn."""
        from .interactive import slice_geometry, write_frames

        if job.kind != "refine":
            return []
        segment_id = job.info["segment_id"]
        if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
            return []
        masks = {}
        drawn = []
        for event in events:
            if getattr(event, "mask", None) is None or event.slice_index < 0:
                continue
            masks[event.slice_index] = event.mask
            drawn.append(event.slice_index)
        if masks:  # one write for all the slices of this poll
            if "saved" not in job.info:
                job.info["saved"] = segment_labelmap_copy(segmentation_node, segment_id)
            write_frames(volume_node, segmentation_node, segment_id, slice_geometry(volume_node, job.info["axis"]),
                         masks)
        return drawn

    def _restore_preview(self, job: SegmentationJob, segmentation_node) -> None:
        import slicer

        saved = job.info.pop("saved", None)
        segment_id = job.info.get("segment_id")
        if saved is not None and segmentation_node.GetSegmentation().GetSegment(segment_id) is not None:
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                saved, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)

    def apply_refinement(self, job: SegmentationJob, volume_node, segmentation_node) -> RefineOutcome:
        """Main thread: write the slices a refinement changed into the segment (only that segment and only
        those slices: every other slice keeps its voxels, including edits made while the model ran); undoable
        with :meth:`undo`."""
        from .interactive import segment_mask_on_volume, slice_digests, slice_geometry, write_segment

        info, result = job.info, job.result
        segment_id = info["segment_id"]
        if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
            raise ValueError("The segment was removed while the model ran; nothing was changed.")
        geometry = slice_geometry(volume_node, info["axis"])
        frames = np.array(geometry.to_frames(segment_mask_on_volume(segmentation_node, segment_id, volume_node)))
        for n, mask in result.frame_masks.items():
            frames[n] = mask
        previous_state = self._states.get((segmentation_node.GetID(), segment_id))
        saved = info.pop("saved", None)  # kept by show_refinement_progress before its first slice
        saved = saved if saved is not None else segment_labelmap_copy(segmentation_node, segment_id)
        if result.frame_masks:  # the segment as read above, with the changed slices replaced
            write_segment(volume_node, segmentation_node, segment_id, geometry, frames)
        # one undo step per user action, even one that changed nothing (Undo must not skip to an older action)
        self.undo_stack.append(_UndoEntry(segmentation_node, {segment_id: saved}, {segment_id: previous_state}))
        spacing, _, _ = geometry_from_node(volume_node)
        pixel_mm2 = spacing[geometry.row_axis] * spacing[geometry.col_axis]
        corrections = dict(info["keep"])
        corrections[info["slice_index"]] = frames[info["slice_index"]].copy()
        state = SegmentState(
            key=info["key"], prompt=info["prompt"], axis=info["axis"], propagation=result.propagation,
            corrections=corrections, digests=slice_digests(frames),
            quality=SliceQuality.from_arrays(result.propagation.scores,
                                             frames.reshape(len(frames), -1).sum(1) * pixel_mm2, info["axis"]),
            channels=tuple(info.get("channels", ())))
        self._set_state(segmentation_node, segment_id, state)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        return RefineOutcome(segment_id, info["slice_index"], list(result.frame_masks), list(result.visited),
                             int(info.get("encoded", 0)), float(frames.sum()) * voxel_ml)

    @staticmethod
    def _segment_prompt(segmentation_node, segment_id: str) -> str:
        """The segment's stored prompt, else its name (the text for refining a segment without engine state)."""
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        prompt = segment_prompt(segment)
        return prompt if prompt.strip() else segment.GetName()
