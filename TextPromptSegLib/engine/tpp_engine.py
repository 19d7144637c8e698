"""TPP in the engine: a session with the same ``propagate`` contract as the TGSAM-2 session (so ``segment_volume``,
the CLI, the evaluation and the Slicer Logic run it unchanged), and the TPP -> SAM-2 pipeline of the paper's
Table 3 (TPP's mask on the start slice as the mask prompt of a SAM-2 / TGSAM-2 propagation).

TPP is sequential by design (each image reads the previous one's box, mask and query), so it runs slice by slice
from the start slice in each direction; the start slice is the one where the first-image class score is highest
in a coarse pass (as for TGSAM-2)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional

import numpy as np
import torch

from ..prompts import prompt_set
from .device import autocast, pick_device, resolve_precision
from .progress import CancelToken, ProgressCallback, ProgressTracker
from .propagation import PropagationResult, check_frame_range, coarse_candidates


def make_propagator(model, device=None, encode_batch_size: Optional[int] = None, first_mask_model=None,
                    precision: Optional[str] = "auto"):
    """The engine for ``model`` (TGSAM-2 / SAM-2 or TPP); with ``first_mask_model`` (a TPP), the TPP -> SAM-2
    pipeline. precision: "auto", "fp32" or "bf16" (``engine.device.resolve_precision``)."""
    from ..modeling.tpp import TPP
    from .propagation import Propagator

    if isinstance(model, TPP):
        if first_mask_model is not None:
            raise ValueError("the first-mask model feeds a SAM-2 / TGSAM-2 model, not another TPP")
        return TPPPropagator(model, device, precision=precision)
    propagator = Propagator(model, device, encode_batch_size=encode_batch_size, precision=precision)
    if first_mask_model is not None:
        return FirstMaskPipeline(TPPPropagator(first_mask_model, propagator.device, precision=precision), propagator)
    return propagator


class TPPPropagator:
    def __init__(self, model, device=None, encode_batch_size: Optional[int] = None,
                 precision: Optional[str] = "auto") -> None:
        self.device = pick_device(str(device) if device is not None else None)
        self.model = model.to(self.device).eval()
        self.precision = resolve_precision(self.device, precision)

    def start_session(self, frames) -> TPPSession:
        return TPPSession(self, frames)


class TPPSession:
    def __init__(self, propagator: TPPPropagator, frames) -> None:
        from .propagation import FrameSource

        self.propagator, self.model = propagator, propagator.model
        self.frames = frames if isinstance(frames, FrameSource) else FrameSource(frames)
        self._first: dict[int, dict] = {}  # first-image outputs of ``_first_prompt`` by slice (locate, start slice)
        self._first_prompt: Optional[str] = None

    def __len__(self) -> int:
        return len(self.frames)

    def _image(self, index: int) -> torch.Tensor:
        return self.frames.get([index]).to(self.propagator.device)

    def _words(self, prompt: str):
        return self.model.encode_prompts(prompt_set(prompt))

    def _first_step(self, prompt: str, index: int, words, mask) -> dict:
        """TPP on slice ``index`` as the first image of a sequence (Nq queries, prompt selection), computed once per
        prompt and slice: the coarse pass, the start slice of both directions and the TPP -> SAM-2 first mask share
        it. Call inside inference mode."""
        if prompt != self._first_prompt:
            self._first, self._first_prompt = {}, prompt
        if index not in self._first:
            self._first[index] = self.model.step(self._image(index), words, mask)
        return self._first[index]

    def locate(self, prompt: str, cancel: Optional[CancelToken] = None, progress: Optional[ProgressCallback] = None,
               frame_range: Optional[tuple[int, int]] = None) -> tuple[int, np.ndarray]:
        words, mask = self._words(prompt)
        candidates = coarse_candidates(*check_frame_range(frame_range, len(self)))
        tracker = ProgressTracker(progress, "locate", len(candidates))
        scores = np.full(len(self), -np.inf, np.float32)
        with torch.inference_mode(), autocast(self.propagator.device, self.propagator.precision):
            for index in candidates:
                if cancel:
                    cancel.raise_if_cancelled()
                out = self._first_step(prompt, index, words, mask)
                scores[index] = float(out["logits"].max())
                tracker.step(index)
        return int(np.nanargmax(scores)), scores

    def first_mask(self, prompt: str, index: int) -> tuple[torch.Tensor, float]:
        """TPP on one slice as a first image: the best query's mask logits (S/4, S/4) and class logit (reused from
        ``locate`` when it ran on that slice)."""
        with torch.inference_mode(), autocast(self.propagator.device, self.propagator.precision):
            out = self._first_step(prompt, index, *self._words(prompt))
        self._first = {}
        return out["masks"][out["best"]].float().cpu(), float(out["logits"][out["best"]])

    def propagate(self, prompt: Optional[str], start_index: Optional[int] = None, direction: str = "both",
                  mask_prompts: Optional[Mapping[int, np.ndarray]] = None,
                  point_prompts: Optional[Mapping[int, dict]] = None, max_empty_run: Optional[int] = None,
                  stop_when_unchanged=None, frame_range: Optional[tuple[int, int]] = None,
                  progress: Optional[ProgressCallback] = None,
                  cancel: Optional[CancelToken] = None) -> PropagationResult:
        if not prompt:
            raise ValueError("TPP needs a text prompt")
        if mask_prompts or point_prompts:
            raise ValueError("TPP takes text only; use a TGSAM-2 model (or the TPP -> SAM-2 pipeline) for visual "
                             "prompts")
        n = len(self)
        first, last = check_frame_range(frame_range, n)
        if start_index is None:
            start_index, _ = self.locate(prompt, cancel, progress, (first, last))
        if not first <= start_index <= last:
            raise IndexError(f"start slice {start_index} is outside {first}..{last}")
        words, wmask = self._words(prompt)
        size = self.model.image_size // 4
        logits = torch.full((n, size, size), -math.inf, dtype=torch.float16)
        scores = np.full(n, -np.inf, np.float32)
        order: list[int] = []
        up, down = range(start_index, last + 1), range(start_index, first - 1, -1)
        runs = {"forward": [up], "backward": [down], "both": [up, down]}[direction]
        tracker = ProgressTracker(progress, "propagate", sum(len(r) for r in runs) - (len(runs) - 1))
        with torch.inference_mode(), autocast(self.propagator.device, self.propagator.precision):
            for run in runs:
                state, empty = None, 0
                for index in run:
                    if cancel:
                        cancel.raise_if_cancelled()
                    out = (self._first_step(prompt, index, words, wmask) if state is None
                           else self.model.step(self._image(index), words, wmask, state))
                    state = out["state"]
                    best = out["best"]
                    score = float(out["logits"][best])
                    if index not in order:
                        order.append(index)
                        tracker.step(index)
                    present = score > 0
                    logits[index] = (out["masks"][best].float() if present else
                                     torch.full((size, size), -1024.0)).half().cpu()
                    scores[index] = score
                    empty = 0 if present else empty + 1
                    if max_empty_run and empty >= max_empty_run:
                        break
        self._first = {}  # the cached first-image outputs hold feature maps: free them with the result
        return PropagationResult(logits, scores, order, start_index, self.model.image_size)


class FirstMaskPipeline:
    """TPP -> SAM-2 (paper Table 3): TPP finds the start slice and segments it from the text; its mask conditions
    a TGSAM-2 / SAM-2 propagation (the text is passed on too unless ``text_to_sam=False``)."""

    def __init__(self, tpp: TPPPropagator, sam, text_to_sam: bool = True) -> None:
        self.tpp, self.sam, self.text_to_sam = tpp, sam, text_to_sam
        self.model = sam.model

    def start_session(self, frames) -> _FirstMaskSession:
        return _FirstMaskSession(self, frames)


class _FirstMaskSession:
    def __init__(self, pipeline: FirstMaskPipeline, frames) -> None:
        self.pipeline = pipeline
        self.tpp = pipeline.tpp.start_session(frames)
        self.sam = pipeline.sam.start_session(frames)

    def propagate(self, prompt: Optional[str], start_index: Optional[int] = None, direction: str = "both",
                  mask_prompts=None, point_prompts=None, progress=None, cancel=None, **kwargs) -> PropagationResult:
        import torch.nn.functional as F

        if not prompt:
            raise ValueError("the TPP -> SAM-2 pipeline needs a text prompt")
        frame_range = kwargs.get("frame_range")
        index = start_index if start_index is not None else self.tpp.locate(prompt, cancel, progress, frame_range)[0]
        logits, _ = self.tpp.first_mask(prompt, index)
        size = self.pipeline.model.image_size
        first = F.interpolate(logits[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0] > 0
        masks = dict(mask_prompts or {})
        masks.setdefault(index, first.numpy())
        result = self.sam.propagate(prompt if self.pipeline.text_to_sam else None, index, direction, masks,
                                    point_prompts, progress=progress, cancel=cancel, **kwargs)
        result.extra["tpp_start_mask"] = first
        return result
