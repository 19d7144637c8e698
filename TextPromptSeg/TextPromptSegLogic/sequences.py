"""2D+t sequences in Slicer: a Sequence of ultrasound / endoscopy frames (or a multi-frame volume), segmented frame
by frame with the engine, the result as a segmentation Sequence browsed with the input, and refinement from a
corrected frame. No Qt.

Inputs (:func:`read_sequence_input`, main thread; the voxels are copied for the worker):

* a vtkMRMLSequenceNode whose items are scalar or vector (RGB) volume nodes of one slice each, as Slicer loads a
  cine / ultrasound / endoscopy recording (``.seq.nrrd``, ``.mkv`` via SlicerIGSIO, a PLUS recording), or the proxy
  volume node a sequence browser shows for it (what the panel's volume selector offers);
* a multi-frame volume node: a scalar or vector volume whose k axis is time.

Outputs (:meth:`SequenceJob.finish`, main thread):

* for a Sequence: a vtkMRMLSequenceNode of vtkMRMLSegmentationNode items, one per input item with the same index
  value, name and unit, each item on its frame's own geometry. It is added to the browser that plays the input
  (a new browser if there is none) with "save changes" on, so the browser's proxy segmentation node shows the
  current frame's segmentation and Segment Editor edits of it are stored in that frame's item, as in Slicer's
  "segmentation sequence" workflow. One segment per prompt, with the same segment ID in every item, named and
  coloured from the prompt library, the prompt in the ``TextPromptSeg.Prompt`` tag and the terminology tag;
* for a multi-frame volume: one segment per prompt in a segmentation node, exactly as for volumes.

Threads: model work runs on the Logic's worker thread; MRML is read and written only in :func:`start_sequence`,
:meth:`SequenceJob.finish`, :meth:`SequenceRun.refine` and :meth:`RefineJob.finish` (main thread). A cancelled
or failed run changes nothing. Each run and each refinement can be undone (:meth:`SequenceRun.undo`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .jobs import SegmentationJob
from .logic import TextPromptSegLogic
from .nodes import mask_to_oriented_image, segment_labelmap_copy, volume_from_node
from .segments import SegmentOutcome, build_requests, style_segment

log = logging.getLogger(__name__)

OUTPUT_SUFFIX = " TextPromptSeg"


@dataclass
class SequenceInput:
    """The frames of a sequence (or multi-frame volume) and where they came from.

    volume: the library sequence (t, y, x[, 3]) (a copy of the voxels). For a Sequence: ``frame_nodes`` are its
    items (one single-slice volume each, in item order), ``index_values`` their index values and ``frame_axis``
    the numpy axis (z=0, y=1, x=2) of an item's voxel array that has size 1 (the frame plane is the other two, in
    order). For a multi-frame volume: ``volume_node`` is the node and k is time.
    """

    volume: Any
    sequence_node: Any = None
    browser_node: Any = None
    frame_nodes: list[Any] = field(default_factory=list)
    index_values: list[str] = field(default_factory=list)
    frame_axis: int = 0
    volume_node: Any = None

    @property
    def is_sequence_node(self) -> bool:
        return self.sequence_node is not None

    def frame_to_item(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) frame mask -> the item's voxel array shape (z, y, x) (size 1 on ``frame_axis``)."""
        return np.expand_dims(np.asarray(mask, bool), self.frame_axis)


def browser_for(scene, node):
    """The first sequence browser that plays ``node``: a Sequence node it synchronises, or a proxy node it shows;
    None when there is none."""
    is_sequence = node.IsA("vtkMRMLSequenceNode")
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
        if browser.IsSynchronizedSequenceNode(node, True) if is_sequence else browser.GetSequenceNode(node):
            return browser
    return None


