"""Device choice (cuda > mps > cpu), inference precision, and the autocast context used for inference."""

from __future__ import annotations

import contextlib
from typing import Optional


class DeviceError(ValueError):
    """The requested device is not available."""


DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


def pick_device(preference: Optional[str] = None):
    """``None``/"auto" picks cuda, then mps, then cpu; "cuda", "cuda:1", "mps", "cpu" are checked. Raises
    DeviceError for any other name and for a device this machine does not have."""
    import torch

    if preference in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise DeviceError(f"unknown device {preference!r}; use {DEVICE_NAMES}") from exc
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {preference!r} is not supported; use {DEVICE_NAMES}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but no CUDA GPU is available; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{preference} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                          f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("Apple MPS was requested but is not available on this machine")
    return device


PRECISIONS = ("auto", "fp32", "bf16")


def _device_type(device) -> str:
    """"cuda", "cpu", "mps" for a torch.device or a device string such as "cuda:1"."""
    return getattr(device, "type", str(device).split(":")[0])


def resolve_precision(device, precision: Optional[str] = "auto") -> str:
    """"fp32" or "bf16". "auto": bf16 on CUDA (sam2's recommended inference setting), fp32 elsewhere (bit-exact
    with sam2's float32 predictor). "bf16" on a CPU with native bf16 runs the image encoder about 2x faster
    (benchmarks/RESULTS.md) with masks within bf16 rounding of the float32 ones."""
    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if _device_type(device) == "cuda" else "fp32"
    return precision


def autocast(device, precision: Optional[str] = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast when :func:`resolve_precision` says bf16 (CUDA by default; CPU when asked); else a no-op."""
    import torch

    if resolve_precision(device, precision) == "bf16":
        return torch.autocast("cuda" if _device_type(device) == "cuda" else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


_HOST_MALLOC_KEPT = False


def keep_freed_host_memory() -> bool:
    """Make this process's malloc (glibc on Linux) keep freed memory for the next tensors instead of returning it.

    glibc maps every allocation above 32 MB with a fresh ``mmap`` and unmaps it when freed, so each large tensor
    of a CPU forward pass (Hiera's activations at 1024 px are 25-100 MB) starts on untouched pages that the kernel
    faults in and zeroes one by one. With mmap off and trimming effectively off, those tensors reuse the heap's
    pages: the Hiera-S encoder at 1024 px runs 3.2 -> 2.3 s per frame on the project's 2-core CPU
    (benchmarks/RESULTS.md). Same arithmetic, same output; the cost is that the process keeps its peak heap until it
    exits. Applied once per process by the command-line tool (never inside Slicer, whose memory is the user's);
    ``TEXTPROMPTSEG_MALLOC=system`` leaves the allocator alone. Returns whether the setting is in effect."""
    global _HOST_MALLOC_KEPT
    import ctypes
    import os
    import sys

    if _HOST_MALLOC_KEPT:
        return True
    if os.environ.get("TEXTPROMPTSEG_MALLOC", "keep") == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        glibc = hasattr(libc, "gnu_get_libc_version")  # musl and others have no mallopt with these meanings
    except (OSError, AttributeError):
        return False
    if not glibc:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    _HOST_MALLOC_KEPT = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
    return _HOST_MALLOC_KEPT
