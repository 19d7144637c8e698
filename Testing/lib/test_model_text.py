"""The text path is live once adapters are non-zero, and the frozen text encoder stays frozen (issue 2, #2)."""

from __future__ import annotations

import pytest
import torch

from TextPromptSegLib.modeling.testing import build_tiny_model


@pytest.fixture()
def live_model(tiny_text_encoder_dir):
    return _with_object_present(build_tiny_model(tiny_text_encoder_dir, seed=0), live=True)


def _with_object_present(model, live: bool = False):
    """Make the object-score head say "present": SAM-2 replaces the masks of absent objects by a constant,
    which would hide the mask path from these tests."""
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(20.0)
    if not live:
        return model
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.text_prompt.gate.fill_(1.0)
        for name, param in model.named_parameters():
            if name.startswith("tcvp.") or ".tg_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


def test_changing_the_prompt_changes_the_masks(live_model):
    torch.manual_seed(0)
    images = torch.rand(1, 3, 3, 128, 128)
    with torch.inference_mode():
        a = live_model.forward_sequence(images, live_model.encode_text(["the bright disc"]))
        b = live_model.forward_sequence(images, live_model.encode_text(["a dark square on the left"]))
    # an untrained model often predicts "no object" (mask logits clamped to -1024): compare the scores too
    assert (a["object_score_logits"] - b["object_score_logits"]).abs().max() > 1e-3
    assert not torch.equal(a["mask_logits"], b["mask_logits"]) or not torch.equal(a["ious"], b["ious"])


def test_gradients_reach_adapters_not_the_text_encoder(live_model):
    live_model.train()
    images = torch.rand(2, 3, 3, 128, 128)
    out = live_model.forward_sequence(images, live_model.encode_text(["the bright disc", "the dark square"]))
    (out["mask_logits"].sigmoid().mean() + out["object_score_logits"].mean()).backward()

    def grad_norm(prefix: str) -> float:
        grads = [p.grad.abs().sum() for n, p in live_model.named_parameters() if prefix in n and p.grad is not None]
        return float(sum(grads)) if grads else 0.0

    for part in ("tcvp.attn.", "tcvp.up1.", "tcvp.proj2.", ".tg_text.", "text_prompt.proj.", "text_prompt.gate"):
        assert grad_norm(part) > 0, f"no gradient reaches {part}"
    assert all(p.grad is None for p in live_model.text_encoder.parameters())
    assert not any(p.requires_grad for p in live_model.text_encoder.parameters())


def test_untrained_gate_still_gets_a_gradient(tiny_text_encoder_dir):
    """The zero gate must be able to open: d loss / d gate is non-zero at g = 0."""
    model = _with_object_present(build_tiny_model(tiny_text_encoder_dir, seed=0))
    model.train()
    out = model.forward_sequence(torch.rand(1, 2, 3, 128, 128), model.encode_text(["the bright disc"]))
    out["mask_logits"].sigmoid().mean().backward()
    assert model.text_prompt.gate.grad is not None and model.text_prompt.gate.grad.abs() > 0


@pytest.mark.parametrize("prompts", [[""], ["   "], []])
def test_empty_prompt_is_rejected(tiny_model, prompts):
    with pytest.raises(ValueError, match="prompt"):
        tiny_model.encode_text(prompts)


def test_frozen_text_features_are_cached(tiny_model):
    encoder = tiny_model.text_encoder
    first, mask = encoder(["the spleen", "the liver"])
    again, _ = encoder(["the liver", "the spleen"])
    assert torch.equal(first[0], again[1]) and torch.equal(first[1][: mask[1].sum()], again[0][: mask[1].sum()])
