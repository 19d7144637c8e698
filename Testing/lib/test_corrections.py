"""Fine-tuning from corrections (issue 4): corrected .seg.nrrd files beside their images become a training pack,
with prompts from the segments' TextPromptSeg.Prompt tags and masks resampled exactly onto the image grid (also
for segmentations cropped to their extent, as Slicer saves them, and for overlapping segments in layers)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from TextPromptSegLib.cli import main
from TextPromptSegLib.io.volumes import Volume
from TextPromptSegLib.io.writers import SegmentSpec, write_seg_nrrd
from TextPromptSegLib.training.corrections import corrections_volumes
from TextPromptSegLib.training.data import load_pack


def _volume():
    rng = np.random.default_rng(0)
    array = rng.normal(100, 20, (10, 30, 40)).astype(np.float32)
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # rotated in-plane
    return Volume(array, (0.8, 0.9, 2.5), (10.0, -5.0, 3.0), direction, "MR")


def test_corrections_folder_becomes_a_training_pack(tmp_path, capsys):
    volume = _volume()
    sitk.WriteImage(volume.to_sitk(), str(tmp_path / "case1.nrrd"))
    liver = np.zeros(volume.shape, bool)
    liver[3:7, 5:15, 8:20] = True
    lesion = np.zeros(volume.shape, bool)
    lesion[4:6, 8:12, 10:14] = True  # inside the liver: overlapping segments -> one layer each
    write_seg_nrrd(volume, [SegmentSpec(liver, "Liver", (0.8, 0.4, 0.3), "the liver, corrected"),
                            SegmentSpec(lesion, "Lesion", (1, 1, 0), "a hypodense lesion | in segment 8")],
                   tmp_path / "case1.seg.nrrd")

    # a second case saved the way Slicer does it: one shared layer cropped to the segments' extent
    sitk.WriteImage(volume.to_sitk(), str(tmp_path / "case2.nii.gz"))
    kidney = np.zeros(volume.shape, bool)
    kidney[2:5, 20:26, 25:33] = True
    full = volume.to_sitk(kidney.astype(np.uint8) * 3)
    cropped = sitk.RegionOfInterest(full, [33 - 25 + 2, 26 - 20 + 2, 3], [25 - 1, 20 - 1, 2])  # size, index
    cropped = sitk.Cast(cropped, sitk.sitkUInt8)
    for key, value in {"Segment0_Name": "Kidney", "Segment0_LabelValue": "3", "Segment0_Layer": "0",
                       "Segment0_Tags": "TextPromptSeg.Prompt:the left kidney|TerminologyEntry:x|"}.items():
        cropped.SetMetaData(key, value)
    sitk.WriteImage(cropped, str(tmp_path / "case2.seg.nrrd"))

    first, second = corrections_volumes(tmp_path)
    assert list(first.masks) == ["Liver", "Lesion"]
    assert first.prompts == {"Liver": ["the liver, corrected", "Liver"],
                             "Lesion": ["a hypodense lesion / in segment 8", "Lesion"]}
    assert first.masks["Liver"].sum() == liver.sum() and first.masks["Lesion"].sum() == lesion.sum()
    assert second.prompts == {"Kidney": ["the left kidney", "Kidney"]}
    assert second.masks["Kidney"].sum() == kidney.sum()  # the cropped grid landed back on the right voxels

    assert main(["corrections", str(tmp_path), "-o", str(tmp_path / "pack.npz")]) == 0
    assert "Liver ('the liver, corrected')" in capsys.readouterr().out
    packed = load_pack(tmp_path / "pack.npz")
    assert [v.prompts for v in packed] == [first.prompts, second.prompts]
    np.testing.assert_array_equal(packed[1].masks["Kidney"], second.masks["Kidney"])
