"""The MRML side of TextPromptSeg: volume node -> library Volume, results -> segments, the worker thread.

No Qt is imported here, so the same code runs in Slicer, in batch scripts and in pytest on slicer-core. The
module file (TextPromptSeg.py) keeps only the GUI and delegates every action to :class:`TextPromptSegLogic`.

Threads: model work runs on ONE persistent worker thread (GPU kernel caches are per thread); MRML is touched only
by the thread that calls :meth:`TextPromptSegLogic.apply_results` (the main thread in Slicer, which polls
:meth:`SegmentationJob.poll` from a timer so the GUI stays responsive).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .interactive import SliceQuality, VisualPrompts  # noqa: F401  (no Qt, no torch)

log = logging.getLogger(__name__)

PROMPT_TAG = "TextPromptSeg.Prompt"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _vtk_matrix_to_numpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def geometry_from_node(volume_node) -> tuple[tuple, tuple, np.ndarray]:
    """(spacing (x, y, z), origin, direction 3x3) in LPS from a volume node's IJK->RAS matrix."""
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    lps = LPS_FROM_RAS @ _vtk_matrix_to_numpy(ijk_to_ras)
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


def segment_tag(segment, tag: str) -> str:
    """A segment's tag value ('' when absent)."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(tag, value) else ""


def segment_prompt(segment) -> str:
    """The text prompt a segment was made from ('' for segments TextPromptSeg did not make)."""
    return segment_tag(segment, PROMPT_TAG)


@dataclass
class SegmentOutcome:
    """What happened to one prompt: the segment it landed in and a short summary for the panel."""

    prompt: str
    segment_id: str
    name: str
    slices_with_object: int
    volume_ml: float
    matched: str
    absent: bool = False  # the model found the structure absent: the segment is empty and ``message`` says why
    message: str = ""


@dataclass
class SegmentationJob:
    """A run on the worker thread. ``poll()`` (main thread) returns progress events and, once, the result.

    kind: "segment" (``start``) or "refine" (a corrected slice or clicks); ``info`` holds what ``finish`` needs.
    """

    cancel: Any
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: Optional[BaseException] = None
    kind: str = "segment"
    info: dict[str, Any] = field(default_factory=dict)

    def poll(self) -> list[Any]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out


# ====================================================================== interactive refinement (issue 5) ====
@dataclass
class RefineOutcome:
    """What one refinement did to a segment. Slices are indices along the segment's slicing axis.

    changed_slices: slices whose voxels were rewritten (the corrected or clicked slice first); visited_slices:
    every slice the model ran on; encoded_slices: slices that had to be encoded for it (0 when the session's
    features were reused).
    """

    segment_id: str
    slice_index: int
    changed_slices: list[int]
    visited_slices: list[int]
    encoded_slices: int
    volume_ml: float


@dataclass
class SegmentState:
    """What the Logic keeps per segment to refine it without re-encoding (main thread only).

    key: (volume node ID, its image data's modification time, IJK-to-RAS matrix, model, device, axis, window);
    a segment whose key no longer matches is refined from its current voxels instead. propagation: the engine's
    last PropagationResult; corrections: {slice: (H, W) bool} slices the user drew or clicked on (kept exactly,
    conditioning slices of later refinements); digests: per-slice digests of the masks as last written (a slice
    whose digest changed was edited by the user and is kept too); quality: per-slice score and area.
    """

    key: tuple
    prompt: str
    axis: Optional[str]
    propagation: Any
    corrections: dict[int, np.ndarray]
    digests: list[bytes]
    quality: Any


@dataclass
class _Engine:
    """An engine session for one volume/model/device/axis: encoded slices shared by every prompt and refinement."""

    key: tuple
    propagator: Any
    prepared: Any
    session: Any


@dataclass
class _UndoEntry:
    node: Any
    saved: dict[str, Any]  # segment id -> labelmap copy, or None for a segment the action created
    states: dict[str, Optional[SegmentState]] = field(default_factory=dict)  # Logic state before the action
# ==================================================================== end interactive refinement (issue 5) ===


class _Worker:
    """One persistent thread running submitted callables in order."""

    def __init__(self) -> None:
        self._tasks: queue.Queue[Optional[Callable[[], None]]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="TextPromptSegWorker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            task()

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def stop(self) -> None:
        self._tasks.put(None)


class TextPromptSegLogic:
    """Everything the panel does, usable headless: ``process(...)`` segments prompts into a segmentation node.

    ``model_loader(name, device)`` builds a model (default: the library registry); models are cached per
    (name, device) and only touched on the worker thread.
    """

    def __init__(self, model_loader: Optional[Callable[[Optional[str], str], Any]] = None) -> None:
        self._model_loader = model_loader
        self._models: dict[tuple[Optional[str], str], Any] = {}
        self._worker: Optional[_Worker] = None
        self.undo_stack: list[_UndoEntry] = []
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
              visual: Optional[VisualPrompts] = None) -> SegmentationJob:
        """Validate on the calling (main) thread, copy the voxels, and run the model on the worker thread.

        start_slice and slice_range (first, last; inclusive) are indices along the slicing axis (``axis``, or the
        acquisition axis), as returned by :meth:`slice_index_from_ras`. visual: clicks and boxes (see
        :meth:`collect_visual_prompts`) given to the model with the text; they belong to one structure, so they
        need exactly one prompt.
        """
        from TextPromptSegLib.engine.pipeline import SegmentRequest, segment_volume
        from TextPromptSegLib.engine.progress import CancelToken

        prompts = [p.strip() for p in prompts if p and p.strip()]
        if not prompts:
            raise ValueError("Type at least one prompt (one line per structure).")
        if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError("Select a scalar volume as input.")
        if visual and len(prompts) > 1:
            raise ValueError("Points and boxes belong to one structure: segment one prompt at a time when you "
                             "place them (or clear them).")
        volume = volume_from_node(volume_node)
        entries = [_library_entry(p) for p in prompts]
        requests = [SegmentRequest(p, name=e.name if e else _structure_text(p), color=e.color if e else None)
                    for p, e in zip(prompts, entries)]
        if visual:
            requests[0].point_prompts = dict(visual.point_prompts)
            requests[0].box_prompts = dict(visual.box_prompts)
        key = self._engine_key(volume_node, model, device, axis, window)
        job = SegmentationJob(cancel=CancelToken(), info={"key": key, "axis": axis, "requests": requests})

        def run() -> None:
            from TextPromptSegLib.engine.device import pick_device

            dev = str(pick_device(device))
            engine = self._engine_for(key, volume, model, dev, axis, window, job.events.put)
            job.result = segment_volume(volume, requests, propagator=engine.propagator, session=engine.session,
                                        prepared=engine.prepared, start_slice=start_slice, direction=direction,
                                        max_empty_run=max_empty_run, slice_range=slice_range,
                                        estimate=dev == "cpu", progress=job.events.put, cancel=job.cancel)

        return self.submit(job, run, "segmentation")

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
            segment_id = self.segment_id_for_prompt(segmentation_node, seg.prompt)
            if segment_id:
                saved[segment_id] = segment_labelmap_copy(segmentation_node, segment_id)
            else:
                segment_id = segmentation.AddEmptySegment("", seg.name, list(seg.color))
                saved[segment_id] = None
            segment = segmentation.GetSegment(segment_id)
            segment.SetName(seg.name)
            segment.SetColor(*seg.color)
            segment.SetTag(PROMPT_TAG, seg.prompt)
            match = match_prompt(_structure_text(seg.prompt))
            if match.entry is not None:
                segment.SetTag(segment.GetTerminologyEntryTagName(), match.entry.terminology_tag)
            image = mask_to_oriented_image(seg.mask, volume_node)
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                image, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
            outcomes.append(SegmentOutcome(seg.prompt, segment_id, seg.name, seg.slices_with_object, seg.volume_ml,
                                           describe(match), seg.absent, seg.message))
        states = {sid: self._states.get((segmentation_node.GetID(), sid)) for sid in saved}
        self.undo_stack.append(_UndoEntry(segmentation_node, saved, states))
        if job is not None and "key" in job.info:
            self._keep_states(job, result, segmentation_node, outcomes)
        return outcomes

    @staticmethod
    def segment_id_for_prompt(segmentation_node, prompt: str) -> Optional[str]:
        segmentation = segmentation_node.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            if segment_prompt(segmentation.GetNthSegment(i)) == prompt:
                return segmentation.GetNthSegmentID(i)
        return None

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
        ijk = _vtk_matrix_to_numpy(ras_to_ijk) @ np.array([*ras[:3], 1.0])
        slice_axis = cls.slicing_axis(volume_node, axis)
        index = int(round(ijk[slice_axis]))
        return min(max(index, 0), volume_node.GetImageData().GetDimensions()[slice_axis] - 1)


    # ================================================================== interactive refinement (issue 5) =====
    # ------------------------------------------------------------------ engine sessions (worker thread)
    def _engine_key(self, volume_node, model: Optional[str], device: Optional[str], axis: Optional[str],
                    window) -> tuple:
        """What an encoded session and a segment's engine state depend on (main thread: reads the node)."""
        import vtk

        matrix = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(matrix)
        image = volume_node.GetImageData()
        return (volume_node.GetID(), image.GetMTime() if image is not None else 0,
                tuple(np.round(_vtk_matrix_to_numpy(matrix), 9).ravel()), model or "", device or "auto",
                axis or "auto", repr(window), self.precision)

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
                quality=SliceQuality.from_arrays(seg.slice_scores, seg.slice_areas_mm2, axis))
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
        key = self._engine_key(volume_node, model, device, axis, window)
        state = self._states.get((segmentation_node.GetID(), segment_id))
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
        volume = None if key in self._engines else volume_from_node(volume_node)
        job = SegmentationJob(cancel=CancelToken(), kind="refine", info={
            "key": key, "axis": axis, "segment_id": segment_id, "slice_index": slice_index, "prompt": prompt,
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
                                             frames.reshape(len(frames), -1).sum(1) * pixel_mm2, info["axis"]))
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
    # ================================================================ end interactive refinement (issue 5) =====


