"""Reading every supported input: DICOM series folders, frame folders (2D+t), npz, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from TextPromptSegLib.io.volumes import InputError, read_volume


def test_dicom_series_keeps_voxels_and_geometry(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(5, 24, 20)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((-20.0, 10.0, 50.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        slice_image = image[:, :, k]
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.3"), ("0020|000e", "1.2.3.4"),
                           ("0020|0013", str(k + 1)), ("0028|0030", "0.7\\0.8"), ("0018|0050", "2.5"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"{k:03d}.dcm"))
        writer.Execute(slice_image)
    volume = read_volume(tmp_path)
    assert np.array_equal(volume.array, array)
    assert np.allclose(volume.spacing, (0.8, 0.7, 2.5)) and np.allclose(volume.origin, (-20.0, 10.0, 50.0))
    assert volume.modality == "CT"


def test_frame_folder_is_a_sequence(tmp_path):
    frames = np.zeros((4, 32, 40, 3), np.uint8)
    for t in range(4):
        frames[t, 5 + t : 15 + t, 10:20] = (200, 40, 30)  # a reddish square drifting down
        Image.fromarray(frames[t]).save(tmp_path / f"frame_{t:03d}.png")
    volume = read_volume(tmp_path)
    assert volume.is_rgb and volume.array.shape == (4, 32, 40, 3) and volume.modality == "endoscopy"
    assert np.array_equal(volume.array, frames)


def test_npz_with_geometry(shared_data):
    path = sorted((shared_data / "recist_ct").glob("*.npz"))[0]
    volume = read_volume(path)
    with np.load(path) as data:
        assert np.array_equal(volume.array, data["imgs"])
        assert np.allclose(volume.spacing, data["spacing"])


def test_unreadable_and_2d_inputs(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read"):
        read_volume(bad)
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(tmp_path / "slice.nrrd"))
    with pytest.raises(InputError, match="2D image"):
        read_volume(tmp_path / "slice.nrrd")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="no DICOM"):
        read_volume(tmp_path / "empty_dir")
