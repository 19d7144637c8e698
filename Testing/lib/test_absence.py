"""Absent structures (issue 17) on real data with the bundled model: a brain-tumour sub-region prompt ("the
enhancing rim of the tumour", a BraTS training prompt) on a thigh sarcoma CT gives an empty segment and a message
(library and CLI) instead of the blobs the model draws there without the presence rule, its per-slice object scores
are kept, present structures (the sarcoma on the same CT, the atrium on an LGE-MRI, a tumour on a crop of a
training CT) are not suppressed, and the bundled threshold is the one the calibration script derives from the
stored validation scores. Crops of 16 slices keep each run at about 2 s on a CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from TextPromptSegLib.cli import main
from TextPromptSegLib.engine.pipeline import SegmentRequest, segment_volume
from TextPromptSegLib.familiarity import PresenceRule
from TextPromptSegLib.io.volumes import read_volume
from TextPromptSegLib.resources import resource_path

REPO = Path(__file__).resolve().parents[2]
SCORES = REPO / "Testing" / "fixtures" / "presence_scores_tgsam2_medium.json"
RIM = "the enhancing rim of the tumour"  # a BraTS (brain MRI) training prompt


@pytest.fixture(scope="module")
def medium():
    from TextPromptSegLib.registry import load_model

    return load_model("tgsam2-medium")


@pytest.fixture(scope="module")
def sarcoma_ct(shared_data, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """STS_019 (a validation case) cut to slices 15-30 (the tumour spans 16-30), and its tumour mask (z, y, x)."""
    folder = shared_data / "sts_sarcoma" / "STS_019"
    out = tmp_path_factory.mktemp("sts019")
    image, mask = (sitk.ReadImage(str(folder / f))[:, :, 15:31] for f in ("CT_image.nii.gz", "CT_mask.nii.gz"))
    sitk.WriteImage(image, str(out / "ct.nii.gz"))
    return out / "ct.nii.gz", sitk.GetArrayFromImage(mask) > 0


@pytest.fixture(scope="module")
def atrium_mri(shared_data, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The first LA2018 validation case cut to the 16 central slices of its atrium, and the atrium mask."""
    from TextPromptSegLib.training.data import default_splits

    folder = shared_data / "la2018" / "train" / default_splits(shared_data)["la2018"]["val"][0]
    label = sitk.ReadImage(str(folder / "label.nii.gz"))
    slices = np.flatnonzero(sitk.GetArrayFromImage(label).any((1, 2)))
    centre = int(slices[len(slices) // 2])
    out = tmp_path_factory.mktemp("la")
    image = sitk.ReadImage(str(folder / "image.nii.gz"))[:, :, centre - 8 : centre + 8]
    sitk.WriteImage(image, str(out / "mri.nii.gz"))
    return out / "mri.nii.gz", sitk.GetArrayFromImage(label[:, :, centre - 8 : centre + 8]) > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / max(1, int(a.sum() + b.sum()))


def test_absent_structure_gives_an_empty_segment_and_keeps_its_scores(medium, sarcoma_ct):
    volume = read_volume(sarcoma_ct[0])
    request = SegmentRequest(RIM)
    judged = segment_volume(volume, [request], medium).segments[0]
    raw = segment_volume(volume, [request], medium, presence=None).segments[0]
    rule = PresenceRule.for_model(medium)
    assert rule == PresenceRule(2.242, 1)  # the bundled calibration, not the default (0.0, 1)
    # without the rule the model draws a "rim" on the thigh CT (measured with the CT window of issue 19: 1,214
    # voxels on 1 slice; 33,187 on 15 slices when float CTs were percentile-normalised)
    assert raw.mask.sum() > 1_000 and raw.slices_with_object >= 1 and not raw.absent
    assert judged.absent and not judged.mask.any() and judged.volume_ml == 0.0 and judged.slices_with_object == 0
    assert f"{RIM}: not found in this volume" in judged.message and "add a box or points" in judged.message
    # the scores stay for the QA strip (measured: best slice 1.48, 0.76 below the threshold)
    assert np.array_equal(judged.slice_scores, raw.slice_scores)
    assert judged.slice_scores.max() == pytest.approx(1.48, abs=0.05)


def test_present_structures_are_not_suppressed(medium, sarcoma_ct, atrium_mri):
    sarcoma = segment_volume(read_volume(sarcoma_ct[0]), [SegmentRequest("a soft-tissue sarcoma")], medium)
    seg = sarcoma.segments[0]
    assert not seg.absent and seg.message == ""
    assert seg.slice_scores.max() == pytest.approx(3.22, abs=0.05)  # 0.98 above the threshold (CT-windowed input)
    assert _dice(seg.mask, sarcoma_ct[1]) > 0.5  # measured 0.553 on this crop
    atrium = segment_volume(read_volume(atrium_mri[0]), [SegmentRequest("the left atrium")], medium).segments[0]
    assert not atrium.absent and _dice(atrium.mask, atrium_mri[1]) > 0.9  # measured 0.939 on this crop


def test_visual_prompts_are_never_emptied(medium, sarcoma_ct):
    """A box says the structure is there: the presence rule does not apply."""
    volume = read_volume(sarcoma_ct[0])
    box = {8: (40.0, 40.0, 90.0, 90.0)}
    seg = segment_volume(volume, [SegmentRequest(RIM, box_prompts=box)], medium).segments[0]
    assert not seg.absent and seg.mask.any()
    chosen = segment_volume(volume, [SegmentRequest(RIM)], medium, start_slice=8).segments[0]
    assert not chosen.absent and chosen.mask.any()  # so does a start slice the user chose


def test_cli_prints_the_absence_and_writes_an_empty_segment(sarcoma_ct, tmp_path, capsys):
    out = tmp_path / "la.seg.nrrd"
    assert main(["segment", str(sarcoma_ct[0]), "-p", RIM, "-p", "a soft-tissue sarcoma", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{RIM}: not found in this volume" in printed
    assert "a soft-tissue sarcoma: not found" not in printed
    image = sitk.ReadImage(str(out))  # the .seg.nrrd as Slicer stores it: label values per segment, in layers
    labels = sitk.GetArrayFromImage(image)
    labels = labels[..., None] if labels.ndim == 3 else labels
    counts = {}
    for i in range(2):
        meta = {k: image.GetMetaData(f"Segment{i}_{k}") for k in ("Name", "LabelValue", "Layer")}
        counts[meta["Name"]] = int((labels[..., int(meta["Layer"])] == int(meta["LabelValue"])).sum())
    # the absent structure still gets its (empty) segment, the present one its voxels
    assert counts == {RIM: 0, "a soft-tissue sarcoma": counts["a soft-tissue sarcoma"]}
    assert counts["a soft-tissue sarcoma"] > 5000  # measured 8,060


def test_bundled_threshold_is_what_the_calibration_derives_from_the_validation_scores():
    sys.path.insert(0, str(REPO / "scripts"))
    from calibrate_presence import choose, choose_rule, rates

    runs = json.loads(SCORES.read_text(encoding="utf-8"))["runs"]
    rule = PresenceRule(choose(runs, 1), 1)  # min_slices fixed at 1 (the config's note says why)
    assert rule == PresenceRule.for_model(resource_path("Models", "tgsam2-medium"))
    tpr, fpr, present, absent = rates(runs, rule)
    assert (tpr, present, absent) == (1.0, 21, 87) and fpr == pytest.approx(83 / 87)
    assert choose_rule(runs) == PresenceRule(choose(runs, 2), 2)  # what the script would pick unconstrained


def test_a_tumour_on_a_crop_of_a_training_ct_is_kept(medium, shared_data, tmp_path):
    """Why min_slices is 1: on 10 slices of STS_008 the tumour scores 3.53 on one slice and below 0.8 elsewhere."""
    image = sitk.ReadImage(str(shared_data / "sts_sarcoma" / "STS_008" / "CT_image.nii.gz"))[:, :, 20:30]
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    seg = segment_volume(read_volume(tmp_path / "ct.nii.gz"), [SegmentRequest("a soft-tissue sarcoma")],
                         medium).segments[0]
    assert not seg.absent and seg.mask.any()
    # measured before issue 19's CT window: 0.79 and 3.53 (one slice above the threshold); with it: 3.28 and more
    assert seg.slice_scores.max() > PresenceRule.for_model(medium).threshold + 0.5
