"""TPP (issue 6, must-show 1) at a tiny configuration: shapes through every stage, each propagation (box, mask,
query) carries state from one image to the next, the prompt selection follows the level-1 relevance weights, and
the loss trains the best-matching query."""

from __future__ import annotations

import pytest
import torch

from TextPromptSegLib.modeling.config import TextEncoderConfig
from TextPromptSegLib.modeling.text_encoder import TextEncoder
from TextPromptSegLib.modeling.tpp import build_tpp, giou_loss, mask_to_box, tpp_config, tpp_loss

PROMPTS = ["a bright round disc", "a round shape in the middle", "a white blob"]


@pytest.fixture(scope="module")
def encoder(tiny_text_encoder_dir):
    return TextEncoder(TextEncoderConfig(model_id_or_path=str(tiny_text_encoder_dir), max_length=16))


@pytest.fixture()
def model(encoder):
    torch.manual_seed(0)
    return build_tpp("tiny", text_encoder=encoder)


def _frames(t=3, size=128):
    torch.manual_seed(1)
    return torch.rand(t, 3, size, size)


def test_shapes_through_every_stage(model):
    cfg = model.config
    words, mask = model.encode_prompts(PROMPTS)
    assert words.shape[0] == 3 and words.shape[-1] == cfg.hidden and mask.shape == words.shape[:2]
    image = _frames(1)
    levels = [proj(f) for proj, f in zip(model.input_proj, model.backbone(image))]
    assert [tuple(f.shape[-2:]) for f in levels] == [(32, 32), (16, 16), (8, 8), (4, 4)]  # strides 4, 8, 16, 32
    fused, weights, selected = model.referring(levels, words, mask)
    assert [f.shape for f in fused] == [f.shape for f in levels]
    assert weights.shape == (4, 3) and torch.allclose(weights.sum(1), torch.ones(4))
    outs = model.forward_sequence(_frames(3), PROMPTS)
    first, later = outs[0], outs[1:]
    assert first["boxes"].shape == (cfg.num_queries, 4) and first["masks"].shape == (cfg.num_queries, 32, 32)
    assert first["logits"].shape == (cfg.num_queries,)
    for out in later:  # one propagated query after the first image
        assert out["boxes"].shape == (1, 4) and out["masks"].shape == (1, 32, 32) and out["best"] == 0
    for out in outs:
        assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()


def test_resnet50_preset_is_the_paper_backbone(encoder):
    model = build_tpp(tpp_config("resnet50", encoder_layers=4, decoder_layers=4), text_encoder=encoder)
    assert model.backbone.channels == [256, 512, 1024, 2048]
    assert len(model.encoder) == 4 and len(model.decoder) == 4 and model.config.num_queries == 5
    assert model.config.hidden == 256 and model.config.dyn_channels == 8


@pytest.mark.parametrize("switch", ["use_box_propagation", "use_mask_propagation", "use_query_propagation"])
def test_each_propagation_carries_state(model, switch):
    frames = _frames(2)
    with torch.no_grad():
        full = model.forward_sequence(frames, PROMPTS)
        setattr(model.config, switch, False)
        ablated = model.forward_sequence(frames, PROMPTS)
    torch.testing.assert_close(full[0]["masks"], ablated[0]["masks"])  # the first image has no state to use
    changed = ((full[1]["masks"] - ablated[1]["masks"]).abs().max()
               + (full[1]["boxes"] - ablated[1]["boxes"]).abs().max())
    assert changed > 1e-4


@pytest.mark.parametrize("favoured", [0, 2])
def test_prompt_selection_follows_the_level1_relevance_weights(model, favoured):
    def favour(module, inputs, output):
        bonus = torch.zeros_like(output)
        if len(output) > favoured:  # later images see only the selected prompt
            bonus[favoured] = 10.0
        return output + bonus

    handle = model.relevance[0].register_forward_hook(favour)
    try:
        with torch.no_grad():
            outs = model.forward_sequence(_frames(2), PROMPTS)
    finally:
        handle.remove()
    assert outs[0]["selected"] == favoured and int(outs[0]["weights"][0].argmax()) == favoured
    words, mask = model.encode_prompts(PROMPTS)
    torch.testing.assert_close(outs[0]["state"].words, words[favoured:favoured + 1])  # F'_p = f_p^w (Eq. 7)


def test_box_helpers():
    mask = torch.zeros(10, 20, dtype=torch.bool)
    mask[2:6, 4:14] = True
    torch.testing.assert_close(mask_to_box(mask), torch.tensor([0.45, 0.4, 0.5, 0.4]))
    a = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    assert giou_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    far = torch.tensor([[0.2, 0.5, 0.2, 0.2]])  # touching boxes: IoU 0, hull = union -> GIoU loss 1
    assert giou_loss(far, torch.tensor([[0.4, 0.5, 0.2, 0.2]])).item() == pytest.approx(1.0, abs=1e-6)


def test_loss_trains_the_best_matching_query():
    target = torch.zeros(1, 64, 64, dtype=torch.bool)
    target[0, 16:48, 16:48] = True
    good_mask = torch.full((16, 16), -8.0)
    good_mask[4:12, 4:12] = 8.0
    outputs = [{"boxes": torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5]], requires_grad=True),
                "masks": torch.stack([torch.full((16, 16), -8.0), good_mask]).requires_grad_(),
                "logits": torch.zeros(2, requires_grad=True)}]
    loss = tpp_loss(outputs, target)
    loss.backward()
    grads = outputs[0]["logits"].grad
    assert grads[1] < 0 < grads[0]  # the matched query is pushed to "referred", the other away from it
    assert outputs[0]["boxes"].grad[0].abs().sum() == 0  # only the matched query's box is trained
    empty = tpp_loss([{k: v.detach() for k, v in outputs[0].items()}], torch.zeros(1, 64, 64, dtype=torch.bool))
    assert empty > 0


def test_gradients_reach_every_trainable_part(model):
    masks = torch.zeros(3, 128, 128, dtype=torch.bool)
    masks[:2, 40:80, 30:70] = True
    model.train()
    tpp_loss(model.forward_sequence(_frames(3), PROMPTS), masks).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("text_encoder.")
               and p.grad is None]
    assert not missing
