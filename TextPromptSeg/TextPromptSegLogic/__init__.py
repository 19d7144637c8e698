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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

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


def volume_from_node(volume_node, modality: Optional[str] = None):
    """A library ``Volume`` from a vtkMRMLScalarVolumeNode (voxels (z, y, x) and IJK->LPS geometry)."""
    from vtkmodules.util import numpy_support

    from TextPromptSegLib.io.volumes import Volume, guess_modality

    image = volume_node.GetImageData() if volume_node is not None else None
    if image is None or image.GetPointData().GetScalars() is None:
        raise ValueError("the input volume has no image data")
    dims = image.GetDimensions()
    components = image.GetNumberOfScalarComponents()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    array = array.reshape(dims[::-1] + ((components,) if components > 1 else ()))
    array = array.copy()  # the worker must not read a buffer the main thread may modify
    spacing, origin, direction = geometry_from_node(volume_node)
    return Volume(array, spacing, origin, direction, modality or guess_modality(array))


def mask_to_oriented_image(mask: np.ndarray, volume_node):
    """(z, y, x) bool mask on the volume's grid -> vtkOrientedImageData with the volume's IJK->RAS."""
    import slicer
    import vtk
    from vtkmodules.util import numpy_support

    image = slicer.vtkOrientedImageData()
    nz, ny, nx = mask.shape
    image.SetDimensions(nx, ny, nz)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(mask, dtype=np.uint8).ravel(), deep=True,
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


def segment_mask(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """(z, y, x) bool mask of one segment resampled on ``volume_node``'s voxel grid (the Segmentations logic's
    export, so shared layers, cropped extents and other geometries are handled as Slicer handles them)."""
    import slicer
    import vtk
    from vtkmodules.util import numpy_support

    scene = volume_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, volume_node):
            raise ValueError(f"segment {segment_id!r} could not be exported on the volume's grid")
        image = labelmap.GetImageData()
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        return values.reshape(image.GetDimensions()[::-1]) > 0
    finally:
        scene.RemoveNode(labelmap)


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


@dataclass
class SegmentationJob:
    """A run on the worker thread. ``poll()`` (main thread) returns progress events and, once, the result."""

    cancel: Any
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: Optional[BaseException] = None

    def poll(self) -> list[Any]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out


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
        self.undo_stack: list[tuple[Any, dict[str, Any]]] = []  # (segmentation node, {segment id: copy or None})

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

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    # ------------------------------------------------------------------ running
    def start(self, volume_node, prompts: Sequence[str], model: Optional[str] = None, device: str = "auto",
              start_slice: Optional[int] = None, axis: Optional[str] = None, window=None,
              direction: str = "both", max_empty_run: Optional[int] = None,
              slice_range: Optional[tuple[int, int]] = None) -> SegmentationJob:
        """Validate on the calling (main) thread, copy the voxels, and run the model on the worker thread.

        start_slice and slice_range (first, last; inclusive) are indices along the slicing axis (``axis``, or the
        acquisition axis), as returned by :meth:`slice_index_from_ras`."""
        from TextPromptSegLib.engine.pipeline import SegmentRequest, segment_volume
        from TextPromptSegLib.engine.progress import Cancelled, CancelToken

        prompts = [p.strip() for p in prompts if p and p.strip()]
        if not prompts:
            raise ValueError("Type at least one prompt (one line per structure).")
        if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError("Select a scalar volume as input.")
        volume = volume_from_node(volume_node)
        entries = [_library_entry(p) for p in prompts]
        requests = [SegmentRequest(p, name=e.name if e else _structure_text(p), color=e.color if e else None)
                    for p, e in zip(prompts, entries)]
        job = SegmentationJob(cancel=CancelToken())

        def run() -> None:
            try:
                from TextPromptSegLib.engine.device import pick_device

                dev = str(pick_device(None if device in (None, "", "auto") else device))
                job.result = segment_volume(volume, requests, self._model(model, dev, job.events.put), device=dev,
                                            axis=axis, start_slice=start_slice, window=window, direction=direction,
                                            max_empty_run=max_empty_run, slice_range=slice_range,
                                            estimate=dev == "cpu", progress=job.events.put, cancel=job.cancel)
            except Cancelled as exc:
                job.error = exc
            except Exception as exc:  # reported to the GUI, which shows it; the worker keeps running
                log.exception("segmentation failed")
                job.error = exc
            finally:
                job.done.set()

        self._worker_thread().submit(run)
        return job

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
        if not job.done.wait(timeout):
            job.cancel.cancel()
            job.done.wait()
            raise TimeoutError("segmentation did not finish in time")
        return self.finish(job, volume_node, segmentation_node)

    def finish(self, job: SegmentationJob, volume_node, segmentation_node) -> list[SegmentOutcome]:
        """Main thread: apply a finished job to MRML, or raise its error (the node is then unchanged)."""
        if job.error is not None:
            raise job.error
        return self.apply_results(job.result, volume_node, segmentation_node)

    # ------------------------------------------------------------------ MRML (main thread)
    def apply_results(self, result, volume_node, segmentation_node) -> list[SegmentOutcome]:
        """One segment per prompt: an existing segment with the same prompt tag is replaced (and kept for undo),
        every other segment is left untouched."""
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
                                           describe(match)))
        self.undo_stack.append((segmentation_node, saved))
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
        node, saved = self.undo_stack.pop()
        segmentation = node.GetSegmentation()
        for segment_id, copy in saved.items():
            if copy is None:
                segmentation.RemoveSegment(segment_id)
            else:
                slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                    copy, node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        return True

    @staticmethod
    def describe_prompts(text: str, model: Optional[str] = None) -> list[str]:
        """The panel's echo, one line per prompt line: the structure it was understood as and, for a TPP model,
        the 1 to 3 prompts TPP reads (``;`` separates a line's profile / shape / colour prompts)."""
        from TextPromptSegLib.prompts import describe_line
        from TextPromptSegLib.registry import RegistryError, model_kind

        try:
            tpp = model_kind(model or None) == "tpp"
        except (RegistryError, OSError, ValueError, KeyError):
            tpp = False
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return [f"{line}  \u2192  {describe_line(line, tpp)}" for line in lines]

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


def _structure_text(prompt: str) -> str:
    """The text of a prompt line that names the structure (before any ``;`` of TPP's extra prompts)."""
    from TextPromptSegLib.prompts import structure_text

    return structure_text(prompt)


def _library_entry(prompt: str):
    """The prompt-library entry a prompt line refers to (name, colour, terminology), or None for free text."""
    from TextPromptSegLib.prompts import match_prompt

    return match_prompt(_structure_text(prompt)).entry
