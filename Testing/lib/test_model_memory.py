"""The memory bank is used (issue 2, must-show 4): the objects drift (2-3 % of the frame per step) and vanish
(contrast 0 against the noise) after the fourth frame, so every later mask can only come from the memory. The
committed sequence fixture (a tiny TGSAM-2 whose memory was trained by scripts/train_sequence_fixture.py) must
place the disc on the first vanished frame with its memory and find nothing without it. Where the disc was last
seen is in the recent frames' memories, not in the start frame's: a bank cut to the start frame scores 0.420
there instead of 0.507.

Inference only, on held-out sequences: a from-scratch training run inside the test (the former version) learned
the memory or not depending on the CPU's reduction order, and at a fade the model could still see, a model without
memory scored as well as one with it. The fixture's staged recipe is what teaches the spatial memory."""

from __future__ import annotations

import pytest
import torch
from synthetic import dice, make_sequences, predict

VISIBLE = 4  # frames 0-3 show the disc; frames 4.. are invisible
FRAMES = 6
SEEDS = (9101, 9102, 9103)  # held out: training clips use seeds 1_100_000 + step and up


@pytest.fixture(scope="module")
def vanishing_sequences(sequence_model):
    batches = [make_sequences(8, FRAMES, sequence_model.image_size, seed=s, faded=range(VISIBLE, FRAMES),
                              fade_contrast=0.0, speed=0.03, min_speed=0.02, as_recorded=True) for s in SEEDS]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def test_memory_places_the_vanished_disc(sequence_model, vanishing_sequences):
    images, discs = vanishing_sequences
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with_memory = predict(sequence_model, images, "the bright disc", use_memory=True)
        without = predict(sequence_model, images, "the bright disc", use_memory=False)
    finally:
        torch.set_num_threads(threads)
    hidden = slice(VISIBLE, None)
    d_visible = dice(with_memory[:, :VISIBLE].flatten(0, 1), discs[:, :VISIBLE].flatten(0, 1))
    d_memory = dice(with_memory[:, VISIBLE], discs[:, VISIBLE])
    d_without = dice(without[:, hidden].flatten(0, 1), discs[:, hidden].flatten(0, 1))
    print(f"visible frames {d_visible:.3f}; first invisible frame with memory {d_memory:.3f}; "
          f"invisible frames without memory {d_without:.3f}")
    assert d_visible >= 0.95  # measured 0.974
    assert d_memory >= 0.46  # measured 0.507 (a bank of the start frame only: 0.420)
    assert d_without <= 0.02  # measured 0.000: nothing in the image says where the disc is
