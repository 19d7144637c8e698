"""Checkpoints: exact safetensors round trip, clear errors, official SAM-2 .pt loading (issue 2, #5)."""

from __future__ import annotations

import json

import pytest
import torch

from TextPromptSegLib.modeling.build import build_model, build_sam2
from TextPromptSegLib.modeling.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from TextPromptSegLib.modeling.testing import build_tiny_model


def _perturb(model, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith("text_encoder."):
                param.add_(torch.randn(param.shape, generator=generator) * 0.01)


def test_round_trip_is_exact(tiny_text_encoder_dir, tmp_path):
    model = build_tiny_model(tiny_text_encoder_dir, seed=0)
    _perturb(model)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    assert json.loads((folder / "config.json").read_text())["config"]["name"] == "tiny"
    loaded = build_model(folder, text_encoder=model.text_encoder)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    images = torch.rand(1, 2, 3, 128, 128)
    with torch.inference_mode():
        text = model.encode_text(["the bright disc"])
        a = model.forward_sequence(images, text)["mask_logits"]
        b = loaded.forward_sequence(images, loaded.encode_text(["the bright disc"]))["mask_logits"]
    assert torch.equal(a, b)


def test_corrupt_file_gives_clear_error(tiny_model, tmp_path):
    folder = save_checkpoint(tiny_model, tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tiny_model, folder)


def test_missing_checkpoint(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tiny_model, tmp_path / "nowhere")


def test_mismatched_checkpoint_names_keys_and_shapes(tiny_text_encoder_dir, tmp_path):
    other = build_tiny_model(tiny_text_encoder_dir, seed=0, mem_dim=8, use_tcvp=False)
    folder = save_checkpoint(other, tmp_path / "other")
    model = build_tiny_model(tiny_text_encoder_dir, seed=0)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, folder)
    message = str(info.value)
    assert "missing keys" in message and "tcvp." in message
    assert "shape mismatches" in message and "maskmem" in message


def test_official_sam2_checkpoint_loads_with_smaller_memory_bank(tiny_text_encoder_dir, tmp_path):
    model = build_tiny_model(tiny_text_encoder_dir, seed=0)
    official_cfg = build_tiny_model(tiny_text_encoder_dir, seed=0, num_maskmem=7).config
    torch.manual_seed(5)
    official = build_sam2(official_cfg)
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": official.state_dict()}, path)
    build_model(model.config, checkpoint=path, text_encoder=model.text_encoder)  # through the builder too
    from TextPromptSegLib.modeling.checkpoint import load_official_sam2

    load_official_sam2(model, path)
    state = model.state_dict()
    assert torch.equal(state["maskmem_tpos_enc"], official.state_dict()["maskmem_tpos_enc"][:4])
    key = "sam_mask_decoder.iou_token.weight"
    assert torch.equal(state[key], official.state_dict()[key])
    assert model.text_prompt.gate.item() == 0.0  # adapters keep their zero init

    bad = dict(official.state_dict(), stray_key=torch.zeros(1))
    torch.save({"model": bad}, path)
    with pytest.raises(CheckpointError, match="stray_key"):
        load_official_sam2(model, path)


def test_high_res_features_flag_round_trips_and_old_configs_default_to_sam2(tiny_text_encoder_dir, tmp_path):
    """``high_res_features=False`` (SAM-1's decoder on stride 16 only) is stored in config.json and rebuilt; a
    config.json written before the field existed loads as SAM-2's decoder (True), with its conv_s0/conv_s1."""
    model = build_tiny_model(tiny_text_encoder_dir, seed=0, high_res_features=False)
    assert not model.use_high_res_features_in_sam and not hasattr(model.sam_mask_decoder, "conv_s0")
    folder = save_checkpoint(model, tmp_path / "low")
    assert json.loads((folder / "config.json").read_text())["config"]["high_res_features"] is False
    loaded = build_model(folder, text_encoder=model.text_encoder)
    assert loaded.config.high_res_features is False and not loaded.use_high_res_features_in_sam
    images = torch.rand(1, 2, 3, 128, 128)
    with torch.inference_mode():
        a = model.forward_sequence(images, model.encode_text(["the bright disc"]))["mask_logits"]
        b = loaded.forward_sequence(images, loaded.encode_text(["the bright disc"]))["mask_logits"]
    assert torch.equal(a, b)

    old = build_tiny_model(tiny_text_encoder_dir, seed=0)
    folder = save_checkpoint(old, tmp_path / "old")
    info = json.loads((folder / "config.json").read_text())
    del info["config"]["high_res_features"]
    (folder / "config.json").write_text(json.dumps(info))
    loaded = build_model(folder, text_encoder=old.text_encoder)
    assert loaded.config.high_res_features is True and loaded.use_high_res_features_in_sam
    assert hasattr(loaded.sam_mask_decoder, "conv_s0")
