"""Geometry (issue 7, must-show 1; issue 16): masks made in frame space land on exactly the right voxels, for
anisotropic spacing, oblique and flipped directions, every axis; and frames are shown as Slicer shows its views,
checked against an independent truth: markers placed in physical (LPS) space, turned into voxels by SimpleITK."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from TextPromptSegLib.engine.geometry import SliceGeometry
from TextPromptSegLib.engine.preprocess import FrameTransform
from TextPromptSegLib.io.volumes import Volume


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped-x": np.diag([-1.0, 1.0, 1.0]),
    "flipped-yz": np.diag([1.0, -1.0, -1.0]),
    "permuted": np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]),  # k along x: a sagittal acquisition
    "oblique": _rotation(0.25, -0.2, 0.3),
    "oblique-flipped": _rotation(0.1, 0.3, -0.2) @ np.diag([1.0, -1.0, 1.0]),
}


def _volume(direction: np.ndarray) -> Volume:
    shape = (12, 20, 24)  # (z, y, x)
    return Volume(np.zeros(shape, np.int16), spacing=(0.7, 0.9, 3.0), origin=(-10.0, 5.0, 30.0), direction=direction)


@pytest.mark.parametrize("name,axis", list(itertools.product(DIRECTIONS, [None, "axial", "coronal", "sagittal"])))
def test_frame_mask_lands_on_the_physical_ground_truth(name, axis):
    volume = _volume(DIRECTIONS[name])
    geometry = SliceGeometry.for_volume(volume.direction, volume.spacing, axis)
    image = volume.to_sitk()
    # ground truth: a few physical points, turned into voxels by SimpleITK itself
    rng = np.random.default_rng(0)
    truth = np.zeros(volume.shape, bool)
    ijk = [tuple(int(rng.integers(0, s)) for s in (24, 20, 12)) for _ in range(6)]
    points = [image.TransformIndexToPhysicalPoint(p) for p in ijk]
    for point in points:
        i, j, k = image.TransformPhysicalPointToIndex(point)
        truth[k, j, i] = True
    frames = geometry.to_frames(truth)
    assert frames.shape[0] == geometry.num_frames(volume.shape)
    # the "model" answers in frame space; mapping back must hit exactly the same voxels
    assert np.array_equal(geometry.from_frames(np.ascontiguousarray(frames)), truth)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_axial_frames_are_in_radiological_orientation(name):
    volume = _volume(DIRECTIONS[name])
    geometry = SliceGeometry.for_volume(volume.direction, volume.spacing, "axial")
    d = volume.direction
    # the slicing axis is the voxel axis most aligned with S (LPS z)
    assert geometry.slice_axis == int(np.argmax(np.abs(d[2])))
    # rows run towards posterior (+y in LPS), columns towards patient left (+x in LPS)
    row_dir = d[:, geometry.row_axis] * (-1 if geometry.flip_rows else 1)
    col_dir = d[:, geometry.col_axis] * (-1 if geometry.flip_cols else 1)
    assert row_dir[1] > 0 and col_dir[0] > 0


def test_default_axis_is_the_acquisition_axis():
    geometry = SliceGeometry.for_volume(np.eye(3), (0.7, 0.9, 3.0), None)
    assert geometry.slice_axis == 2 and geometry.plane == "axial"
    geometry = SliceGeometry.for_volume(DIRECTIONS["permuted"], (0.7, 0.9, 3.0), None)
    assert geometry.plane == "sagittal"
    with pytest.raises(ValueError, match="axis"):
        SliceGeometry.for_volume(np.eye(3), (1, 1, 1), "oblique")


@pytest.mark.parametrize("h,w,rs,cs", [(20, 24, 0.9, 0.7), (64, 32, 1.0, 1.0), (30, 30, 0.5, 2.0)])
def test_frame_transform_round_trip(h, w, rs, cs):
    transform = FrameTransform(h, w, 128, rs, cs)
    mask = np.zeros((1, h, w), bool)
    mask[0, h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = True
    model_space = transform.frames_to_model(mask.astype(np.float32))[:, 0]  # (1, S, S)
    logits = (model_space - 0.5) * 20
    assert np.array_equal(transform.logits_to_frame(logits), mask)
    # the physical aspect ratio is kept: content box proportional to physical size
    ch, cw = transform.content_shape
    assert abs(ch / cw - (h * rs) / (w * cs)) < 0.05
    # a mask prompt drawn on the frame comes back the same way
    assert np.array_equal(transform.logits_to_frame((transform.frame_mask_to_model(mask[0])[None] - 0.5) * 20), mask)


def test_sitk_round_trip_keeps_geometry(tmp_path):
    volume = _volume(DIRECTIONS["oblique-flipped"])
    volume.array[3, 4, 5] = 7
    path = tmp_path / "v.nrrd"
    sitk.WriteImage(volume.to_sitk(), str(path))
    back = Volume.from_sitk(sitk.ReadImage(str(path)))
    assert np.allclose(back.direction, volume.direction) and np.allclose(back.spacing, volume.spacing)
    assert np.allclose(back.origin, volume.origin) and back.array[3, 4, 5] == 7


# Slicer's views (vtkMRMLSliceNode::SetOrientationToAxial/Coronal/Sagittal): screen right is patient left on axial
# and coronal views and posterior on sagittal ones; screen up is anterior on axial views and superior on coronal and
# sagittal ones. As LPS unit vectors: (screen right, screen up). Frame rows grow downwards, columns to the right.
SCREEN = {"axial": ((1, 0, 0), (0, -1, 0)), "coronal": ((1, 0, 0), (0, 0, 1)), "sagittal": ((0, 1, 0), (0, 0, 1))}


def _marker_frame_positions(name: str, axis: str) -> tuple[dict, SliceGeometry]:
    """Six markers 6 mm from the volume's centre along +-L, +-P, +-S (LPS), each one voxel found by SimpleITK:
    {LPS unit vector: (frame, row, col) of the marker in the frames}."""
    volume = _volume(DIRECTIONS[name])
    image = volume.to_sitk()
    geometry = SliceGeometry.for_volume(volume.direction, volume.spacing, axis)
    size = image.GetSize()
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))
    positions = {}
    for lps_axis in range(3):
        for sign in (1, -1):
            unit = tuple(sign * float(lps_axis == a) for a in range(3))
            index = image.TransformPhysicalPointToIndex(tuple(centre + 6.0 * np.array(unit)))
            assert all(0 <= index[a] < size[a] for a in range(3)), f"marker {unit} outside the volume"
            mask = np.zeros(volume.shape, bool)
            mask[index[2], index[1], index[0]] = True
            n, row, col = np.argwhere(geometry.to_frames(mask))[0]
            positions[unit] = (int(n), int(row), int(col))
    return positions, geometry


@pytest.mark.parametrize("name,axis", list(itertools.product(DIRECTIONS, ["axial", "coronal", "sagittal"])))
def test_frames_are_oriented_as_slicer_shows_the_view(name, axis):
    """Of two markers on either side of the centre along the screen's right (up) direction, the one on the right
    (up) side lands in a larger column (smaller row); along the slice normal they land in different frames."""
    positions, geometry = _marker_frame_positions(name, axis)
    right, up = SCREEN[axis]
    opposite = {u: tuple(-x for x in u) for u in positions}
    normal = tuple(float(np.isclose(np.abs(np.cross(right, up))[a], 1)) for a in range(3))
    assert positions[right][2] > positions[opposite[right]][2], f"{axis}: patient side on the screen's right"
    assert positions[up][1] < positions[opposite[up]][1], f"{axis}: upward direction at the top of the frame"
    assert positions[normal][0] != positions[opposite[normal]][0]
