"""TPP in the engine and the CLI (issue 6, must-show 3): TPP alone and the TPP -> SAM-2 pipeline run end to end on
a real volume from ../shared/data through ``textpromptseg segment``; in the pipeline, TPP's start-slice mask is the
conditioning mask of the TGSAM-2 propagation (kept exactly on that slice)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mrml import make_scene, read_seg_nrrd  # noqa: E402

from TextPromptSegLib.cli import main  # noqa: E402
from TextPromptSegLib.engine.pipeline import SegmentRequest, segment_volume  # noqa: E402
from TextPromptSegLib.engine.tpp_engine import make_propagator  # noqa: E402
from TextPromptSegLib.io.volumes import read_volume  # noqa: E402
from TextPromptSegLib.modeling.checkpoint import save_checkpoint  # noqa: E402
from TextPromptSegLib.modeling.tpp import build_tpp, save_tpp, tpp_config  # noqa: E402
from TextPromptSegLib.prompts import prompt_set  # noqa: E402


@pytest.fixture(scope="module")
def tpp_checkpoint(tiny_text_encoder_dir, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = tpp_config("tiny", text={"model_id_or_path": str(tiny_text_encoder_dir), "max_length": 16})
    folder = tmp_path_factory.mktemp("tpp") / "tpp"
    save_tpp(build_tpp(cfg), folder)
    return folder


@pytest.fixture(scope="module")
def la_volume(shared_data, tmp_path_factory) -> Path:
    """A real LA2018 MRI, 12 slices around the atrium."""
    case = sorted((shared_data / "la2018" / "train").iterdir())[0]
    path = tmp_path_factory.mktemp("la") / "la.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(case / "image.nii.gz"))[:, :, 40:52], str(path))
    return path


def test_tpp_prompts_expand_a_library_structure():
    assert prompt_set("the spleen; a bean-shaped organ") == ["the spleen", "a bean-shaped organ"]
    expanded = prompt_set("spleen")
    assert expanded[0] == "spleen" and 2 <= len(expanded) <= 3
    assert prompt_set("a strange thing nobody catalogued") == ["a strange thing nobody catalogued"]
    with pytest.raises(ValueError, match="1 to 3 prompts"):
        prompt_set("a; b; c; d")


def test_tpp_checkpoint_round_trip(tpp_checkpoint):
    a, b = build_tpp(tpp_checkpoint), build_tpp(tpp_checkpoint)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_cli_tpp_alone_and_tpp_then_sam2(la_volume, tpp_checkpoint, tiny_model, tmp_path, capsys):
    tgsam2 = save_checkpoint(tiny_model, tmp_path / "tgsam2")
    for args, out in (([], tmp_path / "tpp.seg.nrrd"), (["--first-mask-model", str(tpp_checkpoint)],
                                                         tmp_path / "pipeline.seg.nrrd")):
        model = str(tpp_checkpoint) if not args else str(tgsam2)
        code = main(["segment", str(la_volume), "--prompt", "the left atrium", "-o", str(out), "--model", model,
                     "--device", "cpu", *args])
        assert code == 0, capsys.readouterr().err
        assert out.is_file()
        segmentation = read_seg_nrrd(make_scene(), out).GetSegmentation()
        assert segmentation.GetNumberOfSegments() == 1
        assert segmentation.GetNthSegment(0).GetName() == "the left atrium"
        assert sitk.ReadImage(str(out)).GetSize() == sitk.ReadImage(str(la_volume)).GetSize()


def test_pipeline_conditions_sam2_on_the_tpp_mask(la_volume, tpp_checkpoint, tiny_model):
    tpp = build_tpp(tpp_checkpoint)
    with torch.no_grad():  # make TPP's mask clearly non-empty so that the conditioning is visible
        tpp.controller[-1].bias.zero_()
        tpp.controller[-1].bias[-1] = 5.0
        tpp.controller[-1].weight.mul_(0.01)
    propagator = make_propagator(tiny_model, "cpu", first_mask_model=tpp)
    result = segment_volume(read_volume(la_volume), [SegmentRequest("the left atrium")], propagator=propagator,
                            start_slice=5)
    propagation = result.segments[0].propagation
    start_mask = propagation.extra["tpp_start_mask"]
    assert propagation.start_index == 5 and start_mask.float().mean() > 0.5
    np.testing.assert_array_equal(propagation.masks()[5].numpy(), start_mask.numpy())
    assert len(propagation.order) == 12  # then propagated through every slice


def test_the_located_slice_runs_once(la_volume, tpp_checkpoint, tiny_model):
    """The coarse pass's first-image output on the start slice is reused: by the TPP propagation in both directions
    and by the TPP -> SAM-2 pipeline's first mask (no slice is run twice as a first image)."""
    tpp = build_tpp(tpp_checkpoint)
    first_images: list[int] = []
    real_step = tpp.step

    def counting_step(image, words, words_mask, state=None, levels=None):
        if state is None:
            first_images.append(1)
        return real_step(image, words, words_mask, state, levels)

    tpp.step = counting_step
    volume = read_volume(la_volume)
    alone = segment_volume(volume, [SegmentRequest("the left atrium")], propagator=make_propagator(tpp, "cpu"))
    assert len(alone.segments[0].propagation.order) == 12
    assert len(first_images) == 12  # 12 slices: each is a coarse-pass candidate once; the start slice is not rerun
    first_images.clear()
    segment_volume(volume, [SegmentRequest("the left atrium")],
                   propagator=make_propagator(tiny_model, "cpu", first_mask_model=tpp))
    assert len(first_images) == 12
