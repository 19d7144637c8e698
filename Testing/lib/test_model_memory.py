"""The memory bank is used (issue 2, must-show 4): the objects fade to a contrast below the noise in later frames
while moving smoothly; tracking with memory must beat the same model without memory.

One thread: multi-threaded CPU reductions change the training trajectory from run to run; one thread makes the
run deterministic, so the margin measured here is the margin CI sees."""

from __future__ import annotations

import pytest
import torch
from synthetic import dice, make_sequences, predict, train

from TextPromptSegLib.modeling.testing import build_tiny_model


@pytest.mark.slow
def test_memory_beats_no_memory_on_faded_frames(tiny_text_encoder_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_memory_margin(tiny_text_encoder_dir)
    finally:
        torch.set_num_threads(threads)


def _check_memory_margin(tiny_text_encoder_dir) -> None:
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
