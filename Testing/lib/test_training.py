"""Training smoke test on real data (issue 4, must-show 1): a tiny config on two LA2018 cases learns (the loss
decreases) and resuming from a checkpoint gives exactly the next-step loss of an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from TextPromptSegLib.modeling.testing import build_tiny_model
from TextPromptSegLib.training.data import ClipSampler
from TextPromptSegLib.training.trainer import TrainConfig, Trainer


def _trainer(model, cases, out, steps):
    config = TrainConfig(steps=steps, batch_size=2, clip_length=2, lr=1e-3, checkpoint_every=1000, seed=0)
    return Trainer(model, ClipSampler(cases, config.clip_length, seed=0), config, out)


def test_loss_decreases(la_cases, tiny_text_encoder_dir, tmp_path):
    torch.manual_seed(0)
    model = build_tiny_model(tiny_text_encoder_dir, seed=0)
    losses = _trainer(model, la_cases, tmp_path, 40).fit(log_every=10)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    assert (tmp_path / "log.csv").read_text().count("\n") >= 4 and (tmp_path / "last" / "model.safetensors").is_file()


def test_resume_gives_the_same_next_step_loss(la_cases, tiny_text_encoder_dir, tmp_path):
    model = build_tiny_model(tiny_text_encoder_dir, seed=0)
    trainer = _trainer(model, la_cases, tmp_path / "a", 3)
    trainer.fit()  # saves a checkpoint at step 3
    uninterrupted = trainer.train_step()

    resumed_model = build_tiny_model(tiny_text_encoder_dir, seed=123)  # different init: the checkpoint must win
    resumed = _trainer(resumed_model, la_cases, tmp_path / "a", 3)
    assert resumed.resume() and resumed.step == 3
    assert resumed.train_step() == pytest.approx(uninterrupted, rel=0, abs=1e-6)


def test_every_shipped_recipe_parses(tmp_path):
    """The configs the model card cites pass the trainer's config check (known keys, a valid TrainConfig) and name
    an existing model preset; a misspelt key such as "p_objct" fails at once instead of being ignored for a run."""
    from pathlib import Path

    import TextPromptSegLib.training as training
    from TextPromptSegLib.modeling.config import get_config
    from TextPromptSegLib.modeling.tpp import tpp_config
    from TextPromptSegLib.training.commands import read_training_config

    configs = sorted((Path(training.__file__).parent / "configs").glob("*.json"))
    assert len(configs) >= 8
    for path in configs:
        spec = read_training_config(path)
        model = spec.get("model", "small")
        model = {"type": "tgsam2", "preset": model} if isinstance(model, str) else model
        if model.get("type", "tgsam2") == "tpp":
            tpp_config(model.get("preset", "small"))
        else:
            get_config(model["preset"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "small", "sarcoma_repeat": 2}', encoding="utf-8")
    with pytest.raises(ValueError, match="sarcoma_repeat"):
        read_training_config(bad)
    bad.write_text('{"model": "small", "train": {"p_objct": 0.5}}', encoding="utf-8")
    with pytest.raises(ValueError, match="p_objct"):
        read_training_config(bad)
