"""Issue 4, must-show 2: ``torchrun --nproc_per_node=2`` (gloo, CPU) runs the smoke training through the real
``textpromptseg train`` command under DistributedDataParallel, and both ranks end with identical weights, equal to
the checkpoint rank 0 wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from TextPromptSegLib.modeling.config import TextEncoderConfig
from TextPromptSegLib.modeling.text_encoder import TextEncoder, export_text_features
from TextPromptSegLib.training.data import PROMPTS


def test_torchrun_two_ranks_end_with_identical_weights(shared_data, tiny_text_encoder_dir, tmp_path, repo_root):
    encoder = TextEncoder(TextEncoderConfig(model_id_or_path=str(tiny_text_encoder_dir), max_length=16))
    export_text_features(encoder, PROMPTS["left atrium"], tmp_path / "text.safetensors")
    spec = {"model": "tiny", "data": str(shared_data), "datasets": ["la2018"], "la2018_cases": 2, "crop_margin": 0,
            "text_features": "text.safetensors",
            "train": {"steps": 4, "batch_size": 1, "clip_length": 2, "lr": 1e-3, "checkpoint_every": 2, "seed": 0}}
    out, first = _train_on_two_ranks(spec, tmp_path, repo_root)

    # the checkpoint on disk is those weights
    from TextPromptSegLib.modeling.build import build_model
    from TextPromptSegLib.modeling.text_encoder import CachedTextEncoder
    from TextPromptSegLib.training.trainer import TrainConfig, Trainer

    model = build_model(out / "last", text_encoder=CachedTextEncoder.load(tmp_path / "text.safetensors"))
    trainer = Trainer(model, _NoSampler(), TrainConfig(), tmp_path / "unused")
    assert trainer.weights_digest() == first


def _train_on_two_ranks(spec: dict, tmp_path, repo_root) -> tuple:
    """``textpromptseg train`` under torchrun with 2 CPU ranks (gloo) for 4 steps; both ranks must end with the
    same weights. Returns the run folder and that weights digest."""
    (tmp_path / "config.json").write_text(json.dumps(spec))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "TextPromptSegLib.cli", "train", str(tmp_path / "config.json"), "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=900, env=env, cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and ranks["step"] == 4
    first, second = ranks["weights_sha256"]
    assert first == second
    return out, first


class _NoSampler:
    def state(self):
        return {}


def test_torchrun_two_ranks_train_a_tpp_identically(shared_data, tiny_text_encoder_dir, tmp_path, repo_root):
    """The same DDP path with a TPP config (the Trainer's TPP objective): identical weights on both ranks, equal to
    the TPP checkpoint rank 0 wrote."""
    spec = {"model": {"type": "tpp", "preset": "tiny",
                      "text": {"model_id_or_path": str(tiny_text_encoder_dir), "max_length": 16}},
            "data": str(shared_data), "datasets": ["la2018"], "la2018_cases": 2, "crop_margin": 0, "image_size": 96,
            "train": {"steps": 4, "batch_size": 1, "clip_length": 2, "lr": 1e-3, "checkpoint_every": 2, "seed": 0}}
    out, first = _train_on_two_ranks(spec, tmp_path, repo_root)

    from TextPromptSegLib.modeling.tpp import TPP
    from TextPromptSegLib.registry import load_model
    from TextPromptSegLib.training.trainer import TrainConfig, Trainer

    model = load_model(str(out / "last"))
    assert isinstance(model, TPP)
    assert Trainer(model, _NoSampler(), TrainConfig(), tmp_path / "unused").weights_digest() == first
