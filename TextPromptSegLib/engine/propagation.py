"""Propagation: text (+ optional mask / point prompts) -> a mask on every frame, through SAM-2's memory bank.

The image encoder does not depend on the memory, so frames are encoded in batches (``encode_batch_size``) and
kept in a byte-bounded LRU cache for later prompts and refinements; only memory attention, the mask decoder and
the memory encoder run frame after frame. Frames are read lazily from a :class:`FrameSource`, so host and GPU
memory are bounded by the batch and the cache budget, never by the volume.

Order of work for one prompt: the start frame (given, or the frame with the highest object score in a coarse
text-only pass over every k-th frame) is the conditioning frame; frames with mask prompts are conditioning
frames too; then frames start+1 .. N-1 are tracked forward and start-1 .. 0 backward (``track_in_reverse``),
all in one memory bank (SAM-2's ``output_dict``), exactly as sam2's video predictor does.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .device import autocast, pick_device, resolve_precision
from .progress import CancelToken, ProgressCallback, ProgressTracker

log = logging.getLogger(__name__)

FrameGetter = Callable[[Sequence[int]], torch.Tensor]


class FrameSource:
    """N frames (3, S, S) float32 in [0, 1], read in batches by index.

    Wrap an in-memory tensor (N, 3, S, S) or give ``getter(indices) -> (b, 3, S, S)`` and ``count``.
    """

    def __init__(self, frames: Union[torch.Tensor, FrameGetter], count: Optional[int] = None) -> None:
        if isinstance(frames, torch.Tensor):
            if frames.ndim != 4 or frames.shape[1] != 3:
                raise ValueError(f"frames must be (N, 3, S, S), got {tuple(frames.shape)}")
            tensor = frames
            self._get: FrameGetter = lambda idx: tensor[list(idx)]
            self.count = frames.shape[0]
        else:
            if count is None:
                raise ValueError("a frame getter needs the number of frames")
            self._get, self.count = frames, count
        self.requests: list[int] = []  # batch sizes asked for (tests check the memory bound)

    def __len__(self) -> int:
        return self.count

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        self.requests.append(len(indices))
        return self._get(indices)


@dataclass
class PropagationResult:
    """Per-frame outputs at model resolution for one prompt.

    logits: (N, S/4, S/4) float16 low-resolution mask logits (SAM-2's ``pred_masks``); frames never reached are
    -inf. ``masks(size)`` upsamples them bilinearly (as SAM-2 does) and thresholds at 0.
    scores: (N,) object-score logits (> 0: object present); frames never reached hold -inf.
    order: frame indices in the order they were decided; start_index: the conditioning frame.
    """

    logits: torch.Tensor
    scores: np.ndarray
    order: list[int]
    start_index: int
    image_size: int
    extra: dict[str, Any] = field(default_factory=dict)

    def mask(self, index: int, size: Optional[int] = None) -> torch.Tensor:
        """(size, size) bool mask of one frame."""
        return self.masks(size, indices=[index])[0]

    def masks(self, size: Optional[int] = None, indices: Optional[Sequence[int]] = None) -> torch.Tensor:
        """(N, size, size) bool (or only the frames in ``indices``); ``size`` defaults to the model input size."""
        size = size or self.image_size
        logits = self.logits if indices is None else self.logits[list(indices)]
        out = torch.zeros((logits.shape[0], size, size), dtype=torch.bool)
        for start in range(0, logits.shape[0], 32):  # bounded memory at 1024
            chunk = logits[start : start + 32].float()[:, None]
            up = F.interpolate(chunk.nan_to_num(neginf=-1024.0), size=(size, size), mode="bilinear",
                               align_corners=False)
            out[start : start + 32] = up[:, 0] > 0
        return out


def check_frame_range(frame_range: Optional[tuple[int, int]], n: int) -> tuple[int, int]:
    """(first, last) inclusive frame indices within 0..n-1; None means every frame."""
    if frame_range is None:
        return 0, n - 1
    first, last = (int(i) for i in frame_range)
    if not 0 <= first <= last < n:
        raise IndexError(f"slice range {first}..{last} is not within 0..{n - 1} (first <= last)")
    return first, last


def coarse_candidates(first: int, last: int, stride: Optional[int] = None, samples: int = 16) -> list[int]:
    """About ``samples`` evenly spaced frames of first..last for the coarse start-slice pass."""
    count = last - first + 1
    stride = stride or max(1, math.ceil(count / samples))
    return list(range(first + stride // 2, last + 1, stride)) or [first]


def default_encode_batch_size(device: Union[str, torch.device]) -> int:
    """Frames per image-encoder call: 8 on GPUs (fewer kernel launches); 2 on CPUs, where larger batches are
    slower (Hiera-S at 512 on the 2-core CI machine: 538 ms/frame at 2, 560 at 1, 674 at 8; benchmarks/RESULTS.md)."""
    return 2 if torch.device(device).type == "cpu" else 8


class Propagator:
    """Runs a TGSAM2 over frame sources. One instance per model and device; create sessions per volume."""

    def __init__(self, model, device: Optional[Union[str, torch.device]] = None,
                 encode_batch_size: Optional[int] = None, cache_bytes: int = 2 << 30,
                 precision: Optional[str] = "auto", compile: bool = False) -> None:
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.model = model.to(self.device).eval()
        if encode_batch_size is None:
            encode_batch_size = default_encode_batch_size(self.device)
        self.encode_batch_size = max(1, int(encode_batch_size))
        self.cache_bytes = int(cache_bytes)
        self.precision = resolve_precision(self.device, precision)  # "fp32" or "bf16"
        if compile:
            self.model.image_encoder = torch.compile(self.model.image_encoder, dynamic=False)

    def start_session(self, frames: Union[FrameSource, torch.Tensor]) -> Session:
        source = frames if isinstance(frames, FrameSource) else FrameSource(frames)
        return Session(self, source)


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


class Session:
    """Encoded frames of one volume or sequence, shared by every prompt and refinement on it."""

    def __init__(self, propagator: Propagator, frames: FrameSource) -> None:
        self.propagator = propagator
        self.model = propagator.model
        self.frames = frames
        self.device = propagator.device
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._cache_size = 0  # bytes held by the cached frames (shared position encodings counted once, not here)
        self._pos: Optional[list] = None  # the frames' shared position encodings ([] once found frame-dependent)
        self.encode_count = 0  # frames passed through the image encoder (tests: no re-encoding)
        self._text_cache: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.frames)

    # ------------------------------------------------------------------ encoding
    def _autocast(self):
        return autocast(self.device, self.propagator.precision)

    def _encode_batch(self, indices: list[int]) -> None:
        batch = self.propagator.encode_batch_size
        i = 0
        while i < len(indices):
            chunk = indices[i : i + batch]
            try:
                images = self.frames.get(chunk).to(self.device, torch.float32)
                with self._autocast():
                    out = self.model.encode_backbone(self.model.normalize_images(images))
            except torch.cuda.OutOfMemoryError:
                if batch == 1:
                    raise
                torch.cuda.empty_cache()
                batch = max(1, batch // 2)
                log.warning("CUDA out of memory while encoding; retrying with batch %d", batch)
                continue
            self.encode_count += len(chunk)
            pos = self._shared_pos(out["vision_pos_enc"])
            for j, index in enumerate(chunk):
                # slices of a batch tensor would keep the whole batch alive: copy out what we keep (a batch of one
                # is kept as it is)
                fpn = [x if len(chunk) == 1 else x[j : j + 1].clone() for x in out["backbone_fpn"]]
                entry = {"backbone_fpn": fpn,
                         "vision_pos_enc": pos or [x[j : j + 1].clone() for x in out["vision_pos_enc"]]}
                self._cache[index] = entry
                self._cache_size += self._entry_bytes(entry)
            i += len(chunk)
        while self._cache_size > self.propagator.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_size -= self._entry_bytes(old)

    def _entry_bytes(self, entry: dict[str, Any]) -> int:
        shared = entry["vision_pos_enc"] is self._pos
        return _nbytes(entry["backbone_fpn"]) + (0 if shared else _nbytes(entry["vision_pos_enc"]))

    def _shared_pos(self, batch_pos: list) -> Optional[list]:
        """The image encoder's position encodings depend on the image size only (sam2's sine encoding), so every
        frame shares one copy (at 1024 px, Hiera's 88 MB per frame). Checked on each batch: a model whose encodings
        differ between frames gets None (each frame then keeps its own)."""
        if self._pos is None:
            self._pos = [x[:1].clone() for x in batch_pos]
        if self._pos and all(torch.equal(x, shared.expand_as(x)) for x, shared in zip(batch_pos, self._pos)):
            return self._pos
        self._pos = []  # frame-dependent: never share again in this session
        return None

    def backbone(self, index: int, lookahead: int = 1) -> dict[str, Any]:
        """Text-free features of one frame, encoding it (and the next frames in ``lookahead`` direction) if needed."""
        if index not in self._cache:
            step = 1 if lookahead >= 0 else -1
            want = [index]
            j = index + step
            while len(want) < self.propagator.encode_batch_size and 0 <= j < len(self) and j not in self._cache:
                want.append(j)
                j += step
            self._encode_batch(want)
        self._cache.move_to_end(index)
        return self._cache[index]

    def encode_all(self, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> None:
        """Encode every frame up front (only useful when the cache budget holds the whole volume)."""
        tracker = ProgressTracker(progress, "encode", len(self))
        batch = self.propagator.encode_batch_size
        for start in range(0, len(self), batch):
            if cancel:
                cancel.raise_if_cancelled()
            todo = [i for i in range(start, min(start + batch, len(self))) if i not in self._cache]
            with torch.inference_mode():
                self._encode_batch(todo)
            tracker.step(start, count=min(batch, len(self) - start))

    def estimate_seconds(self, prompts: int = 1, locate: bool = True, frames: Optional[int] = None) -> float:
        """A measured estimate of how long ``prompts`` propagations over ``frames`` (default: all) will take.

        Times warm calls only (the first call of each shape pays one-off set-up costs many times a warm call):
        the image encoder on the second batch (both batches stay in the cache and the run reuses them), and the
        second of two conditioning steps and of two tracking steps reading a full memory bank (the per-slice cost
        once the bank has filled). Then scales: every frame encoded once (once per prompt when the cache cannot
        hold the volume), the coarse start-slice pass (``locate``), one tracking step per frame and prompt.
        Costs about four tracking steps beyond the encoding that the run needs anyway.
        """
        from time import perf_counter

        def timed(call) -> float:
            start = perf_counter()
            call()
            return perf_counter() - start

        n = frames or len(self)
        batch = self.propagator.encode_batch_size
        with torch.inference_mode():
            per_encode = timed(lambda: self.backbone(0)) / min(batch, len(self))
            if len(self) > batch:
                per_encode = timed(lambda: self.backbone(batch)) / min(batch, len(self) - batch)
            empty: dict[str, dict] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
            first = self._step(0, True, None, empty)
            per_condition = timed(lambda: self._step(0, True, None, empty))
            index = min(self.model.num_maskmem, len(self) - 1)
            per_track = per_condition
            if index > 0:
                bank = {"cond_frame_outputs": {0: first},
                        "non_cond_frame_outputs": {i: first for i in range(1, index)}}
                self._step(index, False, None, bank)
                per_track = timed(lambda: self._step(index, False, None, bank))
        holds_volume = self._entry_bytes(self._cache[0]) * n <= self.propagator.cache_bytes
        encodes = n * (1 if holds_volume else prompts)
        located = len(coarse_candidates(0, n - 1)) * per_condition if locate else 0.0
        return encodes * per_encode + prompts * (located + n * per_track)

    def text(self, prompt: Optional[str]):
        if prompt is None:
            return None
        if prompt not in self._text_cache:
            with torch.inference_mode():
                self._text_cache[prompt] = self.model.encode_text([prompt]).to(self.device)
        return self._text_cache[prompt]

    def _frame_features(self, index: int, text, direction: int = 1):
        with self._autocast():
            conditioned = self.model.condition_backbone(self.backbone(index, direction), text)
        return self.model.prepare_frame_features(conditioned)

    # ------------------------------------------------------------------ tracking
    def _step(self, index: int, cond: bool, text, output_dict: dict, reverse: bool = False,
              mask: Optional[np.ndarray] = None, points: Optional[dict] = None) -> dict[str, Any]:
        feats, pos, sizes = self._frame_features(index, text, -1 if reverse else 1)
        mask_input = None
        if mask is not None:
            size = self.model.image_size
            mask_input = torch.as_tensor(np.asarray(mask, dtype=bool), device=self.device)[None, None].float()
            if mask_input.shape[-1] != size:
                mask_input = F.interpolate(mask_input, size=(size, size), mode="nearest")
        point_inputs = previous_logits = None
        if points is not None:
            point_inputs = {
                "point_coords": torch.as_tensor(points["coords"], dtype=torch.float32, device=self.device)[None],
                "point_labels": torch.as_tensor(points["labels"], dtype=torch.int32, device=self.device)[None],
            }
            if points.get("mask_logits") is not None:  # the frame's current mask as SAM's dense prompt
                previous_logits = torch.as_tensor(points["mask_logits"], device=self.device).float()
                previous_logits = previous_logits.nan_to_num(neginf=-32.0, posinf=32.0).clamp(-32.0, 32.0)[None, None]
        with self.model.text_context(text), self._autocast():
            out = self.model.track_step(index, cond, feats, pos, sizes, point_inputs, mask_input, output_dict,
                                        len(self), track_in_reverse=reverse, prev_sam_mask_logits=previous_logits)
        # keep only what the memory bank needs
        return {k: out[k] for k in ("maskmem_features", "maskmem_pos_enc", "pred_masks", "obj_ptr",
                                    "object_score_logits")}

    def locate(self, prompt: str, stride: Optional[int] = None, cancel: Optional[CancelToken] = None,
               progress: Optional[ProgressCallback] = None,
               frame_range: Optional[tuple[int, int]] = None) -> tuple[int, np.ndarray]:
        """Coarse text-only pass: object score on every ``stride``-th frame of ``frame_range`` (first, last;
        default all); returns (best frame, scores)."""
        text = self.text(prompt)
        candidates = coarse_candidates(*check_frame_range(frame_range, len(self)), stride)
        tracker = ProgressTracker(progress, "locate", len(candidates))
        scores = np.full(len(self), -np.inf, np.float32)
        with torch.inference_mode():
            for index in candidates:
                if cancel:
                    cancel.raise_if_cancelled()
                out = self._step(index, True, text, {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}})
                scores[index] = float(out["object_score_logits"].float().max())
                tracker.step(index)
        return int(np.argmax(scores)), scores

    def propagate(self, prompt: Optional[str], start_index: Optional[int] = None, direction: str = "both",
                  mask_prompts: Optional[Mapping[int, np.ndarray]] = None,
                  point_prompts: Optional[Mapping[int, dict]] = None, max_empty_run: Optional[int] = None,
                  stop_when_unchanged: Optional[tuple[PropagationResult, int]] = None, unchanged_iou: float = 1.0,
                  anchors: Sequence[int] = (), frame_range: Optional[tuple[int, int]] = None,
                  progress: Optional[ProgressCallback] = None,
                  cancel: Optional[CancelToken] = None) -> PropagationResult:
        """Segment every frame (of ``frame_range``) for one prompt.

        prompt: the text (None: visual prompts only, plain SAM-2 behaviour).
        start_index: the conditioning frame; None picks it with :meth:`locate` (or the first prompted frame).
        direction: "both", "forward" or "backward" from the start frame.
        mask_prompts: {frame: bool (S, S) at model resolution} used as conditioning frames (kept exactly).
        point_prompts: {frame: {"coords": (P, 2) model-space (x, y) pixels, "labels": (P,) 1 positive, 0 negative,
            2 / 3 box top-left / bottom-right corner (SAM-2's box encoding; box corners come first), and optionally
            "mask_logits": (S/4, S/4) the frame's current low-resolution logits, given to SAM-2's decoder as the
            dense prompt (a click that corrects an existing mask)}}.
        max_empty_run: stop a direction after this many consecutive frames without the object.
        stop_when_unchanged: (previous result, n): stop a direction once n consecutive frames match the previous
            result's masks (refinement). A frame matches when the IoU of its low-resolution masks is at least
            ``unchanged_iou`` (1.0: identical; two empty masks match); a matching frame keeps the previous logits and
            score bit for bit, and frames not reached keep the previous result. Progress events of frames that did
            change carry their new low-resolution logits in ``ProgressEvent.mask``. ``anchors``: mask-prompted
            frames whose mask was taken from the previous result itself; they keep its logits and score.
        frame_range: (first, last) frames, inclusive, to segment; frames outside stay empty (default: all).
        Raises :class:`~.progress.Cancelled` when ``cancel`` is set (checked before every frame).
        """
        n = len(self)
        if n == 0:
            raise ValueError("no frames to segment")
        first, last = check_frame_range(frame_range, n)
        mask_prompts = dict(mask_prompts or {})
        point_prompts = dict(point_prompts or {})
        if prompt is None and not mask_prompts and not point_prompts:
            raise ValueError("give a text prompt or at least one mask or point prompt")
        for index in (*mask_prompts, *point_prompts):
            if not first <= index <= last:
                raise IndexError(f"prompted frame {index} is outside {first}..{last}")
        text = self.text(prompt)
        if start_index is None:
            prompted = sorted({*mask_prompts, *point_prompts})
            start_index = prompted[0] if prompted else self.locate(prompt, cancel=cancel, progress=progress,
                                                                   frame_range=(first, last))[0]
        if not first <= start_index <= last:
            raise IndexError(f"start slice {start_index} is outside {first}..{last}")

        size = self.model.image_size
        low = size // 4
        logits = torch.full((n, low, low), float("-inf"), dtype=torch.float16)
        scores = np.full(n, -np.inf, np.float32)
        order: list[int] = []
        output_dict: dict[str, dict] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        # the start frame first (it is the one the user is waiting for); conditioning frames see no memory, so
        # their order does not change any result
        cond_frames = [start_index, *sorted({*mask_prompts, *point_prompts} - {start_index})]
        forward = direction in ("both", "forward")
        backward = direction in ("both", "backward")
        todo = len(cond_frames) + (last - start_index if forward else 0) + (start_index - first if backward else 0)
        tracker = ProgressTracker(progress, "propagate", todo)

        previous = stop_when_unchanged[0] if stop_when_unchanged is not None else None

        def record(index: int, out: dict) -> bool:
            """Store one frame's output; True when it matches the previous result (refinement only)."""
            logits[index] = out["pred_masks"][0, 0].float().cpu().to(torch.float16)
            scores[index] = float(out["object_score_logits"].float().max())
            order.append(index)
            if previous is None:
                tracker.step(index)
                return False
            if index in anchors or masks_match(logits[index], previous.logits[index], unchanged_iou):
                logits[index] = previous.logits[index]
                scores[index] = previous.scores[index]
                tracker.step(index)
                return True
            tracker.step(index, mask=logits[index].clone())
            return False

        with torch.inference_mode():
            for index in cond_frames:
                if cancel:
                    cancel.raise_if_cancelled()
                out = self._step(index, True, text, output_dict, mask=mask_prompts.get(index),
                                 points=point_prompts.get(index))
                output_dict["cond_frame_outputs"][index] = out
                record(index, out)
            runs = ([(range(start_index + 1, last + 1), False)] if forward else []) + (
                [(range(start_index - 1, first - 1, -1), True)] if backward else [])
            for frames, reverse in runs:
                empty_run = same_run = 0
                for index in frames:
                    if cancel:
                        cancel.raise_if_cancelled()
                    if index in output_dict["cond_frame_outputs"]:
                        continue  # a prompted frame keeps its own result
                    out = self._step(index, False, text, output_dict, reverse=reverse)
                    output_dict["non_cond_frame_outputs"][index] = out
                    same = record(index, out)
                    empty_run = empty_run + 1 if scores[index] <= 0 else 0
                    if max_empty_run is not None and empty_run >= max_empty_run:
                        log.info("stopping %s at frame %d after %d empty frames",
                                 "backward" if reverse else "forward", index, empty_run)
                        break
                    if stop_when_unchanged is not None:
                        same_run = same_run + 1 if same else 0
                        if same_run >= stop_when_unchanged[1]:
                            break
        if previous is not None:  # frames not revisited keep the previous result
            untouched = torch.ones(n, dtype=torch.bool)
            untouched[order] = False
            logits[untouched] = previous.logits[untouched]
            scores[untouched.numpy()] = previous.scores[untouched.numpy()]
        return PropagationResult(logits=logits, scores=scores, order=order, start_index=start_index, image_size=size)

    def refine(self, prompt: Optional[str], previous: PropagationResult, frame: int,
               mask: Optional[np.ndarray] = None, points: Optional[dict] = None,
               keep: Optional[Mapping[int, np.ndarray]] = None, unchanged_run: int = 3, unchanged_iou: float = 1.0,
               keep_anchor: bool = False, progress: Optional[ProgressCallback] = None,
               cancel: Optional[CancelToken] = None) -> PropagationResult:
        """Re-propagate from a corrected frame in both directions, only as far as the result changes.

        Give either ``mask`` (bool (S, S) at model resolution: the user's corrected frame, a conditioning frame
        kept exactly) or ``points`` ({"coords": (P, 2) model-space (x, y), "labels": (P,)}: clicks on ``frame``;
        the frame's previous logits go with them as SAM-2's dense prompt, so a positive click adds to the current
        mask and a negative one removes from it). ``keep``: earlier corrections {frame: bool (S, S)}, conditioning
        frames kept exactly. Each direction stops once ``unchanged_run`` consecutive frames match ``previous`` (see
        :meth:`propagate`); frames not revisited keep the previous result bit for bit. Encoded features are reused
        (no re-encoding). ``result.extra["changed"]`` lists the frames whose mask differs from ``previous``.

        ``keep_anchor``: also condition on the previous run's start frame (its own mask). Off by default: that
        frame is the model's guess, not the user's, and where the user's correction contradicts it the two
        conditioning frames pull the slices between them both ways; far slices are kept by the stopping rule.
        """
        if (mask is None) == (points is None):
            raise ValueError("give the corrected frame's mask or its points, not both")
        if not 0 <= frame < len(self):
            raise IndexError(f"corrected frame {frame} is outside 0..{len(self) - 1}")
        prompts = {k: v for k, v in (keep or {}).items() if k != frame}
        clicks = {}
        if mask is not None:
            prompts[frame] = mask
        else:
            clicks[frame] = {"coords": points["coords"], "labels": points["labels"],
                             "mask_logits": previous.logits[frame].float()}
        prev_start = previous.start_index
        anchors = []
        if keep_anchor and prev_start != frame and prev_start not in prompts and previous.scores[prev_start] > 0:
            prompts[prev_start] = previous.mask(prev_start).numpy()  # keep the original anchor
            anchors.append(prev_start)
        result = self.propagate(prompt, start_index=frame, mask_prompts=prompts, point_prompts=clicks,
                                stop_when_unchanged=(previous, unchanged_run), unchanged_iou=unchanged_iou,
                                anchors=anchors, progress=progress, cancel=cancel)
        result.extra["changed"] = [i for i in result.order
                                   if not torch.equal(result.logits[i] > 0, previous.logits[i] > 0)]
        return result


def masks_match(new: torch.Tensor, old: torch.Tensor, min_iou: float = 1.0) -> bool:
    """Whether two low-resolution logit maps give the same mask: IoU >= ``min_iou`` (two empty masks match)."""
    a, b = new.float() > 0, old.float() > 0
    if min_iou >= 1.0:
        return bool(torch.equal(a, b))
    union = int((a | b).sum())
    return union == 0 or int((a & b).sum()) / union >= min_iou
