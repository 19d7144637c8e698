"""Intensity normalisation and the resize/pad to the model input, with the exact inverse. numpy only at import.

Intensities become [0, 1] once per volume (so neighbouring slices stay comparable): a CT window (presets or a
user (centre, width)), or robust percentiles (0.5-99.5 %) for MRI and ultrasound; RGB frames are divided by 255.
Frames are resized keeping their *physical* aspect ratio (pixel spacing) so that the longer side fills S, then
padded at the bottom/right; :meth:`FrameTransform.logits_to_frame` crops the padding and resizes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

WINDOWS = {  # (centre, width) in HU
    "soft_tissue": (40.0, 400.0),
    "abdomen": (50.0, 350.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
Window = Union[str, tuple[float, float], None]


def normalize_intensity(array: np.ndarray, modality: str = "unknown", window: Window = None) -> np.ndarray:
    """Volume (z, y, x) or RGB (t, y, x, 3) -> float32 in [0, 1] with the same shape."""
    if array.ndim == 4:
        return np.clip(array.astype(np.float32) / (255.0 if array.max() > 1.0 else 1.0), 0.0, 1.0)
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; choose one of {', '.join(WINDOWS)} or give centre,width")
        window = WINDOWS[window]
    if window is None and modality == "CT":
        window = WINDOWS["soft_tissue"]
    data = array.astype(np.float32, copy=False)
    if window is not None:
        centre, width = float(window[0]), float(window[1])
        if width <= 0:
            raise ValueError(f"window width must be positive, got {width}")
        low, high = centre - width / 2, centre + width / 2
    else:
        sample = data[:: max(1, data.shape[0] // 32)].ravel()
        low, high = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
        if high <= low:
            low, high = float(data.min()), float(data.max())
    return np.clip((data - low) / max(high - low, 1e-6), 0.0, 1.0)


@dataclass(frozen=True)
class FrameTransform:
    """Frame (H, W) with pixel spacing (row, col) <-> model input S x S (content at the top-left)."""

    height: int
    width: int
    image_size: int
    row_spacing: float = 1.0
    col_spacing: float = 1.0

    @property
    def content_shape(self) -> tuple[int, int]:
        """(h, w) of the resized frame inside the S x S input."""
        ph, pw = self.height * self.row_spacing, self.width * self.col_spacing
        scale = self.image_size / max(ph, pw)
        return (max(1, min(self.image_size, round(ph * scale))), max(1, min(self.image_size, round(pw * scale))))

    def frames_to_model(self, frames: np.ndarray):
        """(b, H, W) or (b, H, W, 3) float in [0, 1] -> torch (b, 3, S, S)."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
        x = x[:, None].expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        h, w = self.content_shape
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def logits_to_frame(self, logits) -> np.ndarray:
        """(b, s, s) model-space logits at any resolution s -> (b, H, W) bool masks on the frame grid."""
        import torch
        import torch.nn.functional as F

        logits = torch.as_tensor(logits).float()
        s = logits.shape[-1]
        h, w = self.content_shape
        # resample the content box [0, h*s/S) x [0, w*s/S) of the logits onto the H x W frame pixel centres
        ys = (torch.arange(self.height) + 0.5) * (h * s / self.image_size) / self.height - 0.5
        xs = (torch.arange(self.width) + 0.5) * (w * s / self.image_size) / self.width - 0.5
        grid_y = ys / (s - 1) * 2 - 1 if s > 1 else torch.zeros_like(ys)
        grid_x = xs / (s - 1) * 2 - 1 if s > 1 else torch.zeros_like(xs)
        gy, gx = torch.meshgrid(grid_y, grid_x, indexing="ij")
        grid = torch.stack([gx, gy], -1)[None].expand(logits.shape[0], -1, -1, -1)
        out = F.grid_sample(logits[:, None].nan_to_num(neginf=-1024.0), grid, mode="bilinear",
                            padding_mode="border", align_corners=True)
        return (out[:, 0] > 0).numpy()

    def frame_points_to_model(self, points_rc: np.ndarray) -> np.ndarray:
        """(P, 2) frame (row, col) pixel positions -> (P, 2) model-space (x, y) as SAM-2 expects."""
        h, w = self.content_shape
        pts = np.asarray(points_rc, dtype=np.float32)
        return np.stack([(pts[:, 1] + 0.5) * w / self.width, (pts[:, 0] + 0.5) * h / self.height], axis=1)

    def frame_mask_to_model(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool -> (S, S) bool mask prompt (nearest)."""
        h, w = self.content_shape
        rows = np.minimum((np.arange(h) + 0.5) * self.height / h, self.height - 1).astype(int)
        cols = np.minimum((np.arange(w) + 0.5) * self.width / w, self.width - 1).astype(int)
        out = np.zeros((self.image_size, self.image_size), bool)
        out[:h, :w] = np.asarray(mask, bool)[np.ix_(rows, cols)]
        return out

