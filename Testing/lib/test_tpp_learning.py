"""TPP learns to follow text (issue 6, must-show 2): the synthetic two-object test of TGSAM-2 (issue 2) with a tiny
TPP. Two objects in every frame, the prompt picks one; trained through the training pipeline's TPP objective
(``tpp_loss``, best-query matching), predicted through the engine's TPP session (Nq = 5 queries on the first frame,
the best by class score, then the propagated query)."""

from __future__ import annotations

import pytest
import torch
from synthetic import text_selection_scores, train

from TextPromptSegLib.modeling.testing import build_tiny_tpp


@pytest.fixture()
def one_thread():
    """Deterministic and robust on a shared 2-core machine (no OpenMP spin-waiting); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_tiny_tpp_segments_the_named_object(tiny_text_encoder_dir, one_thread):
    model = build_tiny_tpp(tiny_text_encoder_dir, seed=1)
    assert model.config.num_queries == 5
    losses = train(model, steps=150, batch=4, frames=2, seed=3, lr=3e-3, final_lr=3e-4)
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])

    scores = text_selection_scores(model)  # held out, longer sequences
    print({k: round(v, 3) for k, v in scores.items()})
    assert scores["disc prompt vs disc"] >= 0.85 and scores["square prompt vs square"] >= 0.85
    assert scores["disc prompt vs square"] <= 0.2 and scores["square prompt vs disc"] <= 0.2
