"""TGSAM-2 learns to follow text (issue 2, must-show 3): two objects in every frame, the prompt picks one."""

from __future__ import annotations

import pytest
import torch
from synthetic import text_selection_scores, train

from TextPromptSegLib.modeling.testing import build_tiny_model


@pytest.mark.slow
def test_tiny_tgsam2_segments_the_named_object(tiny_text_encoder_dir):
    torch.set_num_threads(2)
    model = build_tiny_model(tiny_text_encoder_dir, seed=1)
    losses = train(model, steps=300, batch=4, frames=2, seed=3, lr=2e-3)
    assert sum(losses[-20:]) < 0.25 * sum(losses[:20])

    scores = text_selection_scores(model)  # held out, longer sequences
    print({k: round(v, 3) for k, v in scores.items()})
    assert scores["disc prompt vs disc"] >= 0.85 and scores["square prompt vs square"] >= 0.85
    assert scores["disc prompt vs square"] <= 0.2 and scores["square prompt vs disc"] <= 0.2
