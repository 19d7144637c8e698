"""Modality and intensity are decided the same way everywhere (issue 19): ``decide_modality`` from metadata, else
from values whatever the dtype; the checkpoint states the normalisation per modality and inference applies it; the
training data path and the inference path give the model identical inputs for the same file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from TextPromptSegLib.engine.pipeline import PreparedVolume
from TextPromptSegLib.engine.preprocess import (
    BRATS_CHANNELS,
    TRAINING_INPUTS,
    WINDOWS,
    InputSpec,
    Normalisation,
    decide_modality,
    normalize_intensity,
)
from TextPromptSegLib.io.volumes import read_volume
from TextPromptSegLib.modeling.checkpoint import read_inputs
from TextPromptSegLib.resources import resource_path

BUNDLED = ("tgsam2-medium", "tpp-small-la")


def _crop(src: Path, dst: Path, slices: slice, rows: slice = slice(None), cols: slice = slice(None)) -> Path:
    """A small real file with the source's pixel type (float32 stays float32, int16 stays int16)."""
    image = sitk.ReadImage(str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image[cols, rows, slices], str(dst))
    return dst


@pytest.fixture(scope="module")
def mini_root(shared_data, tmp_path_factory) -> Path:
    """A copy of the shared-data layout with one small case per kind: sarcoma CT stored as float32 (STS_002, the demo
    case) and as int16 (STS_007), an LA2018 LGE-MRI (uint8), and one Kvasir colour frame."""
    root = tmp_path_factory.mktemp("mini_data")
    for case, z in (("STS_002", slice(20, 26)), ("STS_007", slice(30, 36))):
        for name in ("CT_image.nii.gz", "CT_mask.nii.gz"):
            _crop(shared_data / "sts_sarcoma" / case / name, root / "sts_sarcoma" / case / name, z)
    la = sorted((shared_data / "la2018" / "train").iterdir())[0]
    for name in ("image.nii.gz", "label.nii.gz"):
        _crop(la / name, root / "la2018" / "train" / la.name / name, slice(40, 46), slice(30, 110), slice(40, 120))
    kvasir = shared_data / "kvasir_polyp_2d" / "Kvasir-SEG"
    frame = sorted((kvasir / "images").glob("*.jpg"))[0]
    for sub in ("images", "masks"):  # the frame twice: a two-frame sequence for the inference path
        (root / "kvasir_polyp_2d" / "Kvasir-SEG" / sub).mkdir(parents=True)
        for copy in ("a", "b"):
            shutil.copy(kvasir / sub / frame.name, root / "kvasir_polyp_2d" / "Kvasir-SEG" / sub / f"{copy}.jpg")
    return root


def test_sarcoma_ct_is_ct_whatever_its_dtype(mini_root):
    """The issue's failure: STS float32 files were read as 'unknown' (percentiles) while int16 ones were CT."""
    float_ct = read_volume(mini_root / "sts_sarcoma" / "STS_002" / "CT_image.nii.gz")
    int_ct = read_volume(mini_root / "sts_sarcoma" / "STS_007" / "CT_image.nii.gz")
    assert float_ct.array.dtype == np.float32 and int_ct.array.dtype == np.int16
    assert float_ct.modality == "CT" and int_ct.modality == "CT"
    assert read_volume(resource_path("Samples", "STS_002", "CT_image.nii.gz")).modality == "CT"


def test_mr_and_other_data_are_not_ct(mini_root, shared_data):
    la = next((mini_root / "la2018" / "train").iterdir())
    assert read_volume(la / "image.nii.gz").modality == "unknown"  # uint8 LGE-MRI
    brats = sorted((shared_data / "brats2013").iterdir())[0]
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(brats / "flair.nii.gz")))[60:64]
    assert decide_modality(flair) == "unknown"  # z-scored float MR: negative, but not whole numbers nor HU
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "totalseg_small" / "example_mr_sm.nii.gz")))
    assert mr.dtype == np.int16 and decide_modality(mr) == "unknown"  # signed MR with a few values below 0
    assert decide_modality(np.zeros((2, 16, 16, 3), np.uint8)) == "endoscopy"


