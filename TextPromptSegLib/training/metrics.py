"""Segmentation metrics on boolean volumes (z, y, x) with physical spacing (x, y, z). No torch.

Conventions for empty masks: both empty -> Dice 1, IoU 1, HD95 0; exactly one empty -> Dice 0, IoU 0, HD95 inf.
"""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(p, t).sum() / total)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Distances (mm) from the surface voxels of ``a`` to the surface of ``b``."""
    import SimpleITK as sitk

    def image(mask):
        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        img.SetSpacing(tuple(float(s) for s in spacing))
        return img

    surface_a = sitk.GetArrayFromImage(sitk.LabelContour(image(a), fullyConnected=False)) > 0
    distance_b = sitk.SignedMaurerDistanceMap(sitk.LabelContour(image(b), fullyConnected=False),
                                              insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.abs(sitk.GetArrayFromImage(distance_b))[surface_a]


def hd95(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """95th percentile of the symmetric surface distances (mm)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("inf")
    distances = np.concatenate([_surface_distances(p, t, spacing), _surface_distances(t, p, spacing)])
    return float(np.percentile(distances, 95))
