"""TGSAM-2 learns to follow text (issue 2, must-show 3): two objects in every frame, the prompt picks one."""

from __future__ import annotations

import pytest
import torch
from synthetic import dice, make_sequences, predict, train

from TextPromptSegLib.modeling.testing import build_tiny_model


@pytest.mark.slow
def test_tiny_tgsam2_segments_the_named_object(tiny_text_encoder_dir):
    torch.set_num_threads(2)
    model = build_tiny_model(tiny_text_encoder_dir, seed=1)
    losses = train(model, steps=300, batch=4, frames=2, seed=3, lr=2e-3)
    assert sum(losses[-20:]) < 0.25 * sum(losses[:20])

    images, discs, squares = make_sequences(16, 4, model.image_size, seed=999)  # held out, longer sequences
    disc_pred = predict(model, images, "the bright disc").flatten(0, 1)
    square_pred = predict(model, images, "the dark square").flatten(0, 1)
    discs, squares = discs.flatten(0, 1), squares.flatten(0, 1)
    scores = {
        "disc prompt vs disc": dice(disc_pred, discs),
        "square prompt vs square": dice(square_pred, squares),
        "disc prompt vs square": dice(disc_pred, squares),
        "square prompt vs disc": dice(square_pred, discs),
    }
    print({k: round(v, 3) for k, v in scores.items()})
    assert scores["disc prompt vs disc"] >= 0.85 and scores["square prompt vs square"] >= 0.85
    assert scores["disc prompt vs square"] <= 0.2 and scores["square prompt vs disc"] <= 0.2
