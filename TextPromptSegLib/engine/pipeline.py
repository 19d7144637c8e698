"""segment_volume: the one code path used by the CLI, the Slicer Logic, evaluation and the benchmarks.

volume -> normalised intensities -> frames along the slicing axis -> model-space frames (lazily, per batch)
-> Propagator session (encoded once for all prompts) -> per-prompt low-resolution logits -> frame grid ->
boolean masks (z, y, x) on the input grid.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..io.volumes import Volume, validate
from .geometry import SliceGeometry
from .preprocess import FrameTransform, InputSpec, Window, model_inputs, normalize_intensity
from .progress import CancelToken, ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)

PALETTE = ((0.90, 0.35, 0.25), (0.30, 0.70, 0.90), (0.95, 0.80, 0.25), (0.45, 0.80, 0.40), (0.75, 0.45, 0.85),
           (0.95, 0.55, 0.70), (0.40, 0.55, 0.95), (0.85, 0.60, 0.35))


@dataclass
class SegmentRequest:
    """One prompt = one segment. Visual prompts are in frame space of the slicing axis (slice index n; rows and
    columns as :meth:`SliceGeometry.to_frames` lays them out, pixel centres at integers):
    ``mask_prompts`` {n: bool (H, W)}, ``point_prompts`` {n: ((row, col), ...), labels (1 positive / 0 negative,
    ...)} and ``box_prompts`` {n: (row0, col0, row1, col1)} (opposite corners, inclusive pixel positions). A box
    and points on the same slice go to the model together (SAM-2: box corners with labels 2 and 3, then clicks)."""

    prompt: str
    name: Optional[str] = None
    color: Optional[tuple[float, float, float]] = None
    mask_prompts: Mapping[int, np.ndarray] = field(default_factory=dict)
    point_prompts: Mapping[int, tuple[Sequence[Sequence[float]], Sequence[int]]] = field(default_factory=dict)
    box_prompts: Mapping[int, Sequence[float]] = field(default_factory=dict)


def model_point_prompts(transform: FrameTransform,
                        point_prompts: Mapping[int, tuple[Sequence[Sequence[float]], Sequence[int]]],
                        box_prompts: Optional[Mapping[int, Sequence[float]]] = None) -> dict[int, dict[str, Any]]:
    """Frame-space clicks and boxes -> the engine's {n: {"coords": (P, 2) model (x, y), "labels": (P,)}}.

    A box becomes its top-left and bottom-right corners with labels 2 and 3 (SAM-2's box encoding), placed
    before the clicks of the same slice.
    """
    out: dict[int, dict[str, Any]] = {}
    for n in sorted({*point_prompts, *(box_prompts or {})}):
        rows_cols: list[Sequence[float]] = []
        labels: list[int] = []
        if box_prompts and n in box_prompts:
            r0, c0, r1, c1 = (float(v) for v in box_prompts[n])
            rows_cols += [(min(r0, r1), min(c0, c1)), (max(r0, r1), max(c0, c1))]
            labels += [2, 3]
        if n in point_prompts:
            points, point_labels = point_prompts[n]
            if len(points) != len(point_labels):
                raise ValueError(f"slice {n}: {len(points)} points but {len(point_labels)} labels")
            bad = [v for v in point_labels if int(v) not in (0, 1)]
            if bad:
                raise ValueError(f"slice {n}: point labels must be 1 (positive) or 0 (negative), not {bad}")
            rows_cols += [tuple(map(float, pt)) for pt in points]
            labels += [int(v) for v in point_labels]
        if rows_cols:
            coords = transform.frame_points_to_model(np.asarray(rows_cols, float).reshape(-1, 2))
            out[n] = {"coords": coords, "labels": labels}
    return out


@dataclass
class SegmentResult:
    name: str
    prompt: str
    color: tuple[float, float, float]
    mask: np.ndarray  # (z, y, x) bool on the input grid
    slice_scores: np.ndarray  # (N,) object-score logits along the slicing axis (-inf: not reached)
    slice_areas_mm2: np.ndarray  # (N,)
    volume_ml: float
    start_slice: int
    propagation: Any = None  # the engine's PropagationResult (for refinement)
    absent: bool = False  # the presence rule judged the structure absent: ``mask`` is empty, ``message`` says why
    message: str = ""

    @property
    def slices_with_object(self) -> int:
        return int(np.count_nonzero(self.slice_areas_mm2))


@dataclass
class VolumeSegmentation:
    volume: Volume
    geometry: SliceGeometry
    segments: list[SegmentResult]

    def labelmap(self) -> np.ndarray:
        """(z, y, x) uint16 with label i+1 for segment i; where segments overlap the earlier one wins."""
        out = np.zeros(self.volume.shape, np.uint16)
        for value, seg in reversed(list(enumerate(self.segments, start=1))):
            out[seg.mask] = value
        return out


class PreparedVolume:
    """A volume made ready for a model: normalised frames along the slicing axis and the resize transform.

    Intensities are normalised as ``inputs`` (the model's checkpoint, :meth:`for_model`) states for the volume's
    modality (``volume.modality``, decided by ``preprocess.decide_modality`` when it was read), unless ``window``
    overrides it. A 2D+t sequence (``volume.sequence``) is always cut into its time points (``axis`` must be None)."""

    def __init__(self, volume: Volume, image_size: int, axis: Optional[str] = None, window: Window = None,
                 min_slices: int = 2, inputs: Optional[InputSpec] = None) -> None:
        self.volume = validate(volume, min_slices)
        if volume.is_sequence:
            if axis is not None:
                raise ValueError(f"a 2D+t sequence is segmented frame by frame; a slicing axis ({axis!r}) does "
                                 "not apply")
            self.geometry = SliceGeometry.for_sequence(volume.spacing)
        else:
            self.geometry = SliceGeometry.for_volume(volume.direction, volume.spacing, axis)
        normalised = normalize_intensity(volume.array, volume.modality, window, inputs)
        self.frames = self.geometry.to_frames(normalised)  # (N, H, W[, 3]) view
        n, h, w = self.frames.shape[:3]
        self.transform = FrameTransform(h, w, image_size, self.geometry.row_spacing, self.geometry.col_spacing)

    @classmethod
    def for_model(cls, volume: Volume, model, axis: Optional[str] = None, window: Window = None) -> PreparedVolume:
        """``volume`` prepared for ``model``: its input size and the normalisation its checkpoint states."""
        return cls(volume, model.image_size, axis, window, inputs=model_inputs(model))

    def __len__(self) -> int:
        return self.frames.shape[0]

    def frame_source(self):
        from .propagation import FrameSource

        return FrameSource(lambda idx: self.transform.frames_to_model(self.frames[list(idx)]), len(self))

    def to_volume_mask(self, frame_masks: np.ndarray) -> np.ndarray:
        return self.geometry.from_frames(frame_masks)

    def logits_to_frames(self, logits, out: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        """Write the frame-space masks of low-resolution ``logits`` (N, S/4, S/4) into ``out`` (N, H, W) bool on
        the given frames, 16 at a time (memory bounded by the chunk, not the volume); returns ``out``."""
        indices = list(indices)
        for start in range(0, len(indices), 16):
            chunk = indices[start : start + 16]
            out[chunk] = self.transform.logits_to_frame(logits[chunk])
        return out

    def segment_result(self, frame_masks: np.ndarray, propagation, *, name: str, prompt: str,
                       color: tuple[float, float, float], start_slice: int) -> SegmentResult:
        """A SegmentResult of frame-space masks (N, H, W) bool: the mask on the volume grid, each slice's area and
        the volume, with ``propagation``'s per-slice scores."""
        mask = self.to_volume_mask(frame_masks)
        areas = frame_masks.reshape(len(self), -1).sum(1) * self.geometry.row_spacing * self.geometry.col_spacing
        voxel_ml = float(np.prod(self.volume.spacing)) / 1000.0
        return SegmentResult(name=name, prompt=prompt, color=color, mask=mask, slice_scores=propagation.scores,
                             slice_areas_mm2=areas, volume_ml=float(mask.sum()) * voxel_ml, start_slice=start_slice,
                             propagation=propagation)


def segment_volume(volume: Volume, requests: Sequence[SegmentRequest], model=None, *, propagator=None,
                   device: Optional[str] = None, axis: Optional[str] = None, start_slice: Optional[int] = None,
                   window: Window = None, encode_batch_size: Optional[int] = None, max_empty_run: Optional[int] = None,
                   direction: str = "both", slice_range: Optional[tuple[int, int]] = None, estimate: bool = False,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                   session=None, prepared: Optional[PreparedVolume] = None,
                   presence: Any = "checkpoint") -> VolumeSegmentation:
    """Segment ``volume`` once per request. Give a built ``model`` or a ``propagator``.

    start_slice: index along the slicing axis (the voxel index on that axis); None picks it per prompt from a
    coarse pass. direction: "both", "forward" (increasing slice index) or "backward" from the start slice; slices
    not reached stay empty. slice_range: (first, last) slice indices, inclusive, along the slicing axis; slices
    outside stay empty (default: the whole volume). estimate: first measure how long the run will take
    (``Session.estimate_seconds``) and report it as a ``ProgressEvent`` of phase "estimate" whose ``eta_seconds`` is
    the estimate (the CLI and the Slicer panel show it before a CPU run). presence: a
    ``familiarity.PresenceRule``; a text-only request whose slice scores it judges absent gets an empty mask,
    ``absent=True`` and a ``message`` (its scores are kept); "checkpoint" (default) takes the model's calibrated
    rule, None never judges. Requests with visual prompts, and runs from a given ``start_slice``, are never
    emptied. Raises ValueError for empty prompts,
    IndexError for a start slice or range outside the volume, ``Cancelled`` when cancelled (nothing is returned).
    """
    from .tpp_engine import make_propagator

    if not requests:
        raise ValueError("at least one prompt is needed")
    if direction not in ("both", "forward", "backward"):
        raise ValueError(f"direction must be 'both', 'forward' or 'backward', not {direction!r}")
    for request in requests:
        visual = bool(request.mask_prompts or request.point_prompts or request.box_prompts)
        if not isinstance(request.prompt, str) or not (request.prompt.strip() or visual):
            raise ValueError("a text prompt must not be empty (unless a box, points or a mask are given)")
    if propagator is None:
        if model is None:
            raise ValueError("give a model or a propagator")
        propagator = make_propagator(model, device, encode_batch_size)
    prepared = prepared or PreparedVolume.for_model(volume, propagator.model, axis, window)
    first, last = (int(i) for i in slice_range) if slice_range is not None else (0, len(prepared) - 1)
    if not 0 <= first <= last < len(prepared):  # checked before anything is encoded or estimated
        raise IndexError(f"slice range {first}..{last} is not within 0..{len(prepared) - 1} (first <= last)")
    if start_slice is not None and not first <= start_slice <= last:
        raise IndexError(f"start slice {start_slice} is outside {first}..{last}")
    session = session or propagator.start_session(prepared.frame_source())
    if estimate and hasattr(session, "estimate_seconds"):
        frames = slice_range[1] - slice_range[0] + 1 if slice_range else len(prepared)
        seconds = session.estimate_seconds(len(requests), locate=start_slice is None, frames=frames)
        if progress is not None:
            device = str(getattr(propagator, "device", "this device"))
            where = "the CPU" if device == "cpu" else device
            progress(ProgressEvent("estimate", 0, frames, -1, seconds,
                                   f"estimated {seconds:.0f} s for {len(requests)} prompt(s) over {frames} slices "
                                   f"on {where} (measured on this machine)"))
    if presence == "checkpoint":
        from ..familiarity import PresenceRule

        presence = PresenceRule.for_model(propagator.model)
    transform = prepared.transform
    results = []
    for i, request in enumerate(requests):
        masks = {n: transform.frame_mask_to_model(m) for n, m in request.mask_prompts.items()}
        points = model_point_prompts(transform, request.point_prompts, request.box_prompts)
        label = f"[{i + 1}/{len(requests)}] " if len(requests) > 1 else ""

        def relay(event, label=label):
            if progress is not None:
                progress(dataclasses.replace(event, message=label + event.message))

        result = session.propagate(request.prompt.strip() or None, start_index=start_slice, mask_prompts=masks,
                                   point_prompts=points, max_empty_run=max_empty_run, direction=direction,
                                   frame_range=slice_range, progress=relay, cancel=cancel)
        frame_masks = prepared.logits_to_frames(result.logits, np.zeros(prepared.frames.shape[:3], bool),
                                                range(len(prepared)))
        for n, m in request.mask_prompts.items():  # a drawn mask is kept exactly as drawn
            frame_masks[n] = np.asarray(m, bool)
        name = request.name or request.prompt.strip() or "visual prompt"
        # a box, points, a mask or a chosen start slice say where the structure is: never judged absent
        told = bool(request.mask_prompts or request.point_prompts or request.box_prompts) or start_slice is not None
        absent = presence is not None and not told and presence.absent(result.scores)
        if absent:
            frame_masks[:] = False
            log.info(presence.message(name, result.scores))
        results.append(prepared.segment_result(
            frame_masks, result, name=name, prompt=request.prompt.strip(),
            color=tuple(request.color or PALETTE[i % len(PALETTE)]), start_slice=result.start_index))
        if absent:
            results[-1].absent, results[-1].message = True, presence.message(name, result.scores)
    return VolumeSegmentation(volume=volume, geometry=prepared.geometry, segments=results)


@dataclass
class RefineResult:
    """What a refinement changed. Slices are indices along the slicing axis; masks are frame-space (H, W) bool.

    changed: slices whose mask differs from the previous result, in the order they were decided (the corrected
    slice first); frame_masks: their new masks (a drawn correction exactly as drawn); visited: every slice the
    model ran on; propagation: the engine's new PropagationResult (the ``previous`` of the next refinement).
    """

    propagation: Any
    changed: list[int]
    frame_masks: dict[int, np.ndarray]
    visited: list[int]

    @property
    def slice_scores(self) -> np.ndarray:
        return self.propagation.scores


def refine_volume(prepared: PreparedVolume, session, prompt: Optional[str], previous, slice_index: int, *,
                  mask: Optional[np.ndarray] = None,
                  points: Optional[tuple[Sequence[Sequence[float]], Sequence[int]]] = None,
                  keep: Optional[Mapping[int, np.ndarray]] = None, unchanged_run: int = 3,
                  unchanged_iou: float = 1.0, progress: Optional[ProgressCallback] = None,
                  cancel: Optional[CancelToken] = None) -> RefineResult:
    """Re-propagate one segment from a corrected slice, only as far as its masks change (no re-encoding).

    prepared / session: the ones the previous result was computed with (its encoded features are reused).
    previous: that segment's PropagationResult. mask: the corrected slice, (H, W) bool in frame space, kept
    exactly; or points: ((row, col), ...), (1/0, ...) clicks on that slice, which correct its current mask.
    keep: earlier corrections {slice: (H, W) bool}, kept exactly and used as conditioning slices.
    unchanged_run / unchanged_iou: a direction stops after that many consecutive slices whose low-resolution
    mask has at least that IoU with the previous one (those slices keep the previous result bit for bit).
    Progress events of changed slices carry the slice's new (H, W) mask in ``event.mask`` (the first one arrives
    as soon as the first neighbouring slice is decided). Raises ``Cancelled`` when cancelled.
    """
    transform = prepared.transform
    if not 0 <= slice_index < len(prepared):
        raise IndexError(f"slice {slice_index} is outside 0..{len(prepared) - 1}")
    shape = prepared.frames.shape[1:3]
    drawn = {int(n): np.asarray(m, bool) for n, m in (keep or {}).items() if int(n) != slice_index}
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != shape:
            raise ValueError(f"the corrected slice mask is {mask.shape}, the slices are {shape}")
        drawn[slice_index] = mask
    model_points = None
    if points is not None:
        model_points = model_point_prompts(transform, {slice_index: points})[slice_index]
    keep_model = {n: transform.frame_mask_to_model(m) for n, m in drawn.items() if n != slice_index}

    def relay(event) -> None:
        if progress is None:
            return
        frame_mask = None
        if event.mask is not None:
            frame_mask = drawn.get(event.slice_index)
            if frame_mask is None:
                frame_mask = transform.logits_to_frame(event.mask[None])[0]
        progress(dataclasses.replace(event, phase="refine", mask=frame_mask))

    result = session.refine(prompt, previous, slice_index,
                            mask=transform.frame_mask_to_model(mask) if mask is not None else None,
                            points=model_points, keep=keep_model, unchanged_run=unchanged_run,
                            unchanged_iou=unchanged_iou, progress=relay, cancel=cancel)
    changed = list(result.extra["changed"])
    if mask is not None and slice_index not in changed:
        changed.insert(0, slice_index)  # the drawn slice is written exactly even where the model agreed
    frame_masks = {}
    for n in changed:
        frame_masks[n] = drawn[n] if n in drawn else transform.logits_to_frame(result.logits[n : n + 1])[0]
    return RefineResult(propagation=result, changed=changed, frame_masks=frame_masks, visited=list(result.order))


def result_from_masks(prepared: PreparedVolume, frame_masks: np.ndarray):
    """A PropagationResult standing for existing masks (N, H, W) bool on the frame grid (for example a segment
    loaded from a saved scene), so that it can be refined: logits at S/4 from the masks' area fraction (+-10),
    scores +10 where a slice has voxels and -10 where not, anchored on the slice with the largest area."""
    import torch
    import torch.nn.functional as F

    from .propagation import PropagationResult

    frame_masks = np.asarray(frame_masks, bool)
    if frame_masks.shape != prepared.frames.shape[:3]:
        raise ValueError(f"masks are {frame_masks.shape}, the frames {prepared.frames.shape[:3]}")
    size = prepared.transform.image_size
    logits = torch.empty((len(frame_masks), size // 4, size // 4), dtype=torch.float16)
    for start in range(0, len(frame_masks), 16):
        chunk = np.stack([prepared.transform.frame_mask_to_model(m) for m in frame_masks[start : start + 16]])
        fraction = F.avg_pool2d(torch.from_numpy(chunk)[:, None].float(), 4)[:, 0]
        logits[start : start + 16] = ((fraction - 0.5) * 20.0).to(torch.float16)
    areas = frame_masks.reshape(len(frame_masks), -1).sum(1)
    scores = np.where(areas > 0, 10.0, -10.0).astype(np.float32)
    return PropagationResult(logits=logits, scores=scores, order=list(range(len(frame_masks))),
                             start_index=int(np.argmax(areas)), image_size=size)