def _structure_text(prompt: str) -> str:
    """The text of a prompt line that names the structure (before any ``;`` of TPP's extra prompts)."""
    from TextPromptSegLib.prompts import structure_text

    return structure_text(prompt)


def _library_entry(prompt: str):
    """The prompt-library entry a prompt line refers to (name, colour, terminology), or None for free text."""
    from TextPromptSegLib.prompts import match_prompt

    return match_prompt(_structure_text(prompt)).entry


_CHECKERS: dict[str, Any] = {}  # checkpoint path -> FamiliarityChecker (its text encoder loads once)


def prompt_familiarity(prompts: Sequence[str], model: Optional[str] = None) -> list[Any]:
    """``familiarity.Familiarity`` of each prompt for the registered model name or checkpoint path (default: the
    registry's default), or None for each when it cannot be told without installing anything (torch or the text
    encoder missing, model not on disk). The text encoder is loaded once per checkpoint."""
    import importlib.util

    from TextPromptSegLib.familiarity import assess, familiarity_checker, text_ignored
    from TextPromptSegLib.registry import RegistryError, resolve

    try:
        _, local, _ = resolve(model or None)
        if text_ignored(local):
            return assess(local, prompts)
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
            return [None] * len(prompts)
        key = str(local)
        if key not in _CHECKERS:
            _CHECKERS[key] = familiarity_checker(local)
        return assess(local, prompts, _CHECKERS[key])
    except (RegistryError, OSError, ValueError, RuntimeError) as exc:
        log.debug("familiarity not available: %s", exc)
        return [None] * len(prompts)