def test_values_decide_only_when_metadata_is_silent():
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, size=(4, 32, 32)).astype(np.float32)
    assert decide_modality(hu) == "CT"
    smooth = rng.normal(0.0, 300.0, size=hu.shape).astype(np.float32)  # below -500, but not whole numbers
    assert decide_modality(smooth) == "unknown"
    resampled = smooth.copy()
    resampled[:, :8] = -1000.0  # a resampled CT is not whole numbers either, but keeps its air at -1000
    assert decide_modality(resampled) == "CT"
    shifted = (hu + 1024).astype(np.uint16)  # stored without its rescale intercept: not decidable from values
    assert decide_modality(shifted) == "unknown"
    assert decide_modality(shifted, {"0008|0060": "CT "}) == "CT"  # DICOM Modality (SimpleITK key)
    assert decide_modality(hu, {"0008|0060": "MR"}) == "MR"  # what the file states wins over its values
    assert decide_modality(shifted, {"units": "[hnsf'U]"}) == "CT"  # Slicer's voxel value units (DICOM plugin)
    assert decide_modality(shifted, {"quantity": "112031"}) == "CT"
    assert decide_modality(shifted, {"0008|0016": "1.2.840.10008.5.1.4.1.1.2.1"}) == "CT"  # Enhanced CT SOP class
    assert decide_modality(shifted, {"Modality": "ct"}) == "CT"  # an NRRD key, any case


def test_nrrd_and_dicom_metadata_are_read(tmp_path):
    """A CT whose values do not look like HU (stored with an offset) is still CT when its file says so."""
    array = (np.random.default_rng(1).integers(0, 2000, size=(3, 24, 24))).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetMetaData("modality", "CT")
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    assert read_volume(tmp_path / "ct.nrrd").modality == "CT"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "plain.nrrd"))
    assert read_volume(tmp_path / "plain.nrrd").modality == "unknown"

    series = tmp_path / "dicom"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        slice_image = sitk.GetImageFromArray(array[k])
        for tag, value in (("0008|0060", "CT"), ("0020|000e", "1.2.3.4.5"), ("0020|0013", str(k + 1)),
                           ("0020|0032", f"0\\0\\{k}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0008|0018", f"1.2.3.4.5.{k + 1}")):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"{k:03d}.dcm"))
        writer.Execute(slice_image)
    volume = read_volume(series)
    assert volume.modality == "CT" and volume.shape == array.shape


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_checkpoints_state_the_training_normalisation(name):
    """The bundled models were trained through training/data.py: their config.json states exactly that."""
    folder = resource_path("Models", name)
    stated = json.loads((folder / "config.json").read_text(encoding="utf-8"))["inputs"]
    assert InputSpec.from_dict(stated).intensity == TRAINING_INPUTS.intensity
    assert stated["intensity"]["CT"] == {"window": list(WINDOWS["soft_tissue"])}
    # tgsam2-medium was trained on BraTS composites (FLAIR + T1c); the TPP on left atria only
    assert read_inputs(folder).channels == ((BRATS_CHANNELS,) if name == "tgsam2-medium" else ())


def test_inference_uses_the_checkpoint_normalisation(tiny_model, tmp_path):
    """A checkpoint that states another CT window gets that window at inference (and a user window overrides it)."""
    from TextPromptSegLib.io.volumes import Volume
    from TextPromptSegLib.modeling.build import build_model
    from TextPromptSegLib.modeling.checkpoint import save_checkpoint

    folder = save_checkpoint(tiny_model, tmp_path / "ckpt")
    data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert InputSpec.from_dict(data["inputs"]) == TRAINING_INPUTS  # what save_checkpoint writes by default
    data["inputs"]["intensity"]["CT"] = {"window": [50.0, 350.0]}
    (folder / "config.json").write_text(json.dumps(data), encoding="utf-8")
    model = build_model(folder)
    assert model.inputs.normalisation("CT") == Normalisation(window=(50.0, 350.0))

    ct = np.random.default_rng(2).integers(-1000, 1500, size=(3, 32, 32)).astype(np.float32)
    volume = Volume(ct, modality=decide_modality(ct))
    prepared = PreparedVolume.for_model(volume, model)
    assert np.array_equal(prepared.frames, normalize_intensity(ct, "CT", (50.0, 350.0)))
    assert not np.array_equal(prepared.frames, normalize_intensity(ct, "CT"))  # not the default soft-tissue window
    override = PreparedVolume.for_model(volume, model, window="bone")
    assert np.array_equal(override.frames, normalize_intensity(ct, "CT", "bone"))


