"""Progress reporting and cancellation shared by the engine, the CLI and the Slicer Logic (no torch)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


class Cancelled(Exception):
    """Raised inside the engine when the user cancelled; callers leave their outputs untouched."""


class CancelToken:
    """Thread-safe flag set by the GUI thread and checked by the worker before every slice."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def is_cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


@dataclass(frozen=True)
class ProgressEvent:
    """One step of work: ``phase`` ("encode", "locate", "propagate", "write"), ``done`` of ``total`` steps,
    the slice just finished (``slice_index``, or -1), the estimated seconds left, and a human-readable line.

    ``mask`` is set only when a refinement changed that slice, so a GUI can draw it at once: from
    ``Session.propagate`` it is the slice's low-resolution logits (S/4, S/4) float16 torch tensor; the pipeline
    (``refine_volume``) relays it as the (H, W) bool numpy mask on the frame grid of the slicing axis."""

    phase: str
    done: int
    total: int
    slice_index: int = -1
    eta_seconds: Optional[float] = None
    message: str = ""
    mask: Any = field(default=None, compare=False, repr=False)


ProgressCallback = Callable[[ProgressEvent], None]


class ProgressTracker:
    """Turns step counts into ProgressEvents with an ETA from the mean time per step so far."""

    def __init__(self, callback: Optional[ProgressCallback], phase: str, total: int, label: str = "") -> None:
        self.callback, self.phase, self.total, self.label = callback, phase, max(total, 1), label
        self.done = 0
        self._start = time.perf_counter()

    def step(self, slice_index: int = -1, count: int = 1, mask: Any = None) -> None:
        self.done += count
        if self.callback is None:
            return
        elapsed = time.perf_counter() - self._start
        eta = elapsed / self.done * (self.total - self.done) if self.done else None
        where = f", slice {slice_index}" if slice_index >= 0 else ""
        message = f"{self.label}{self.phase} {self.done}/{self.total}{where}"
        self.callback(ProgressEvent(self.phase, self.done, self.total, slice_index, eta, message, mask))
