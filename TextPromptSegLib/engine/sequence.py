"""2D+t sequences (ultrasound cine loops, endoscopy videos) through the one engine, frame by frame, with refinement.

A sequence is a :class:`~TextPromptSegLib.io.volumes.Volume` whose k axis is time (``volume.sequence`` set; see
``io.volumes.sequence_from_array`` / ``read_sequence``). :class:`PreparedVolume` cuts it into its time points as
stored (rows j, columns i), normalises grey frames with robust percentiles (ultrasound) and scales RGB frames by
1/255 (endoscopy), and :func:`segment_volume` propagates each prompt through the frames with the memory bank,
exactly as through the slices of a volume: frames play the role of slices.

:class:`InteractiveSegmentation` keeps the encoded frames (the engine's ``Session``) so that a correction drawn
on one frame re-propagates in both directions without re-encoding, only as far as the result changes
(``Session.refine``); the corrected frame is kept exactly as drawn and frames whose result did not change keep
their mask bit for bit. It works on volumes too (frame = slice along the slicing axis).

Arrays crossing this API are in frame space: masks (H, W) or (N, H, W) bool, N frames (time points or slices),
H rows, W columns as the frames are stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from ..io.volumes import Volume, sequence_from_array
from .pipeline import PreparedVolume, SegmentRequest, SegmentResult, VolumeSegmentation, segment_volume
from .preprocess import Window
from .progress import CancelToken, ProgressCallback

CORRECTIONS = "corrections"  # PropagationResult.extra key: {frame: (H, W) bool drawn mask}, kept exactly


@dataclass
class Refinement:
    """A refined segment and what the refinement did: the frames it re-decided (``visited``, in order) and the
    frames whose mask changed (``changed``, the corrected frame included when it differs from before)."""

    segment: SegmentResult
    frame: int
    visited: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)


class InteractiveSegmentation:
    """One sequence (or volume), encoded once: segment prompts, then refine them from corrected frames.

    ``source``: a Volume (a sequence or a volume) or a (t, y, x[, 3]) array (a sequence; see
    ``sequence_from_array``). Give a built ``model`` or a ``propagator`` (shared between inputs).
    """

    def __init__(self, source: Union[Volume, np.ndarray], model=None, *, propagator=None,
                 device: Optional[str] = None, axis: Optional[str] = None, window: Window = None,
                 encode_batch_size: Optional[int] = None) -> None:
        from .tpp_engine import make_propagator

        self.volume = source if isinstance(source, Volume) else sequence_from_array(source)
        if propagator is None:
            if model is None:
                raise ValueError("give a model or a propagator")
            propagator = make_propagator(model, device, encode_batch_size)
        self.propagator = propagator
        self.prepared = PreparedVolume.for_model(self.volume, propagator.model, axis, window)
        self.session = propagator.start_session(self.prepared.frame_source())

    def __len__(self) -> int:
        return len(self.prepared)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of one frame."""
        return tuple(self.prepared.frames.shape[1:3])

    def segment(self, requests: Sequence[SegmentRequest], start_frame: Optional[int] = None,
                direction: str = "both", max_empty_run: Optional[int] = None,
                progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None) -> VolumeSegmentation:
        """Segment every frame once per request (``segment_volume`` on the shared session).

        start_frame: the conditioning frame (None: the most confident frame of a coarse pass).
        Raises ``Cancelled`` when cancelled (nothing is returned).
        """
        result = segment_volume(self.volume, requests, propagator=self.propagator, session=self.session,
                                prepared=self.prepared, start_slice=start_frame, direction=direction,
                                max_empty_run=max_empty_run, progress=progress, cancel=cancel)
        for request, seg in zip(requests, result.segments):
            seg.propagation.extra[CORRECTIONS] = {int(n): np.asarray(m, bool).copy()
                                                  for n, m in request.mask_prompts.items()}
        return result

    def frame_masks(self, segment: SegmentResult) -> np.ndarray:
        """(N, H, W) bool masks of a segment, one per frame (a view of ``segment.mask`` in frame order)."""
        return self.prepared.geometry.to_frames(segment.mask)

    def refine(self, segment: SegmentResult, frame: int, mask: np.ndarray, unchanged_run: int = 3,
               progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> Refinement:
        """Re-propagate ``segment`` from a corrected frame (``mask`` (H, W) bool drawn on frame ``frame``).

        The correction becomes a conditioning frame of the memory (with the original start frame as the second
        anchor); each direction stops after ``unchanged_run`` frames equal to the previous result. The returned
        segment keeps the drawn mask exactly on ``frame`` (and every earlier correction on its frame), takes the
        new result on the frames that changed, and keeps every other frame bit for bit. Encoded frames are reused
        (no re-encoding). ``segment`` itself is not modified; raises ``Cancelled`` when cancelled.
        """
        n = len(self)
        if not 0 <= frame < n:
            raise IndexError(f"frame {frame} is outside 0..{n - 1}")
        mask = np.asarray(mask, bool)
        if mask.shape != self.frame_shape:
            raise ValueError(f"the corrected mask must be {self.frame_shape} like a frame, got {mask.shape}")
        previous = segment.propagation
        if previous is None:
            raise ValueError("this segment has no propagation result to refine")
        transform = self.prepared.transform
        result = self.session.refine(segment.prompt, previous, frame, transform.frame_mask_to_model(mask),
                                     unchanged_run=unchanged_run, progress=progress, cancel=cancel)
        corrections = {**previous.extra.get(CORRECTIONS, {}), frame: mask.copy()}
        result.extra[CORRECTIONS] = corrections

        old = self.frame_masks(segment)
        recomputed = [i for i in result.extra.get("changed", []) if i not in corrections]
        frames = self.prepared.logits_to_frames(result.logits, old.copy(), recomputed)
        for index, drawn in corrections.items():  # drawn masks are kept exactly as drawn
            frames[index] = drawn
        changed = [i for i in range(n) if not np.array_equal(frames[i], old[i])]
        refined = self.prepared.segment_result(frames, result, name=segment.name, prompt=segment.prompt,
                                               color=segment.color, start_slice=segment.start_slice)
        return Refinement(refined, frame, list(result.order), changed)


def segment_sequence(frames: Union[Volume, np.ndarray], prompts: Sequence[Union[str, SegmentRequest]], model=None,
                     *, propagator=None, device: Optional[str] = None, start_frame: Optional[int] = None,
                     window: Window = None, progress: Optional[ProgressCallback] = None,
                     cancel: Optional[CancelToken] = None) -> tuple[VolumeSegmentation, InteractiveSegmentation]:
    """Segment a 2D+t sequence frame by frame: one segment per prompt.

    frames: (t, y, x) grey (ultrasound: percentile normalisation) or (t, y, x, 3) RGB (endoscopy), or a sequence
    Volume. Returns the result (``segments[i].mask`` is (t, y, x) bool; ``slice_scores`` / ``slice_areas_mm2``
    are per frame) and the interactive session to refine it with.
    """
    interactive = InteractiveSegmentation(frames, model, propagator=propagator, device=device, window=window)
    if not interactive.volume.is_sequence:
        raise ValueError("segment_sequence needs a 2D+t sequence; use segment_volume for volumes")
    requests = [p if isinstance(p, SegmentRequest) else SegmentRequest(p) for p in prompts]
    return interactive.segment(requests, start_frame, progress=progress, cancel=cancel), interactive
