"""segment_volume: the one code path used by the CLI, the Slicer Logic, evaluation and the benchmarks.

volume -> normalised intensities -> frames along the slicing axis -> model-space frames (lazily, per batch)
-> Propagator session (encoded once for all prompts) -> per-prompt low-resolution logits -> frame grid ->
boolean masks (z, y, x) on the input grid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..io.volumes import Volume, validate
from .geometry import SliceGeometry
from .preprocess import FrameTransform, Window, normalize_intensity
from .progress import CancelToken, ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)

PALETTE = ((0.90, 0.35, 0.25), (0.30, 0.70, 0.90), (0.95, 0.80, 0.25), (0.45, 0.80, 0.40), (0.75, 0.45, 0.85),
           (0.95, 0.55, 0.70), (0.40, 0.55, 0.95), (0.85, 0.60, 0.35))


@dataclass
class SegmentRequest:
    """One prompt = one segment. Visual prompts are in frame space of the slicing axis (slice index n):
    ``mask_prompts`` {n: bool (H, W)} and ``point_prompts`` {n: ((row, col), ...), labels (1/0, ...)}."""

    prompt: str
    name: Optional[str] = None
    color: Optional[tuple[float, float, float]] = None
    mask_prompts: Mapping[int, np.ndarray] = field(default_factory=dict)
    point_prompts: Mapping[int, tuple[Sequence[Sequence[float]], Sequence[int]]] = field(default_factory=dict)


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

    A 2D+t sequence (``volume.sequence``) is always cut into its time points (``axis`` must be None)."""

    def __init__(self, volume: Volume, image_size: int, axis: Optional[str] = None, window: Window = None,
                 min_slices: int = 2) -> None:
        self.volume = validate(volume, min_slices)
        if volume.is_sequence:
            if axis is not None:
                raise ValueError(f"a 2D+t sequence is segmented frame by frame; a slicing axis ({axis!r}) does "
                                 "not apply")
            self.geometry = SliceGeometry.for_sequence(volume.spacing)
        else:
            self.geometry = SliceGeometry.for_volume(volume.direction, volume.spacing, axis)
        normalised = normalize_intensity(volume.array, volume.modality, window)
        self.frames = self.geometry.to_frames(normalised)  # (N, H, W[, 3]) view
        n, h, w = self.frames.shape[:3]
        self.transform = FrameTransform(h, w, image_size, self.geometry.row_spacing, self.geometry.col_spacing)

    def __len__(self) -> int:
        return self.frames.shape[0]

    def frame_source(self):
        from .propagation import FrameSource

        return FrameSource(lambda idx: self.transform.frames_to_model(self.frames[list(idx)]), len(self))

    def to_volume_mask(self, frame_masks: np.ndarray) -> np.ndarray:
        return self.geometry.from_frames(frame_masks)


def segment_volume(volume: Volume, requests: Sequence[SegmentRequest], model=None, *, propagator=None,
                   device: Optional[str] = None, axis: Optional[str] = None, start_slice: Optional[int] = None,
                   window: Window = None, encode_batch_size: int = 8, max_empty_run: Optional[int] = None,
                   direction: str = "both", slice_range: Optional[tuple[int, int]] = None, estimate: bool = False,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                   session=None, prepared: Optional[PreparedVolume] = None) -> VolumeSegmentation:
    """Segment ``volume`` once per request. Give a built ``model`` or a ``propagator``.

    start_slice: index along the slicing axis (the voxel index on that axis); None picks it per prompt from a
    coarse pass. direction: "both", "forward" (increasing slice index) or "backward" from the start slice; slices
    not reached stay empty. slice_range: (first, last) slice indices, inclusive, along the slicing axis; slices
    outside stay empty (default: the whole volume). estimate: first measure how long the run will take
    (``Session.estimate_seconds``) and report it as a ``ProgressEvent`` of phase "estimate" whose ``eta_seconds`` is
    the estimate (the CLI and the Slicer panel show it before a CPU run). Raises ValueError for empty prompts,
    IndexError for a start slice or range outside the volume, ``Cancelled`` when cancelled (nothing is returned).
    """
    from .tpp_engine import make_propagator

    if not requests:
        raise ValueError("at least one prompt is needed")
    if direction not in ("both", "forward", "backward"):
        raise ValueError(f"direction must be 'both', 'forward' or 'backward', not {direction!r}")
    for request in requests:
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise ValueError("a text prompt must not be empty")
    if propagator is None:
        if model is None:
            raise ValueError("give a model or a propagator")
        propagator = make_propagator(model, device, encode_batch_size)
    prepared = prepared or PreparedVolume(volume, propagator.model.image_size, axis, window)
    session = session or propagator.start_session(prepared.frame_source())
    if estimate and hasattr(session, "estimate_seconds"):
        frames = slice_range[1] - slice_range[0] + 1 if slice_range else len(prepared)
        seconds = session.estimate_seconds(len(requests), locate=start_slice is None, frames=frames)
        if progress is not None:
            progress(ProgressEvent("estimate", 0, frames, -1, seconds,
                                   f"estimated {seconds:.0f} s for {len(requests)} prompt(s) over {frames} slices "
                                   f"on {getattr(propagator, 'device', 'this device')} (measured on this machine)"))
    row_mm, col_mm = prepared.geometry.row_spacing, prepared.geometry.col_spacing
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    transform = prepared.transform
    results = []
    for i, request in enumerate(requests):
        masks = {n: transform.frame_mask_to_model(m) for n, m in request.mask_prompts.items()}
        points = {n: {"coords": transform.frame_points_to_model(np.asarray(p[0], float)), "labels": list(p[1])}
                  for n, p in request.point_prompts.items()}
        label = f"[{i + 1}/{len(requests)}] " if len(requests) > 1 else ""

        def relay(event, label=label):
            if progress is not None:
                progress(type(event)(event.phase, event.done, event.total, event.slice_index, event.eta_seconds,
                                     label + event.message))

        result = session.propagate(request.prompt.strip(), start_index=start_slice, mask_prompts=masks,
                                   point_prompts=points, max_empty_run=max_empty_run, direction=direction,
                                   frame_range=slice_range, progress=relay, cancel=cancel)
        frame_masks = np.zeros(prepared.frames.shape[:3], bool)
        for start in range(0, len(prepared), 16):
            frame_masks[start : start + 16] = transform.logits_to_frame(result.logits[start : start + 16])
        for n, m in request.mask_prompts.items():  # a drawn mask is kept exactly as drawn
            frame_masks[n] = np.asarray(m, bool)
        mask = prepared.to_volume_mask(frame_masks)
        areas = frame_masks.reshape(len(prepared), -1).sum(1) * row_mm * col_mm
        results.append(SegmentResult(
            name=request.name or request.prompt.strip(), prompt=request.prompt.strip(),
            color=tuple(request.color or PALETTE[i % len(PALETTE)]), mask=mask, slice_scores=result.scores,
            slice_areas_mm2=areas, volume_ml=float(mask.sum()) * voxel_ml, start_slice=result.start_index,
            propagation=result,
        ))
    return VolumeSegmentation(volume=volume, geometry=prepared.geometry, segments=results)
