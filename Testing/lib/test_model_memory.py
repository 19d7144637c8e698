"""The memory bank is used (issue 2, must-show 4): the object fades to near-invisible contrast in later frames
while moving smoothly; tracking with memory must beat the same model without memory."""

from __future__ import annotations

import pytest
import torch
from synthetic import dice, make_sequences, predict, train

from TextPromptSegLib.modeling.testing import build_tiny_model


@pytest.mark.slow
def test_memory_beats_no_memory_on_faded_frames(tiny_text_encoder_dir):
    torch.set_num_threads(2)
    model = build_tiny_model(tiny_text_encoder_dir, seed=1)
    train(model, steps=300, batch=4, frames=4, seed=5, lr=2e-3, fade_after=2, both_objects=False)

    images, discs, _ = make_sequences(16, 4, model.image_size, seed=998, fade_after=2)
    with_memory = predict(model, images, "the bright disc", use_memory=True)
    without = predict(model, images, "the bright disc", use_memory=False)
    faded = slice(2, None)
    d_memory = dice(with_memory[:, faded].flatten(0, 1), discs[:, faded].flatten(0, 1))
    d_without = dice(without[:, faded].flatten(0, 1), discs[:, faded].flatten(0, 1))
    print(f"faded frames: Dice with memory {d_memory:.3f}, without memory {d_without:.3f}")
    assert d_memory >= 0.8
    assert d_memory >= d_without + 0.15
