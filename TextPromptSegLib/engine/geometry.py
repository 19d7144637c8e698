"""Slicing a volume into frames along an anatomical axis, and the exact way back. No torch, no resampling.

The slicing axis is the voxel axis (i, j or k) whose direction is closest to the requested anatomical axis
(axial: S, coronal: A/P, sagittal: L/R), which makes oblique and flipped direction matrices work. Frames get a
canonical in-plane orientation by transposition and flips only (radiological display: axial rows run anterior
to posterior and columns patient right to left; coronal and sagittal rows run superior to inferior, columns
right to left and anterior to posterior), so every voxel maps to exactly one frame pixel and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AXES = ("axial", "coronal", "sagittal")
_NORMAL = {"axial": 2, "coronal": 1, "sagittal": 0}  # LPS component of the slice normal
# LPS direction that frame rows and columns should follow
_ROW_COL = {"axial": ((0, 1, 0), (1, 0, 0)), "coronal": ((0, 0, -1), (1, 0, 0)), "sagittal": ((0, 0, -1), (0, 1, 0))}


@dataclass(frozen=True)
class SliceGeometry:
    """How frames (N, H, W) relate to a volume array (z, y, x).

    slice_axis: the voxel axis sliced (0 = i/x, 1 = j/y, 2 = k/z); frame n is voxel index n along it.
    row_axis / col_axis: voxel axes running down rows / along columns; flip_rows / flip_cols: reversed.
    row_spacing / col_spacing: physical pixel size (mm) of a frame.
    """

    plane: str
    slice_axis: int
    row_axis: int
    col_axis: int
    flip_rows: bool
    flip_cols: bool
    row_spacing: float
    col_spacing: float

    @classmethod
    def for_volume(cls, direction: np.ndarray, spacing, axis: str | None = None) -> SliceGeometry:
        """Pick the slicing axis; ``axis=None`` slices the acquisition axis (largest spacing, k on ties)."""
        direction = np.asarray(direction, dtype=float).reshape(3, 3)
        spacing = np.asarray(spacing, dtype=float)
        if axis is None:
            slice_axis = 2 if spacing[2] >= spacing.max() - 1e-6 else int(np.argmax(spacing))
            plane = max(AXES, key=lambda p: abs(direction[_NORMAL[p], slice_axis]))
        elif axis in AXES:
            plane = axis
            slice_axis = int(np.argmax(np.abs(direction[_NORMAL[axis], :])))
        else:
            raise ValueError(f"axis must be one of {', '.join(AXES)} or None, not {axis!r}")
        a, b = [x for x in range(3) if x != slice_axis]
        row_dir, col_dir = (np.array(v, float) for v in _ROW_COL[plane])
        da, db = direction[:, a], direction[:, b]
        if abs(da @ row_dir) + abs(db @ col_dir) >= abs(db @ row_dir) + abs(da @ col_dir):
            row_axis, col_axis = a, b
        else:
            row_axis, col_axis = b, a
        flip_rows = bool(direction[:, row_axis] @ row_dir < 0)
        flip_cols = bool(direction[:, col_axis] @ col_dir < 0)
        return cls(plane, slice_axis, row_axis, col_axis, flip_rows, flip_cols,
                   float(spacing[row_axis]), float(spacing[col_axis]))

    @classmethod
    def for_sequence(cls, spacing) -> SliceGeometry:
        """A 2D+t sequence (t, y, x): frames are the time points as stored (rows j, columns i, no flips)."""
        spacing = np.asarray(spacing, dtype=float)
        return cls("frame", 2, 1, 0, False, False, float(spacing[1]), float(spacing[0]))

    def _numpy_axes(self) -> tuple[int, int, int]:
        # voxel axis v (0=i) is numpy axis 2 - v in a (z, y, x) array
        return 2 - self.slice_axis, 2 - self.row_axis, 2 - self.col_axis

    def num_frames(self, shape_zyx) -> int:
        return int(shape_zyx[2 - self.slice_axis])

    def voxel_to_frame(self, ijk, shape_zyx) -> tuple[float, float, float]:
        """Continuous voxel index (i, j, k) (voxel centres at integers) -> (n, row, col) in frame space.

        ``n`` is the index along the slicing axis (round it to pick the slice); row and col follow the same
        transposition and flips as :meth:`to_frames`, so ``to_frames(a)[n, row, col] == a[k, j, i]``.
        """
        ijk = np.asarray(ijk, dtype=float)[:3]
        dims = (shape_zyx[2], shape_zyx[1], shape_zyx[0])  # sizes along i, j, k
        row, col = ijk[self.row_axis], ijk[self.col_axis]
        if self.flip_rows:
            row = dims[self.row_axis] - 1 - row
        if self.flip_cols:
            col = dims[self.col_axis] - 1 - col
        return float(ijk[self.slice_axis]), float(row), float(col)

    def frame_to_voxel(self, n: float, row: float, col: float, shape_zyx) -> np.ndarray:
        """(n, row, col) in frame space -> continuous voxel index (i, j, k): the inverse of :meth:`voxel_to_frame`."""
        dims = (shape_zyx[2], shape_zyx[1], shape_zyx[0])
        if self.flip_rows:
            row = dims[self.row_axis] - 1 - row
        if self.flip_cols:
            col = dims[self.col_axis] - 1 - col
        ijk = np.zeros(3)
        ijk[self.slice_axis], ijk[self.row_axis], ijk[self.col_axis] = n, row, col
        return ijk

    def to_frames(self, array: np.ndarray) -> np.ndarray:
        """(z, y, x[, c]) -> (N, H, W[, c]) view (no copy)."""
        extra = tuple(range(3, array.ndim))
        frames = np.transpose(array, (*self._numpy_axes(), *extra))
        if self.flip_rows:
            frames = frames[:, ::-1]
        if self.flip_cols:
            frames = frames[:, :, ::-1]
        return frames

    def from_frames(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W) -> (z, y, x): the exact inverse of :meth:`to_frames`."""
        if self.flip_rows:
            frames = frames[:, ::-1]
        if self.flip_cols:
            frames = frames[:, :, ::-1]
        inverse = np.argsort(self._numpy_axes())
        return np.ascontiguousarray(np.transpose(frames, inverse))
