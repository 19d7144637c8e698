"""``TextPromptSegLogic``: everything the panel does, usable headless (Slicer, batch scripts, pytest on slicer-core).

Threads: model work runs on ONE persistent worker thread (GPU kernel caches are per thread); MRML is touched only
by the thread that calls :meth:`TextPromptSegLogic.apply_results` (the main thread in Slicer, which polls
:meth:`SegmentationJob.poll` from a timer so the GUI stays responsive).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

from .familiarity import prompt_familiarity
from .interactive import VisualPrompts
from .jobs import SegmentationJob, SegmentState, UndoStack, _Engine, _UndoEntry, _Worker
from .nodes import (
    geometry_from_node,
    mask_to_oriented_image,
    segment_labelmap_copy,
    volume_from_node,
    vtk_matrix_to_numpy,
)
from .refinement import RefinementMixin
from .segments import SegmentOutcome, build_requests, segment_id_for_prompt, structure_text, style_segment
from .views import ViewsMixin

log = logging.getLogger(__name__)


class TextPromptSegLogic(RefinementMixin, ViewsMixin):
    """Everything the panel does, usable headless: ``process(...)`` segments prompts into a segmentation node.

    ``model_loader(name, device)`` builds a model (default: the library registry); models are cached per
    (name, device) and only touched on the worker thread.
    """

    def __init__(self, model_loader: Optional[Callable[[Optional[str], str], Any]] = None) -> None:
        self._model_loader = model_loader
        self._models: dict[tuple[Optional[str], str], Any] = {}
        self._worker: Optional[_Worker] = None
        self.undo_stack = UndoStack(limit=20)  # undo steps kept (labelmap copies of what each step replaced)
        # interactive refinement (issue 5): engine sessions (worker thread) and per-segment state (main thread)
        self._engines: OrderedDict[tuple, _Engine] = OrderedDict()
        self._states: dict[tuple[str, str], SegmentState] = {}
        self.max_sessions = 1  # encoded volumes kept; each is bounded by session_cache_bytes
        self.session_cache_bytes = 2 << 30
        self.encode_batch_size = None  # the engine's default for the device
        self.precision = "auto"  # bf16 on CUDA, float32 on CPU (engine.device.resolve_precision)
        self.unchanged_run = 3  # a refinement stops after this many slices that match the previous result
        self.unchanged_iou = 0.95  # ... where "match" means at least this IoU of the low-resolution masks

    # ------------------------------------------------------------------ models (worker thread)
    def _model(self, name: Optional[str], device: str, progress: Optional[Callable[[Any], None]] = None):
        """The model for (name, device), built once; registered files missing locally are downloaded with
        checksum verification, reporting ``ProgressEvent("download", bytes done, bytes total)``."""
        key = (name, device)
        if key not in self._models:
            if self._model_loader is not None:
                self._models[key] = self._model_loader(name, device)
            else:
                from TextPromptSegLib.engine.progress import ProgressEvent
                from TextPromptSegLib.registry import load_model

                def downloaded(done: int, total: Optional[int]) -> None:
                    if progress is not None:
                        mb = f"{done / 1e6:.0f} of {total / 1e6:.0f} MB" if total else f"{done / 1e6:.0f} MB"
                        progress(ProgressEvent("download", done, total or 0, message=f"downloading {name}: {mb}"))

                self._models[key] = load_model(name, device=device, download_missing=True, progress=downloaded)
        return self._models[key]

    def _worker_thread(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker()
        return self._worker

    def submit(self, job, work: Callable[[], None], what: str):
        """Run ``work`` on the worker thread and return ``job``. A cancel or an error lands in ``job.error`` (an error
        is logged, and the GUI shows it; the worker keeps running); ``job.done`` is set whatever happens."""
        from TextPromptSegLib.engine.progress import Cancelled

        def run() -> None:
            try:
                work()
            except Cancelled as exc:
                job.error = exc
            except Exception as exc:
                log.exception("%s failed", what)
                job.error = exc
            finally:
                job.done.set()

        self._worker_thread().submit(run)
        return job

    def shutdown(self) -> None:
        """Stop the worker thread and release the encoded volumes (segments keep their state)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self._engines.clear()

    # ------------------------------------------------------------------ running
    def start(self, volume_node, prompts: Sequence[str], model: Optional[str] = None, device: str = "auto",
              start_slice: Optional[int] = None, axis: Optional[str] = None, window=None,
              direction: str = "both", max_empty_run: Optional[int] = None,
              slice_range: Optional[tuple[int, int]] = None,
              visual: Optional[VisualPrompts] = None, channel_nodes: Sequence[Any] = ()) -> SegmentationJob:
        """Validate on the calling (main) thread, copy the voxels, and run the model on the worker thread.

        start_slice and slice_range (first, last; inclusive) are indices along the slicing axis (``axis``, or the
        acquisition axis), as returned by :meth:`slice_index_from_ras`. visual: clicks and boxes (see
        :meth:`collect_visual_prompts`) given to the model with the text; they belong to one structure, so they
        need exactly one prompt. channel_nodes: further co-registered sequences when the model reads a composite
        (:meth:`channel_sets`; e.g. the T1c volume after a FLAIR input), combined as training combines them.
        """
        from TextPromptSegLib.engine.pipeline import segment_volume
        from TextPromptSegLib.engine.progress import CancelToken

        requests = build_requests(prompts)
        if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError("Select a scalar volume as input.")
        if visual and len(requests) > 1:
            raise ValueError("Points and boxes belong to one structure: segment one prompt at a time when you "
                             "place them (or clear them).")
        channel_nodes = tuple(channel_nodes or ())
        volume = self.input_volume(volume_node, channel_nodes, model)
        if visual:
            requests[0].point_prompts = dict(visual.point_prompts)
            requests[0].box_prompts = dict(visual.box_prompts)
        key = self._engine_key(volume_node, model, device, axis, window, channel_nodes)
        job = SegmentationJob(cancel=CancelToken(), info={"key": key, "axis": axis, "requests": requests,
                                                          "channels": tuple(n.GetID() for n in channel_nodes)})

        def run() -> None:
            from TextPromptSegLib.engine.device import pick_device

            dev = str(pick_device(device))
            engine = self._engine_for(key, volume, model, dev, axis, window, job.events.put)
            job.result = segment_volume(volume, requests, propagator=engine.propagator, session=engine.session,
                                        prepared=engine.prepared, start_slice=start_slice, direction=direction,
                                        max_empty_run=max_empty_run, slice_range=slice_range,
                                        estimate=dev == "cpu", progress=job.events.put, cancel=job.cancel)

        return self.submit(job, run, "segmentation")

    @staticmethod
    def channel_sets(model: Optional[str] = None) -> list[Any]:
        """The sets of co-registered sequences the model reads together (``ChannelSet``: ``sequences`` in input
        order, ``structures`` they serve), from its checkpoint's config without torch; empty for a model that
        reads one image (or cannot be found). The panel offers extra input volumes only for these."""
        from TextPromptSegLib.registry import RegistryError, model_inputs

        try:
            return list(model_inputs(model or None).channels)
        except (RegistryError, OSError, ValueError) as exc:
            log.debug("no channel sets: %s", exc)
            return []

    @classmethod
    def input_volume(cls, volume_node, channel_nodes: Sequence[Any] = (), model: Optional[str] = None):
        """The library Volume the model reads: the input node's voxels, or with ``channel_nodes`` the composite of
        the input and those nodes (in the model's channel order). ValueError when the model reads no composite of
        that many sequences or the volumes lie on different grids (main thread; copies the voxels)."""
        from TextPromptSegLib.io.volumes import InputError, combine_channels

        if not channel_nodes:
            return volume_from_node(volume_node)
        nodes = [volume_node, *channel_nodes]
        if any(n is None or not n.IsA("vtkMRMLScalarVolumeNode") or n.IsA("vtkMRMLVectorVolumeNode") for n in nodes):
            raise ValueError("Every input sequence must be a scalar volume.")
        wanted = next((c for c in cls.channel_sets(model) if len(c.sequences) == len(nodes)), None)
        if wanted is None:
            raise ValueError(f"The model does not read {len(nodes)} sequences together: clear the extra input "
                             "volumes, or pick a model trained on these sequences.")
        try:
            return combine_channels([volume_from_node(n) for n in nodes],
                                    [f"{n.GetName()} ({s})" for n, s in zip(nodes, wanted.sequences)])
        except InputError as exc:
            raise ValueError(str(exc)) from exc

    def start_sequence(self, node, prompts: Sequence[str], model: Optional[str] = None, device: str = "auto",
                       start_frame: Optional[int] = None, window=None, output_node=None, browser_node=None,
                       sequences_logic=None):
        """2D+t: segment a Sequence of frames (or its proxy volume, or a multi-frame volume) frame by frame on the
        worker thread. Returns a ``sequences.SequenceJob``: ``poll()`` it, then ``finish()`` on the main thread
        gives a ``SequenceRun`` (segmentation Sequence browsed with the input; ``refine``, ``undo``)."""
        from .sequences import start_sequence

        return start_sequence(self, node, prompts, model, device, start_frame, window, output_node, browser_node,
                              sequences_logic)

    def process(self, volume_node, segmentation_node, prompts: Sequence[str], timeout: Optional[float] = None,
                **options: Any) -> list[SegmentOutcome]:
        """Segment and wait (batch scripts and tests); ``options`` are those of :meth:`start`. Raises the job's
        error; on cancel or error the segmentation node is not changed."""
        job = self.start(volume_node, prompts, **options)
        return self.finish(self._wait(job, timeout), volume_node, segmentation_node)

    @staticmethod
    def _wait(job: SegmentationJob, timeout: Optional[float]) -> SegmentationJob:
        if not job.done.wait(timeout):
            job.cancel.cancel()
            job.done.wait()
            raise TimeoutError("the model did not finish in time")
        return job

    def finish(self, job: SegmentationJob, volume_node, segmentation_node):
        """Main thread: apply a finished job to MRML, or raise its error (the node is then unchanged).

        Returns a list of SegmentOutcome for a segmentation run, a RefineOutcome for a refinement.
        """
        if job.error is not None:
            if job.kind == "refine":
                self._restore_preview(job, segmentation_node)
            raise job.error
        if job.kind == "refine":
            return self.apply_refinement(job, volume_node, segmentation_node)
        return self.apply_results(job.result, volume_node, segmentation_node, job=job)

    # ------------------------------------------------------------------ MRML (main thread)
    def apply_results(self, result, volume_node, segmentation_node,
                      job: Optional[SegmentationJob] = None) -> list[SegmentOutcome]:
        """One segment per prompt: an existing segment with the same prompt tag is replaced (and kept for undo),
        every other segment is left untouched. With the ``job`` that made ``result``, each segment keeps its
        engine state (for refinement) and its per-slice quality table."""
        import slicer

        from TextPromptSegLib.prompts import describe, match_prompt

        if segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        segmentation = segmentation_node.GetSegmentation()
        saved: dict[str, Any] = {}
        outcomes = []
        for seg in result.segments:
            segment_id = segment_id_for_prompt(segmentation_node, seg.prompt)
            if segment_id:
                saved[segment_id] = segment_labelmap_copy(segmentation_node, segment_id)
            else:
                segment_id = segmentation.AddEmptySegment("", seg.name, list(seg.color))
                saved[segment_id] = None
            style_segment(segmentation.GetSegment(segment_id), seg)
            image = mask_to_oriented_image(seg.mask, volume_node)
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                image, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
            outcomes.append(SegmentOutcome(seg.prompt, segment_id, seg.name, seg.slices_with_object, seg.volume_ml,
                                           describe(match_prompt(structure_text(seg.prompt))), seg.absent,
                                           seg.message))
        states = {sid: self._states.get((segmentation_node.GetID(), sid)) for sid in saved}
        self.undo_stack.append(_UndoEntry(segmentation_node, saved, states))
        if job is not None and "key" in job.info:
            self._keep_states(job, result, segmentation_node, outcomes)
        return outcomes

    @staticmethod
    def segment_id_for_prompt(segmentation_node, prompt: str) -> Optional[str]:
        """The segment this module made for ``prompt`` (by its prompt tag, never by name), or None."""
        return segment_id_for_prompt(segmentation_node, prompt)

    def undo(self) -> bool:
        """Restore the segments the last run replaced and remove the ones it created."""
        import slicer

        if not self.undo_stack:
            return False
        entry = self.undo_stack.pop()
        node = entry.node
        segmentation = node.GetSegmentation()
        for segment_id, copy in entry.saved.items():
            if copy is None:
                segmentation.RemoveSegment(segment_id)
            else:
                slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                    copy, node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        for segment_id, state in entry.states.items():
            self._set_state(node, segment_id, state, remove_table=entry.saved.get(segment_id) is None)
        return True

    @staticmethod
    def describe_prompts(text: str, model: Optional[str] = None) -> list[str]:
        """The panel's echo, one entry per prompt line: the structure it was understood as and, for a TPP model,
        the 1 to 3 prompts TPP reads (``;`` separates a line's profile / shape / colour prompts); below it, once torch
        is installed, how familiar the model is with it (:func:`prompt_familiarity`)."""
        from TextPromptSegLib.prompts import describe_line
        from TextPromptSegLib.registry import RegistryError, model_kind

        try:
            tpp = model_kind(model or None) == "tpp"
        except (RegistryError, OSError, ValueError, KeyError):
            tpp = False
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        verdicts = prompt_familiarity(lines, model)
        return [f"{line}  \u2192  {describe_line(line, tpp)}" + (f"\n      {v.describe()}" if v is not None else "")
                for line, v in zip(lines, verdicts)]

    @staticmethod
    def slicing_axis(volume_node, axis: Optional[str] = None) -> int:
        """The IJK axis (0 = i, 1 = j, 2 = k) that slices are taken along: ``axis`` ("axial", "coronal",
        "sagittal") resolved through the direction matrix, or the acquisition axis. Its numpy (z, y, x) axis is
        ``2 - slicing_axis``."""
        from TextPromptSegLib.engine.geometry import SliceGeometry

        spacing, _, direction = geometry_from_node(volume_node)
        return SliceGeometry.for_volume(direction, spacing, axis).slice_axis

    @classmethod
    def slice_index_from_ras(cls, volume_node, ras: Sequence[float], axis: Optional[str] = None) -> int:
        """Index along the slicing axis of the voxel containing the RAS point (for "use current slice")."""
        import vtk

        ras_to_ijk = vtk.vtkMatrix4x4()
        volume_node.GetRASToIJKMatrix(ras_to_ijk)
        ijk = vtk_matrix_to_numpy(ras_to_ijk) @ np.array([*ras[:3], 1.0])
        slice_axis = cls.slicing_axis(volume_node, axis)
        index = int(round(ijk[slice_axis]))
        return min(max(index, 0), volume_node.GetImageData().GetDimensions()[slice_axis] - 1)


