"""Device choice (cuda > mps > cpu), inference precision, and the autocast context used for inference."""

from __future__ import annotations

import contextlib
from typing import Optional


class DeviceError(ValueError):
    """The requested device is not available."""


def pick_device(preference: Optional[str] = None):
    """``None``/"auto" picks cuda, then mps, then cpu; "cuda", "cuda:1", "mps", "cpu" are checked."""
    import torch

    if preference in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but no CUDA GPU is available; use --device cpu or auto")
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
