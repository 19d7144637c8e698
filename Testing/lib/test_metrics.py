"""Metrics and evaluation (issue 4, must-show 3): perfect prediction Dice 1, empty prediction 0, HD95 equal to
a hand-computed case, and an evaluation over real cases through the inference path writes the table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from TextPromptSegLib.training.evaluate import EvalCase, evaluate_cases, write_report
from TextPromptSegLib.training.metrics import dice, hd95, iou


def test_perfect_and_empty_predictions():
    truth = np.zeros((5, 20, 20), bool)
    truth[1:4, 5:12, 6:15] = True
    assert dice(truth, truth) == 1.0 and iou(truth, truth) == 1.0 and hd95(truth, truth) == 0.0
    empty = np.zeros_like(truth)
    assert dice(empty, truth) == 0.0 and iou(empty, truth) == 0.0 and hd95(empty, truth) == float("inf")
    assert dice(empty, empty) == 1.0 and hd95(empty, empty) == 0.0


def test_hd95_matches_a_hand_computed_case():
    # two single voxels 3 voxels apart along x, x spacing 2 mm: every surface distance is 6 mm
    a = np.zeros((3, 10, 10), bool)
    b = np.zeros_like(a)
    a[1, 4, 2] = True
    b[1, 4, 5] = True
    assert hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)
    # a 5x5 square against the same square shifted by 1 row (y spacing 0.5 mm): distances 0 or 0.5 mm
    a = np.zeros((1, 12, 12), bool)
    a[0, 2:7, 2:7] = True
    b = np.roll(a, 1, axis=1)
    assert hd95(a, b, spacing=(1.0, 0.5, 1.0)) == pytest.approx(0.5)
    assert dice(a, b) == pytest.approx(2 * 20 / 50)


def test_evaluate_writes_the_table(shared_data, tiny_model, tmp_path):
    cases = []
    for case_id in ("STS_008", "STS_019"):
        folder = shared_data / "sts_sarcoma" / case_id
        image = sitk.ReadImage(str(folder / "CT_image.nii.gz"))
        label = sitk.ReadImage(str(folder / "CT_mask.nii.gz"))
        z = int(np.argmax(sitk.GetArrayFromImage(label).sum((1, 2))))
        lo = max(0, z - 3)
        sitk.WriteImage(image[:, :, lo : lo + 6], str(tmp_path / f"{case_id}_img.nii.gz"))
        sitk.WriteImage(label[:, :, lo : lo + 6], str(tmp_path / f"{case_id}_lab.nii.gz"))
        cases.append(EvalCase(case_id, "sarcoma", tmp_path / f"{case_id}_img.nii.gz",
                              tmp_path / f"{case_id}_lab.nii.gz", (1,), "a soft-tissue sarcoma"))
    scores = evaluate_cases(tiny_model, cases, start_slice=3)
    report = write_report(scores, tmp_path / "eval")
    table = report.read_text(encoding="utf-8")
    assert "| sarcoma | 2 |" in table and "DSC" in table
    data = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [c["case_id"] for c in data["cases"]] == ["STS_008", "STS_019"]
    assert all(0.0 <= c["dice"] <= 1.0 for c in data["cases"])
