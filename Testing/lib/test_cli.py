"""The CLI end to end on a real volume (issue 7, must-show 5): the .seg.nrrd it writes loads in slicer-core with
the right segment name, colour, prompt tag and geometry; bad input gives one clear message and no file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mrml import make_scene, read_seg_nrrd  # noqa: E402

from TextPromptSegLib.cli import main  # noqa: E402
from TextPromptSegLib.modeling.checkpoint import save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def small_ct(shared_data, tmp_path_factory) -> Path:
    """A real sarcoma CT cropped to 10 slices, written with an oblique, flipped direction matrix."""
    image = sitk.ReadImage(str(shared_data / "sts_sarcoma" / "STS_008" / "CT_image.nii.gz"))[:, :, 20:30]
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    path = tmp_path_factory.mktemp("ct") / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def test_segment_writes_a_seg_nrrd_that_slicer_core_loads(small_ct, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "result.seg.nrrd"
    code = main(["segment", str(small_ct), "--prompt", "a soft-tissue sarcoma", "--name", "Sarcoma", "-o", str(out),
                 "--model", str(tiny_checkpoint), "--start-slice", "4", "--overlay", str(tmp_path / "o.png")])
    assert code == 0 and out.is_file() and (tmp_path / "o.png").is_file()
    assert "Sarcoma:" in capsys.readouterr().out

    env = make_scene()
    node = read_seg_nrrd(env, out)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == "Sarcoma"
    import vtk

    tag = vtk.reference("")
    assert segment.GetTag("TextPromptSeg.Prompt", tag) and str(tag) == "a soft-tissue sarcoma"
    # geometry: the labelmap's image-to-world matrix equals the input's IJK->RAS
    written = sitk.ReadImage(str(out))
    source = sitk.ReadImage(str(small_ct))
    assert np.allclose(written.GetDirection(), source.GetDirection())
    assert np.allclose(written.GetOrigin(), source.GetOrigin()) and written.GetSize() == source.GetSize()


def test_slice_range_and_direction(small_ct, tmp_path):
    """With the bundled model (which finds this tumour), only slices 5-7 are segmented: forward from slice 5 and
    no further than the end of the range 3:7."""
    out = tmp_path / "range.nii.gz"
    assert main(["segment", str(small_ct), "-p", "a soft-tissue sarcoma", "-o", str(out), "--slice-range", "3:7",
                 "--start-slice", "5", "--direction", "forward"]) == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))  # (z, y, x); the acquisition axis is z here
    assert all(labels[k].any() for k in (5, 6, 7))
    assert not labels[[0, 1, 2, 3, 4, 8, 9]].any()  # before the start slice (forward only) and after the range


@pytest.mark.parametrize("args,message", [
    (["segment", "missing.nii.gz", "-p", "x", "-o", "{tmp}/o.seg.nrrd"], "not found"),
    (["segment", "{ct}", "-p", " ", "-o", "{tmp}/o.seg.nrrd"], "non-empty"),
    (["segment", "{ct}", "-p", "spleen", "-o", "{tmp}/o.txt"], "output must end"),
    (["segment", "{ct}", "-p", "spleen", "-o", "{tmp}/o.seg.nrrd", "--model", "{tmp}/nowhere"], "unknown model"),
    (["segment", "{ct}", "-p", "spleen", "-o", "{tmp}/o.seg.nrrd", "--model", "{corrupt}"], "corrupt"),
    (["segment", "{png}", "-p", "spleen", "-o", "{tmp}/o.seg.nrrd"], "2D image"),
    (["segment", "{ct}", "-p", "spleen", "-o", "{tmp}/o.seg.nrrd", "--device", "cuda"], "CUDA"),
    (["segment", "{ct}", "-p", "spleen", "-o", "{tmp}/o.seg.nrrd", "--slice-range", "3-8"], "FIRST:LAST"),
    (["segment", "{ct}", "-p", "spleen", "-o", "{tmp}/o.seg.nrrd", "--slice-range", "8:30"], "slice range"),
])
def test_bad_input_gives_one_clear_message_and_no_file(args, message, small_ct, tiny_checkpoint, tmp_path, capsys):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"not a checkpoint")
    png = tmp_path / "slice.png"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkUInt8), str(png))
    argv = [a.format(tmp=tmp_path, ct=small_ct, corrupt=corrupt, png=png) for a in args]
    if "--device" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA: the unavailable-device error cannot happen")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".o.*"))
