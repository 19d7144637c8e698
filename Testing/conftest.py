"""Shared pytest fixtures: paths to the repository and to ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TEXTPROMPTSEG_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real images of ../shared/data; CI always has them, so their absence is an error, not a skip."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"../shared/data not found at {SHARED_DATA}; set TEXTPROMPTSEG_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_text_encoder_dir(tmp_path_factory) -> Path:
    """A tiny BERT (random weights, small WordPiece vocabulary) saved in a temporary folder."""
    from TextPromptSegLib.modeling.testing import make_tiny_text_encoder

    return make_tiny_text_encoder(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_model(tiny_text_encoder_dir):
    """A randomly initialised tiny TGSAM-2 on CPU (adapters at zero). Shared: do not modify its weights."""
    from TextPromptSegLib.modeling.testing import build_tiny_model

    return build_tiny_model(tiny_text_encoder_dir, seed=0)


SEQUENCE_FIXTURE = REPO / "Testing" / "fixtures" / "tgsam2-tiny-sequences"


@pytest.fixture(scope="session")
def sequence_fixture_dir() -> Path:
    """The checkpoint folder of the tiny TGSAM-2 trained on synthetic moving-object sequences
    (scripts/train_sequence_fixture.py; committed, MiniLM text encoder)."""
    if not (SEQUENCE_FIXTURE / "model.safetensors").is_file():
        raise FileNotFoundError(f"sequence fixture missing: {SEQUENCE_FIXTURE} (scripts/train_sequence_fixture.py)")
    return SEQUENCE_FIXTURE


@pytest.fixture(scope="session")
def sequence_model(sequence_fixture_dir):
    """The trained sequence fixture model on CPU. Shared: do not modify its weights."""
    from TextPromptSegLib.modeling.build import build_model

    return build_model(sequence_fixture_dir)


@pytest.fixture(scope="session")
def brats_small(shared_data, tmp_path_factory) -> Path:
    """The BraTS validation case's FLAIR and contrast T1 cut to 6 slices and 160 x 160 voxels through the tumour,
    and the T1 once more with another spacing (a sequence not resampled onto the FLAIR's grid)."""
    import SimpleITK as sitk

    case = sorted((shared_data / "brats2013").iterdir())[-1]
    folder = tmp_path_factory.mktemp("brats")
    for name in ("flair", "t1c", "label"):
        image = sitk.ReadImage(str(case / f"{name}.nii.gz"))[40:200, 40:200, 75:81]
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    moved = sitk.ReadImage(str(folder / "t1c.nii.gz"))
    moved.SetSpacing((1.0, 1.0, 1.5))
    sitk.WriteImage(moved, str(folder / "t1c_moved.nii.gz"))
    return folder
