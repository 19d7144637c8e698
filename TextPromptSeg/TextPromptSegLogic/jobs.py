"""What runs on the worker thread and what the main thread keeps about it: jobs, outcomes, engine sessions, per
segment state, the undo stack, and the worker itself. No Qt, no torch."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


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
    whose digest changed was edited by the user and is kept too); quality: per-slice score and area; channels: the
    extra input volumes the run read with the input (refinements read them again).
    """

    key: tuple
    prompt: str
    axis: Optional[str]
    propagation: Any
    corrections: dict[int, np.ndarray]
    digests: list[bytes]
    quality: Any
    channels: tuple[str, ...] = ()  # IDs of the extra input volume nodes of a composite (multi-sequence) run


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


class UndoStack:
    """The Logic's undo steps, newest last, at most ``limit`` of them (each holds labelmap copies of the segments
    it replaced: an unbounded stack would keep every run's volumes alive)."""

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self._entries: list[Any] = []

    def append(self, entry: Any) -> None:
        self._entries.append(entry)
        del self._entries[: max(0, len(self._entries) - max(1, self.limit))]

    def pop(self) -> Any:
        return self._entries.pop()

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self):
        return iter(self._entries)


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