def read_sequence_input(node, browser_node=None) -> SequenceInput:
    """Copy the frames of a Sequence node, a sequence proxy volume node, or a multi-frame volume node.

    Raises ValueError with what to do when the node cannot be segmented frame by frame.
    """
    from TextPromptSegLib.io.volumes import SequenceIndex, sequence_from_array, validate

    if node is None:
        raise ValueError("Select a sequence (or a multi-frame volume) as input.")
    scene = node.GetScene()
    sequence_node = None
    if node.IsA("vtkMRMLSequenceNode"):
        sequence_node = node
    elif node.IsA("vtkMRMLScalarVolumeNode") and scene is not None:
        browser = browser_node or browser_for(scene, node)
        if browser is not None and browser.GetSequenceNode(node) is not None:
            sequence_node, browser_node = browser.GetSequenceNode(node), browser
    if sequence_node is None:
        if not node.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError("Select a sequence of volumes or a multi-frame volume as input.")
        volume = volume_from_node(node)
        modality = "endoscopy" if volume.array.ndim == 4 else "US"
        volume.modality = modality
        volume.sequence = SequenceIndex.numbered(volume.array.shape[0])
        return SequenceInput(volume=validate(volume), volume_node=node)

    count = sequence_node.GetNumberOfDataNodes()
    if count < 2:
        raise ValueError(f"The sequence '{sequence_node.GetName()}' has {count} item(s): at least 2 frames are needed.")
    frame_nodes = [sequence_node.GetNthDataNode(i) for i in range(count)]
    if not all(n is not None and n.IsA("vtkMRMLScalarVolumeNode") for n in frame_nodes):
        raise ValueError(f"The sequence '{sequence_node.GetName()}' holds "
                         f"{sequence_node.GetDataNodeClassName() or 'no'} items, not image frames (volumes).")
    arrays, axis, first = [], None, None
    for i, frame in enumerate(frame_nodes):
        copied = volume_from_node(frame, modality="US")
        first = copied if first is None else first
        array = copied.array  # (z, y, x[, c]) copy
        singleton = [a for a in range(3) if array.shape[a] == 1]
        if not singleton:
            raise ValueError(f"Item {i} of '{sequence_node.GetName()}' is a 3D volume ({array.shape[:3]}); only "
                             "sequences of 2D frames are segmented frame by frame (segment one time point as a "
                             "volume instead).")
        axis = singleton[0] if axis is None else axis
        arrays.append(np.squeeze(array, axis=axis))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"The frames of '{sequence_node.GetName()}' differ in size: {sorted(shapes)}.")
    rows, cols = [a for a in range(3) if a != axis]
    spacing = (first.spacing[2 - cols], first.spacing[2 - rows])  # (x = column, y = row) of the frame
    values = [sequence_node.GetNthIndexValue(i) for i in range(count)]
    index = SequenceIndex(tuple(values), sequence_node.GetIndexName() or "frame", sequence_node.GetIndexUnit())
    geometry = {"origin": first.origin, "direction": first.direction} if axis == 0 else {}
    volume = validate(sequence_from_array(np.stack(arrays), spacing, index=index, **geometry))
    if browser_node is None and scene is not None:
        browser_node = browser_for(scene, sequence_node)
    return SequenceInput(volume=volume, sequence_node=sequence_node, browser_node=browser_node,
                         frame_nodes=frame_nodes, index_values=values, frame_axis=axis)


def _sequences_logic(given=None):
    """The Sequences module logic: ``given``, else Slicer's (None outside Slicer, e.g. on slicer-core)."""
    if given is not None:
        return given
    try:
        import slicer

        return slicer.modules.sequences.logic()
    except (AttributeError, ImportError):
        return None


def item_mask(item, segment_id: str, frame_node) -> np.ndarray:
    """A segment of a segmentation node as a bool array on ``frame_node``'s voxel grid (z, y, x); all False when
    the segment is missing or empty."""
    from .interactive import segment_mask_on_volume, volume_shape_zyx

    if item.GetSegmentation().GetSegment(segment_id) is None:
        return np.zeros(volume_shape_zyx(frame_node), bool)
    return segment_mask_on_volume(item, segment_id, frame_node)


@dataclass
class SequenceJob(SegmentationJob):
    """A sequence run on the worker thread; ``poll()`` as for volumes, then :meth:`finish` on the main thread."""

    logic: Any = None
    source: Optional[SequenceInput] = None
    output_node: Any = None
    sequences_logic: Any = None
    interactive: Any = None  # the engine's InteractiveSegmentation (encoded frames), set by the worker

    def finish(self) -> SequenceRun:
        """Main thread: write the result into MRML and return the run (for refinement and undo), or raise the
        job's error (``Cancelled`` included) leaving every node as it was."""
        if self.error is not None:
            raise self.error
        run = SequenceRun(self.logic, self.source, self.interactive, self.sequences_logic)
        run.apply(self.result.segments, self.output_node)
        return run


