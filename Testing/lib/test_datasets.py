"""Issue 4, must-show 4: every folder of ../shared/data loads through its adapter with the right geometry and
label-to-prompt mapping (one sample each, checked against the raw files read independently); plus the generic
prompt-spec, nnU-Net/MSD and frame-sequence loaders on folders written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from TextPromptSegLib.training.data import PROMPTS, load_pack, save_pack
from TextPromptSegLib.training.datasets import (
    SHARED_ADAPTERS,
    load_prompt_spec,
    nnunet_volumes,
    sequence_volume,
    structure_prompts,
)


def _raw(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _check(volume, n_frames, frame_hw, counts: dict, rgb=False):
    """Frames along the expected axis with the expected in-plane size, and per-structure voxel counts."""
    assert volume.frames.dtype == np.uint8 and volume.frames.shape[0] == n_frames
    assert sorted(volume.frames.shape[1:3]) == sorted(frame_hw)
    assert (volume.frames.ndim == 4) == rgb
    assert list(volume.masks) == list(counts)
    for name, count in counts.items():
        assert volume.masks[name].shape == volume.frames.shape[:3]
        assert int(volume.masks[name].sum()) == count, name
    for case in volume.to_cases(64):
        assert case.prompts and all(isinstance(p, str) and p for p in case.prompts)


def test_every_shared_folder_has_an_adapter(shared_data):
    folders = {p.name for p in shared_data.iterdir() if p.is_dir()}
    assert folders <= set(SHARED_ADAPTERS)


def test_la2018(shared_data):
    (volume,) = SHARED_ADAPTERS["la2018"](shared_data, limit=1)
    case = volume.case_id.split("/")[1]
    label = _raw(shared_data / "la2018" / "train" / case / "label.nii.gz")
    _check(volume, label.shape[0], label.shape[1:], {"left atrium": int((label == 1).sum())})
    assert volume.row_spacing == pytest.approx(0.625) and volume.to_cases(64)[0].prompts == PROMPTS["left atrium"]


def test_sts_sarcoma(shared_data):
    (volume,) = SHARED_ADAPTERS["sts_sarcoma"](shared_data, limit=1)
    folder = shared_data / "sts_sarcoma" / volume.case_id.split("/")[1]
    label, image = _raw(folder / "CT_mask.nii.gz"), sitk.ReadImage(str(folder / "CT_image.nii.gz"))
    _check(volume, label.shape[0], label.shape[1:], {"sarcoma": int((label == 1).sum())})
    assert volume.row_spacing == pytest.approx(image.GetSpacing()[1], rel=1e-4)


def test_brats2013_one_structure_per_subregion(shared_data):
    (volume,) = SHARED_ADAPTERS["brats2013"](shared_data, limit=1)
    label = np.round(_raw(shared_data / "brats2013" / volume.case_id.split("/")[1] / "label.nii.gz"))
    counts = {"necrosis": int((label == 1).sum()), "edema": int((label == 2).sum()),
              "enhancing tumour": int((label == 4).sum()), "whole tumour": int((label > 0).sum())}
    _check(volume, label.shape[0], label.shape[1:], counts, rgb=True)
    prompts = {c.structure: c.prompts for c in volume.to_cases(64)}
    assert prompts["edema"] == PROMPTS["edema"] and prompts["necrosis"] != prompts["edema"]


def test_totalseg_small_ct_and_mr(shared_data):
    ct, mr = SHARED_ADAPTERS["totalseg_small"](shared_data)
    names = json.loads((shared_data / "totalseg_small" / "class_map_total_v2.json").read_text())
    for volume, seg, key in ((ct, "example_seg", "total"), (mr, "example_seg_mr", "total_mr")):
        label = _raw(shared_data / "totalseg_small" / f"{seg}.nii.gz")
        values = [v for v in np.unique(label) if v]
        counts = {names[key][str(v)]: int((label == v).sum()) for v in values}
        _check(volume, label.shape[0], label.shape[1:], counts)
    spleen = next(c for c in ct.to_cases(64) if c.structure == "spleen")
    assert spleen.prompts == structure_prompts("spleen") and len(spleen.prompts) > 1  # the library's descriptions


def test_recist_ct(shared_data):
    (volume,) = SHARED_ADAPTERS["recist_ct"](shared_data, limit=1)
    path = sorted((shared_data / "recist_ct").glob("*.npz"))[0]
    with np.load(path) as data:
        gts = data["gts"]
    _check(volume, gts.shape[0], gts.shape[1:], {"lesion": int((gts > 0).sum())})


def test_kvasir_polyp_frames(shared_data):
    (volume,) = SHARED_ADAPTERS["kvasir_polyp_2d"](shared_data, limit=1)
    base = shared_data / "kvasir_polyp_2d" / "Kvasir-SEG"
    mask = np.asarray(Image.open(base / "masks" / f"{volume.case_id.split('/')[1]}.jpg").convert("L")) > 127
    _check(volume, 1, mask.shape, {"polyp": int(mask.sum())}, rgb=True)


def test_ct_organs_2d(shared_data):
    (volume,) = SHARED_ADAPTERS["ct_organs_2d"](shared_data, limit=1)
    stem = volume.case_id.split("/")[1]
    files = sorted((shared_data / "ct_organs_2d" / "data_demo" / "masks").glob(f"{stem}_*.png"))
    counts = {f.stem[len(stem) + 1: f.stem.rindex("_")]: int((np.asarray(Image.open(f).convert("L")) > 127).sum())
              for f in files}
    _check(volume, 1, (512, 512), {k: v for k, v in counts.items() if v})
    assert "liver" in counts


def _write(array, path, spacing=(0.8, 0.8, 2.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_nnunet_folder_with_a_yaml_prompt_spec(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for case in ("case_001", "case_002"):
        label = np.zeros((6, 20, 24), np.uint8)
        label[2:4, 5:10, 5:12], label[1:5, 12:16, 14:20] = 1, 2
        _write(rng.normal(size=label.shape).astype(np.float32), tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
        _write(label, tmp_path / "labelsTr" / f"{case}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "spleen": 1, "left kidney": 2}, "file_ending": ".nii.gz"}))
    by_names = nnunet_volumes(tmp_path)
    assert [v.case_id for v in by_names] == ["" + tmp_path.name + "/case_001", tmp_path.name + "/case_002"]
    assert list(by_names[0].masks) == ["spleen", "left kidney"]
    assert by_names[0].masks["spleen"].sum() == 2 * 5 * 7 and by_names[0].prompts["spleen"] == structure_prompts(
        "spleen")

    spec = tmp_path / "prompts.yaml"
    spec.write_text("labels:\n  1:\n    structure: spleen\n    prompts:\n"
                    "      profile: the spleen, left upper quadrant\n      class: spleen\n  2: left kidney\n"
                    "  9:\n    structure: both organs\n    values: [1, 2]\n")
    structures = load_prompt_spec(spec)
    assert [(s.name, s.values) for s in structures] == [("spleen", (1,)), ("left kidney", (2,)),
                                                        ("both organs", (1, 2))]
    assert structures[0].prompts == ["the spleen, left upper quadrant", "spleen"]
    (volume, _) = nnunet_volumes(tmp_path, spec=spec)
    assert volume.masks["both organs"].sum() == volume.masks["spleen"].sum() + volume.masks["left kidney"].sum()
    with pytest.raises(ValueError, match="unknown prompt kinds"):
        load_prompt_spec({"labels": {"1": {"structure": "x", "prompts": {"smell": "y"}}}})


def test_frame_sequence_folder_and_pack_round_trip(tmp_path):
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir()
    masks.mkdir()
    for t in range(5):
        image = np.full((32, 40, 3), 40, np.uint8)
        mask = np.zeros((32, 40), np.uint8)
        mask[8:20, 4 + 3 * t: 16 + 3 * t] = 255
        image[mask > 0] = (200, 80, 60)
        Image.fromarray(image).save(frames / f"{t:04d}.png")
        Image.fromarray(mask).save(masks / f"{t:04d}.png")
    volume = sequence_volume(frames, masks, "polyp")
    assert volume.frames.shape == (5, 32, 40, 3)
    assert [int(m.sum()) for m in volume.masks["polyp"]] == [144] * 5
    (back,) = load_pack(save_pack([volume], tmp_path / "seq.npz"))
    assert back.prompts == volume.prompts and np.array_equal(back.masks["polyp"], volume.masks["polyp"])
