"""A resumable trainer for TGSAM-2 clips: Adam (lr halved every ``decay_every`` steps, as the paper's x0.5 per
10 epochs), AMP on CUDA, checkpoints with optimiser, scheduler and sampler state, and a CSV log."""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from ..modeling.checkpoint import load_checkpoint, save_checkpoint
from .data import ClipSampler
from .losses import sequence_loss

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 2
    clip_length: int = 3
    lr: float = 1e-4
    decay_every: int = 10_000
    trainable: str = "all"  # "adapters" | "adapters+decoder" | "all" (the text encoder stays frozen)
    checkpoint_every: int = 200
    seed: int = 0
    augment_spatial: float = 0.0  # probability of a random affine per clip
    max_minutes: float = 0.0  # > 0: stop (and save) after this long; the lr then halves 3 times over the budget


def trainable_parameters(model, mode: str) -> list[torch.nn.Parameter]:
    from ..modeling.tgsam2 import is_adapter_key

    def wanted(name: str) -> bool:
        if name.startswith("text_encoder."):
            return False
        if mode == "all":
            return True
        if mode == "adapters":
            return is_adapter_key(name)
        if mode == "adapters+decoder":
            return is_adapter_key(name) or name.startswith(("sam_mask_decoder.", "sam_prompt_encoder."))
        raise ValueError(f"unknown trainable mode {mode!r}")

    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(wanted(name))
        if param.requires_grad:
            params.append(param)
    return params


class Trainer:
    def __init__(self, model, sampler: ClipSampler, config: TrainConfig, out_dir: Path) -> None:
        self.model, self.sampler, self.config, self.out_dir = model, sampler, config, Path(out_dir)
        self.params = trainable_parameters(model, config.trainable)
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.decay_every, gamma=0.5)
        self.step = 0
        torch.manual_seed(config.seed)

    def save(self) -> Path:
        folder = self.out_dir / "last"
        save_checkpoint(self.model, folder, metadata={"step": self.step})
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "step": self.step, "sampler": self.sampler.state(), "torch_rng": torch.get_rng_state()},
                   folder / "trainer_state.pt")
        return folder

    def resume(self, folder: Optional[Path] = None) -> bool:
        folder = Path(folder or self.out_dir / "last")
        if not (folder / "trainer_state.pt").is_file():
            return False
        load_checkpoint(self.model, folder)
        state = torch.load(folder / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at step %d", folder, self.step)
        return True

    def train_step(self) -> float:
        self.model.train()
        images, masks, prompts = self.sampler.sample(self.config.batch_size)
        device = next(self.model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = self.model.forward_sequence(images.to(device), self.model.encode_text(prompts))
            loss = sequence_loss(out, masks.to(device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.item()

    def fit(self, steps: Optional[int] = None, log_every: int = 20) -> list[float]:
        steps = steps if steps is not None else self.config.steps
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "train_config.json").write_text(json.dumps(asdict(self.config), indent=2), encoding="utf-8")
        log_path = self.out_dir / "log.csv"
        new = not log_path.exists()
        losses: list[float] = []
        start = time.perf_counter()
        with log_path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", "loss", "lr", "seconds"])
            first_step, mark, fitted = self.step, None, False
            while self.step < steps:
                elapsed = time.perf_counter() - start
                budget = 60 * self.config.max_minutes
                if budget and elapsed > budget:
                    log.info("time budget of %.1f min reached at step %d", self.config.max_minutes, self.step)
                    break
                if budget and mark is None and self.step == first_step + 20:  # after warm-up (CUDA, caches)
                    mark = (self.step, elapsed)
                measured = mark is not None and self.step >= mark[0] + 10 and elapsed > 0.1 * budget
                if budget and measured and not fitted:  # fit the schedule to the budget
                    rate = (self.step - mark[0]) / max(elapsed - mark[1], 1e-6)
                    total = self.step - first_step + int(rate * (budget - elapsed))
                    self.scheduler.step_size = max(1, total // 4)
                    fitted = True
                    log.info("about %d steps fit the budget; lr halves every %d", total, self.scheduler.step_size)
                loss = self.train_step()
                losses.append(loss)
                if self.step % log_every == 0:
                    mean = sum(losses[-log_every:]) / len(losses[-log_every:])
                    writer.writerow([self.step, f"{mean:.5f}", self.scheduler.get_last_lr()[0],
                                     f"{time.perf_counter() - start:.1f}"])
                    fh.flush()
                    log.info("step %d loss %.4f", self.step, mean)
                if self.step % self.config.checkpoint_every == 0:
                    self.save()
        self.save()
        self.model.eval()
        return losses