def _inference_inputs(path: Path, model):
    """What the CLI, evaluation and the Logic give the model: read_volume, then PreparedVolume.for_model."""
    prepared = PreparedVolume.for_model(read_volume(path), model)
    return prepared, prepared.frame_source()


@pytest.mark.parametrize("kind", ["float32 CT", "int16 CT", "MR", "RGB"])
def test_training_and_inference_give_the_model_identical_inputs(kind, mini_root):
    """The training adapters (``sarcoma_volumes``, ``la2018_volumes``, ``kvasir_volumes``) and the inference path,
    with the bundled checkpoint's stated normalisation, on the same file: the same 8-bit frames, and model inputs
    (N, 3, S, S) equal within the training pack's fp16 storage."""
    import torch

    from TextPromptSegLib.training.data import la2018_volumes, sarcoma_volumes
    from TextPromptSegLib.training.datasets import kvasir_volumes

    model = SimpleNamespace(image_size=64, inputs=read_inputs(resource_path("Models", "tgsam2-medium")))
    if kind.endswith("CT"):
        case = "STS_002" if kind == "float32 CT" else "STS_007"
        (train,) = sarcoma_volumes(mini_root, [case])
        path = mini_root / "sts_sarcoma" / case / "CT_image.nii.gz"
    elif kind == "MR":
        case = next((mini_root / "la2018" / "train").iterdir()).name
        (train,) = la2018_volumes(mini_root, [case])
        path = mini_root / "la2018" / "train" / case / "image.nii.gz"
    else:
        (train,) = kvasir_volumes(mini_root, limit=1)  # each Kvasir image is a one-frame volume
        path = mini_root / "kvasir_polyp_2d" / "Kvasir-SEG" / "images"  # a folder of frames: a sequence
    prepared, source = _inference_inputs(path, model)
    n = len(train.frames)
    prepared.frames = prepared.frames[:n]
    assert np.array_equal(train.frames, np.round(prepared.frames * 255).astype(np.uint8))
    trained_on = train.to_cases(model.image_size)[0].frames.float()  # (N, 3, S, S), stored as fp16
    seen = source.get(range(n))
    assert isinstance(seen, torch.Tensor) and trained_on.shape == seen.shape
    # 8-bit quantisation of the training frames (<= 0.5/255) and their fp16 storage (<= 2^-12); a different
    # normalisation differs by tenths
    assert float((trained_on - seen).abs().max()) <= 0.5 / 255 + 2**-11


@pytest.fixture(scope="module")
def brats_crop(shared_data, tmp_path_factory) -> Path:
    """The BraTS validation case's FLAIR, contrast T1, brain mask and labels, cut to 6 slices through the tumour
    (there, the T1's own foreground misses 33 voxels of the brain mask that the FLAIR's covers)."""
    case = sorted((shared_data / "brats2013").iterdir())[-1]
    folder = tmp_path_factory.mktemp("brats") / case.name
    for name in ("flair", "t1c", "brainmask", "label"):
        _crop(case / f"{name}.nii.gz", folder / f"{name}.nii.gz", slice(75, 81))  # whole slices: the brain's edge
    return folder


def test_channel_composite_is_the_one_the_model_was_trained_on(brats_crop):
    """``read_channels`` (the CLI's --channel) and the training adapter build the same composite, and it equals the
    recipe the bundled model was trained with: percentiles inside BraTS's own brain mask file."""
    from TextPromptSegLib.io.volumes import read_channels
    from TextPromptSegLib.training.data import brats_volume

    composite = read_channels([brats_crop / "flair.nii.gz", brats_crop / "t1c.nii.gz"])
    assert composite.array.dtype == np.uint8 and composite.array.shape[-1] == 3
    assert np.array_equal(brats_volume(brats_crop).array, composite.array)
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(brats_crop / "brainmask.nii.gz"))) > 0
    channels = []
    for name in ("flair", "t1c"):
        data = sitk.GetArrayFromImage(sitk.ReadImage(str(brats_crop / f"{name}.nii.gz")))
        low, high = np.percentile(data[brain], (0.5, 99.5))
        channels.append(np.where(brain, np.clip((data - low) / max(high - low, 1e-6), 0, 1), 0))
    channels.append((channels[0] + channels[1]) / 2)
    assert np.array_equal(composite.array, np.round(np.stack(channels, -1) * 255).astype(np.uint8))