@dataclass
class RefineJob(SegmentationJob):
    """A refinement on the worker thread; :meth:`finish` writes the changed frames (main thread)."""

    run: Any = None
    prompt: str = ""

    def finish(self):
        """Main thread: apply the refinement (the ``Refinement``: frames visited and changed) or raise its error."""
        if self.error is not None:
            raise self.error
        self.run._apply_refinement(self.prompt, self.result)
        return self.result


class SequenceRun:
    """A segmented sequence in MRML with its encoded frames: refine it from corrected frames, undo steps."""

    def __init__(self, logic, source: SequenceInput, interactive, sequences_logic=None) -> None:
        self.logic = logic
        self.source = source
        self.interactive = interactive
        self.sequences_logic = sequences_logic
        self.segments: dict[str, Any] = {}  # prompt -> current SegmentResult (frame masks in segment.mask)
        self.segment_ids: dict[str, str] = {}  # prompt -> segment ID (the same in every item)
        self.output_node = None  # segmentation Sequence (sequence input) or segmentation node (multi-frame volume)
        self.browser_node = source.browser_node
        self.outcomes: list[SegmentOutcome] = []
        self._undo: list[tuple[str, Any]] = []  # ("items", [(item, {id: copy or None})]) or ("logic", None)

    # ------------------------------------------------------------------ writing (main thread)
    def apply(self, segments: Sequence[Any], output_node=None) -> list[SegmentOutcome]:
        """Write whole segments (one per prompt) into the output, replacing same-prompt segments only."""
        from TextPromptSegLib.prompts import describe, match_prompt

        for seg in segments:
            self.segments[seg.prompt] = seg
        if self.source.is_sequence_node:
            self._ensure_output_sequence(output_node)
            self._write_frames({seg.prompt: range(len(self.source.frame_nodes)) for seg in segments})
        else:
            if output_node is None:
                scene = self.source.volume_node.GetScene()
                output_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                      self.source.volume_node.GetName() + OUTPUT_SUFFIX)
                output_node.CreateDefaultDisplayNodes()
            self.output_node = output_node
            from TextPromptSegLib.engine.pipeline import VolumeSegmentation

            result = VolumeSegmentation(self.source.volume, self.interactive.prepared.geometry, list(segments))
            outcomes = self.logic.apply_results(result, self.source.volume_node, output_node)
            self.segment_ids.update({o.prompt: o.segment_id for o in outcomes})
            self._undo.append(("logic", None))
            self.outcomes = outcomes
            return outcomes
        self.outcomes = [SegmentOutcome(seg.prompt, self.segment_ids[seg.prompt], seg.name, seg.slices_with_object,
                                        seg.volume_ml, describe(match_prompt(seg.prompt))) for seg in segments]
        return self.outcomes

    def _ensure_output_sequence(self, output_node) -> None:
        source = self.source
        scene = source.sequence_node.GetScene()
        if output_node is None and self.output_node is None:
            output_node = self._previous_output(scene)  # a re-run updates the same segmentation sequence
        if output_node is None and self.output_node is None:
            output_node = scene.AddNewNodeByClass("vtkMRMLSequenceNode",
                                                  source.sequence_node.GetName() + OUTPUT_SUFFIX)
        if output_node is not None and output_node is not self.output_node:
            if not output_node.IsA("vtkMRMLSequenceNode"):
                raise ValueError("The output of a sequence must be a sequence node (of segmentations).")
            output_node.SetIndexName(source.sequence_node.GetIndexName())
            output_node.SetIndexUnit(source.sequence_node.GetIndexUnit())
            output_node.SetIndexType(source.sequence_node.GetIndexType())
            self.output_node = output_node
        browser = self.browser_node
        if browser is None:
            browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", source.sequence_node.GetName())
            browser.SetAndObserveMasterSequenceNodeID(source.sequence_node.GetID())
            self.browser_node = browser

    def _previous_output(self, scene):
        """The segmentation sequence an earlier run made for this input in its browser, if any."""
        name = self.source.sequence_node.GetName() + OUTPUT_SUFFIX
        if self.browser_node is None:
            return None
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLSequenceNode")
            if (node.GetName() == name and node.GetDataNodeClassName() == "vtkMRMLSegmentationNode"
                    and self.browser_node.IsSynchronizedSequenceNode(node, True)):
                return node
        return None

    def _item(self, frame: int, create: bool):
        import slicer

        value = self.source.index_values[frame]
        item = self.output_node.GetDataNodeAtValue(value, True)
        if item is None and create:
            blank = slicer.vtkMRMLSegmentationNode()
            item = self.output_node.SetDataNodeAtValue(blank, value)
        if item is not None and item.GetSegmentation().GetNumberOfSegments() == 0:
            item.SetReferenceImageGeometryParameterFromVolumeNode(self.source.frame_nodes[frame])
        return item

    def _segment_id(self, seg) -> str:
        if seg.prompt in self.segment_ids:
            return self.segment_ids[seg.prompt]
        taken: set[str] = set()
        for frame in range(len(self.source.frame_nodes)):
            item = self._item(frame, create=False)
            if item is None:
                continue
            found = TextPromptSegLogic.segment_id_for_prompt(item, seg.prompt)
            if found:  # a re-run reuses the segment of the same prompt
                self.segment_ids[seg.prompt] = found
                return found
            taken.update(item.GetSegmentation().GetSegmentIDs())
        n = 1
        while f"TextPromptSeg_{n}" in taken or f"TextPromptSeg_{n}" in self.segment_ids.values():
            n += 1
        self.segment_ids[seg.prompt] = f"TextPromptSeg_{n}"
        return self.segment_ids[seg.prompt]

    def _write_frames(self, frames_by_prompt: dict[str, Sequence[int]]) -> None:
        """Write the given frames of the given prompts' segments into the items, saving what they replace."""
        import slicer

        logic = slicer.vtkSlicerSegmentationsModuleLogic
        saved: list[tuple[Any, dict[str, Any]]] = []
        by_item: dict[int, dict[str, Any]] = {}
        for prompt, frames in frames_by_prompt.items():
            seg = self.segments[prompt]
            segment_id = self._segment_id(seg)
            masks = self.interactive.frame_masks(seg)
            for frame in frames:
                item = self._item(frame, create=True)
                key = id(item)
                if key not in by_item:
                    by_item[key] = {}
                    saved.append((item, by_item[key]))
                segmentation = item.GetSegmentation()
                if segmentation.GetSegment(segment_id) is None:
                    by_item[key].setdefault(segment_id, None)
                    segmentation.AddEmptySegment(segment_id, seg.name, list(seg.color))
                else:
                    by_item[key].setdefault(segment_id, segment_labelmap_copy(item, segment_id))
                style_segment(segmentation.GetSegment(segment_id), seg)
                image = mask_to_oriented_image(self.source.frame_to_item(masks[frame]), self.source.frame_nodes[frame])
                logic.SetBinaryLabelmapToSegment(image, item, segment_id, logic.MODE_REPLACE)
        self._undo.append(("items", saved))
        self._show()

    def _show(self) -> None:
        """Synchronise the output with the input's browser (proxy segmentation node, save changes on)."""
        browser = self.browser_node
        if browser is None or self.output_node is None:
            return
        if not browser.IsSynchronizedSequenceNode(self.output_node, True):
            browser.AddSynchronizedSequenceNode(self.output_node)
            browser.SetSaveChanges(self.output_node, True)
        sequences = _sequences_logic(self.sequences_logic)
        if sequences is not None:
            sequences.UpdateProxyNodesFromSequences(browser)
        elif browser.GetProxyNode(self.output_node) is None:  # outside Slicer: make the proxy ourselves
            scene = self.output_node.GetScene()
            proxy = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", self.output_node.GetName())
            proxy.CreateDefaultDisplayNodes()
            browser.AddProxyNode(proxy, self.output_node, False)
        proxy = browser.GetProxyNode(self.output_node)
        if proxy is not None and sequences is None:
            item = self.output_node.GetDataNodeAtValue(self._selected_value(), True)
            if item is not None:
                proxy.CopyContent(item, False)

    def _selected_value(self) -> str:
        number = self.browser_node.GetSelectedItemNumber() if self.browser_node is not None else 0
        return self.source.index_values[max(0, number)]

    @property
    def proxy_node(self):
        """The segmentation node that shows the current frame (sequence input), or the output node (volume)."""
        if not self.source.is_sequence_node:
            return self.output_node
        return self.browser_node.GetProxyNode(self.output_node) if self.browser_node is not None else None

    def frame_mask(self, frame: int, prompt: str) -> np.ndarray:
        """The segment of ``prompt`` on ``frame`` as it is now in MRML (user edits included): (H, W) bool."""
        segment_id = self.segment_ids[prompt]
        if self.source.is_sequence_node:
            item = self._item(frame, create=False)
            if item is None:
                raise ValueError(f"frame {frame} has no segmentation item")
            full = item_mask(item, segment_id, self.source.frame_nodes[frame])
            return np.squeeze(full, axis=self.source.frame_axis)
        full = item_mask(self.output_node, segment_id, self.source.volume_node)  # (t, y, x)
        return self.interactive.prepared.geometry.to_frames(full)[frame].copy()

    # ------------------------------------------------------------------ refinement
    def refine(self, frame: Optional[int] = None, prompt: Optional[str] = None, unchanged_run: int = 3) -> RefineJob:
        """Main thread: take the (corrected) segment of ``frame`` (default: the browser's current frame) and
        re-propagate it on the worker thread; :meth:`RefineJob.finish` writes the frames that changed."""
        from TextPromptSegLib.engine.progress import CancelToken

        if prompt is None:
            if len(self.segments) != 1:
                raise ValueError("Name the prompt to refine: this run has several segments.")
            prompt = next(iter(self.segments))
        if prompt not in self.segments:
            raise ValueError(f"'{prompt}' was not segmented in this run.")
        if frame is None:
            if self.browser_node is None:
                raise ValueError("Give the frame to refine from.")
            frame = max(0, self.browser_node.GetSelectedItemNumber())
        sequences = _sequences_logic(self.sequences_logic)
        proxy = self.proxy_node
        if sequences is not None and self.source.is_sequence_node and proxy is not None:
            sequences.UpdateSequencesFromProxyNodes(self.browser_node, proxy)  # the user's edit into its item
        mask = self.frame_mask(frame, prompt)
        segment = self.segments[prompt]
        job = RefineJob(cancel=CancelToken(), run=self, prompt=prompt)

        def work() -> None:
            job.result = self.interactive.refine(segment, frame, mask, unchanged_run=unchanged_run,
                                                 progress=job.events.put, cancel=job.cancel)

        return self.logic.submit(job, work, "sequence refinement")

    def _apply_refinement(self, prompt: str, refinement) -> None:
        self.segments[prompt] = refinement.segment
        if self.source.is_sequence_node:
            self._write_frames({prompt: refinement.changed})
        else:
            from TextPromptSegLib.engine.pipeline import VolumeSegmentation

            result = VolumeSegmentation(self.source.volume, self.interactive.prepared.geometry, [refinement.segment])
            self.logic.apply_results(result, self.source.volume_node, self.output_node)
            self._undo.append(("logic", None))

    # ------------------------------------------------------------------ undo
    def undo(self) -> bool:
        """Restore the frames the last run or refinement of this sequence replaced (segments it created are
        removed). Returns False when there is nothing to undo."""
        import slicer

        if not self._undo:
            return False
        kind, saved = self._undo.pop()
        if kind == "logic":
            return self.logic.undo()
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        for item, copies in saved:
            for segment_id, copy in copies.items():
                if copy is None:
                    item.GetSegmentation().RemoveSegment(segment_id)
                else:
                    logic.SetBinaryLabelmapToSegment(copy, item, segment_id, logic.MODE_REPLACE)
        self._show()
        return True


def start_sequence(logic, node, prompts: Sequence[str], model: Optional[str] = None, device: str = "auto",
                   start_frame: Optional[int] = None, window=None, output_node=None, browser_node=None,
                   sequences_logic=None) -> SequenceJob:
    """Validate and copy the frames on the calling (main) thread, then segment on the Logic's worker thread."""
    from TextPromptSegLib.engine.progress import CancelToken

    requests = build_requests(prompts)
    source = read_sequence_input(node, browser_node)
    job = SequenceJob(cancel=CancelToken(), logic=logic, source=source, output_node=output_node,
                      sequences_logic=sequences_logic)

    def work() -> None:
        from TextPromptSegLib.engine.device import pick_device
        from TextPromptSegLib.engine.sequence import InteractiveSegmentation
        from TextPromptSegLib.engine.tpp_engine import make_propagator

        dev = str(pick_device(device))
        propagator = make_propagator(logic._model(model, dev), dev, logic.encode_batch_size, precision=logic.precision)
        interactive = InteractiveSegmentation(source.volume, propagator=propagator, window=window)
        job.result = interactive.segment(requests, start_frame, progress=job.events.put, cancel=job.cancel)
        job.interactive = interactive

    return logic.submit(job, work, "sequence segmentation")
