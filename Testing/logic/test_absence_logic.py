"""What the model knows, in the module Logic on real MRML (slicer-core; issue 17): a structure the bundled model
finds absent from a real CT lands as an empty segment with a message (its per-slice scores still in the QA table),
the present structure of the same run is not suppressed, and the panel's prompt echo gives each line's
familiarity (known / unknown, or text ignored for a model with untrained text modules)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

RIM = "the enhancing rim of the tumour"  # a BraTS (brain MRI) training prompt, absent from a thigh CT


@pytest.fixture()
def logic():
    import TextPromptSegLogic as tl

    logic = tl.TextPromptSegLogic()
    yield logic
    logic.shutdown()


@pytest.fixture(scope="module")
def sarcoma_ct(shared_data, tmp_path_factory):
    """STS_019 (validation) slices 15-30 (the tumour spans 16-30) and its tumour mask (z, y, x)."""
    folder = shared_data / "sts_sarcoma" / "STS_019"
    out = tmp_path_factory.mktemp("sts019") / "ct.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(folder / "CT_image.nii.gz"))[:, :, 15:31], str(out))
    return out, sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "CT_mask.nii.gz"))[:, :, 15:31]) > 0


def test_absent_structure_is_an_empty_segment_with_a_message(mrml, logic, sarcoma_ct):
    import TextPromptSegLogic as tl
    from TextPromptSegLogic.interactive import segment_mask_on_volume

    volume = mrml.volumes.AddArchetypeScalarVolume(str(sarcoma_ct[0]), "STS_019", 0, None)
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    absent, present = logic.process(volume, segmentation, [RIM, "a soft-tissue sarcoma"], device="cpu")

    assert absent.absent and "Enhancing tumour: not found in this volume" in absent.message  # the library name
    assert "add a box or points" in absent.message
    assert absent.slices_with_object == 0 and absent.volume_ml == 0.0
    segment = segmentation.GetSegmentation().GetSegment(absent.segment_id)
    assert segment is not None and tl.segment_prompt(segment) == RIM  # the segment exists, tagged, empty
    assert not segment_mask_on_volume(segmentation, absent.segment_id, volume).any()
    quality = logic.slice_quality(segmentation, absent.segment_id)  # the strip still shows its object scores
    assert np.nanmax(quality.scores) == pytest.approx(1.48, abs=0.05)  # measured; threshold 2.242

    assert not present.absent and present.message == ""
    mask = segment_mask_on_volume(segmentation, present.segment_id, volume)
    dice = 2.0 * (mask & sarcoma_ct[1]).sum() / (mask.sum() + sarcoma_ct[1].sum())
    assert dice > 0.5  # measured 0.553 through the CLI on the same crop


def test_prompt_echo_says_what_the_model_knows(logic, tiny_model, tmp_path):
    lines = logic.describe_prompts("the left atrium\nthe liver\n", "tgsam2-medium")
    assert len(lines) == 2
    assert "known: left atrium" in lines[0]
    assert "unknown to this model" in lines[1] and "add a box or points" in lines[1]

    from TextPromptSegLib.modeling.checkpoint import save_checkpoint

    untrained = save_checkpoint(tiny_model, tmp_path / "untrained")  # text adapters at zero, like SAM-2.1 weights
    (line,) = logic.describe_prompts("the left atrium", str(untrained))
    assert "text ignored" in line and "add a box or points" in line
