"""Device choice (cuda > mps > cpu) and the autocast context used for inference."""

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


def autocast(device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU/MPS stay in float32 for exactness)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
