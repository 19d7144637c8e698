"""The bundled TPP checkpoint by its registry name (issue 6): listed and verified by ``textpromptseg models``,
``textpromptseg segment --model tpp-small-la`` segments the left atrium of a held-out LA2018 volume (validation
split), and the TPP -> SAM-2 pipeline runs with ``--first-mask-model tpp-small-la``; both outputs load in
slicer-core on the input grid."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mrml import make_scene, read_seg_nrrd  # noqa: E402

from TextPromptSegLib import registry  # noqa: E402
from TextPromptSegLib.cli import main  # noqa: E402
from TextPromptSegLib.training.data import default_splits  # noqa: E402

NAME = "tpp-small-la"


@pytest.fixture(scope="module")
def la_val_volume(shared_data, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A held-out LA2018 MRI (the first validation case), 10 slices through the middle of the atrium, and its
    label (z, y, x)."""
    case = shared_data / "la2018" / "train" / default_splits(shared_data)["la2018"]["val"][0]
    image, label = (sitk.ReadImage(str(case / f)) for f in ("image.nii.gz", "label.nii.gz"))
    z = np.flatnonzero(sitk.GetArrayFromImage(label).reshape(label.GetSize()[2], -1).any(1))
    mid = int(z[len(z) // 2])
    folder = tmp_path_factory.mktemp("la_val")
    sitk.WriteImage(image[:, :, mid - 5:mid + 5], str(folder / "la.nrrd"))
    return folder / "la.nrrd", sitk.GetArrayFromImage(label[:, :, mid - 5:mid + 5]) > 0


def test_registry_lists_and_verifies_the_tpp(capsys):
    entry = registry.entries()[NAME]
    assert entry.kind == "tpp" and entry.bundled and registry.default_model_name() != NAME
    assert registry.model_kind(NAME) == "tpp"
    assert main(["models", "verify", NAME]) == 0
    assert main(["models", "list"]) == 0
    assert NAME in capsys.readouterr().out


@pytest.mark.slow
def test_cli_segments_with_the_bundled_tpp_and_the_tpp_sam2_pipeline(la_val_volume, tmp_path, capsys):
    volume, truth = la_val_volume
    runs = {"tpp": ["--model", NAME],
            "pipeline": ["--model", registry.default_model_name(), "--first-mask-model", NAME]}
    dice = {}
    for label, args in runs.items():
        out = tmp_path / f"{label}.seg.nrrd"
        code = main(["segment", str(volume), "-p", "the left atrium", "-o", str(out), "--device", "cpu", *args])
        assert code == 0, capsys.readouterr().err
        segmentation = read_seg_nrrd(make_scene(), out).GetSegmentation()
        assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetNthSegment(0).GetName() == "the left atrium"
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
        assert mask.shape == truth.shape
        dice[label] = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    print({k: round(float(v), 3) for k, v in dice.items()})
    assert dice["tpp"] > 0.7  # a held-out case: the trained TPP finds and outlines the atrium (0.85 measured)
    assert dice["pipeline"] > 0.7  # TPP's start-slice mask -> TGSAM-2 medium (0.90 measured)
