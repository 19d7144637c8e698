"""TPP through the shared training pipeline (issue 6): the same ``Trainer`` with TPP's objective (``tpp_loss``,
Eqs. 13-15) learns on two real LA2018 cases, resuming gives exactly the next-step loss of an uninterrupted run, and
``textpromptseg train`` with a ``{"type": "tpp"}`` model writes a checkpoint that the registry path loads as a TPP."""

from __future__ import annotations

import json

import pytest
import torch

from TextPromptSegLib.cli import main
from TextPromptSegLib.modeling.testing import build_tiny_tpp
from TextPromptSegLib.modeling.tpp import TPP, is_tpp_checkpoint
from TextPromptSegLib.registry import load_model, resolve
from TextPromptSegLib.training.data import ClipSampler
from TextPromptSegLib.training.trainer import TrainConfig, Trainer, _TPPClipForward


def _trainer(model, cases, out, steps):
    config = TrainConfig(steps=steps, batch_size=2, clip_length=2, lr=1e-3, checkpoint_every=1000, seed=0,
                         prompts_per_clip=3)
    sampler = ClipSampler(cases, config.clip_length, seed=0, prompts_per_clip=config.prompts_per_clip)
    return Trainer(model, sampler, config, out)


def test_tpp_loss_decreases_and_the_checkpoint_loads_through_the_registry(la_cases, tiny_text_encoder_dir, tmp_path):
    model = build_tiny_tpp(tiny_text_encoder_dir, seed=0)
    trainer = _trainer(model, la_cases, tmp_path, 40)
    assert isinstance(trainer.forward, _TPPClipForward)
    losses = trainer.fit(log_every=10)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert (tmp_path / "log.csv").read_text().count("\n") >= 4
    last = tmp_path / "last"
    assert is_tpp_checkpoint(last) and resolve(str(last))[0] == "tpp"
    loaded = load_model(str(last))
    assert isinstance(loaded, TPP)
    for key, value in model.state_dict().items():
        if not key.startswith("text_encoder."):
            assert torch.equal(loaded.state_dict()[key], value), key


def test_tpp_resume_gives_the_same_next_step_loss(la_cases, tiny_text_encoder_dir, tmp_path):
    trainer = _trainer(build_tiny_tpp(tiny_text_encoder_dir, seed=0), la_cases, tmp_path, 3)
    trainer.fit()  # saves a checkpoint (weights, optimiser, sampler and RNG state) at step 3
    uninterrupted = trainer.train_step()

    resumed = _trainer(build_tiny_tpp(tiny_text_encoder_dir, seed=123), la_cases, tmp_path, 3)  # other init
    assert resumed.resume() and resumed.step == 3
    assert resumed.train_step() == pytest.approx(uninterrupted, rel=0, abs=1e-6)


def test_cli_trains_a_tpp_from_a_config(shared_data, tiny_text_encoder_dir, tmp_path, capsys):
    spec = {"model": {"type": "tpp", "preset": "tiny",
                      "text": {"model_id_or_path": str(tiny_text_encoder_dir), "max_length": 16}},
            "data": str(shared_data), "datasets": ["la2018"], "la2018_cases": 1, "crop_margin": 0,
            "image_size": 96,
            "train": {"steps": 4, "batch_size": 1, "clip_length": 2, "lr": 1e-3, "checkpoint_every": 2, "seed": 0}}
    (tmp_path / "tpp.json").write_text(json.dumps(spec))
    assert main(["train", str(tmp_path / "tpp.json"), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    state = torch.load(tmp_path / "run" / "last" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 4 and "optimizer" in state and "torch_rng" in state and state["sampler"]
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["prompts_per_clip"] == 3
    model = load_model(str(tmp_path / "run" / "last"))
    assert isinstance(model, TPP) and model.image_size == 96 and model.config.name == "tiny"
