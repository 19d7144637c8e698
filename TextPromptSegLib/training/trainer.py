"""A resumable trainer for TGSAM-2 and TPP clips: Adam (lr halved every ``decay_every`` steps, as the paper's x0.5 per
10 epochs), AMP on CUDA, gradient accumulation, checkpoints with optimiser, scheduler and sampler state, a CSV log,
and multi-GPU / multi-node data parallelism through torch DistributedDataParallel when launched by ``torchrun``
(each rank samples its own clips; rank 0 writes logs and checkpoints).

The model-specific part is the *objective*: a module called as ``objective(images (B, T, 3, S, S), masks (B, T, S, S),
prompts [B])`` that returns the scalar loss (``clip_objective`` picks TGSAM-2's ``sequence_loss`` or TPP's
``tpp_loss``); everything else (optimiser, schedule, checkpoints, logs, DDP) is shared."""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from ..familiarity import TrainingRecord, record_of, training_record
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
    max_minutes: float = 0.0  # > 0: stop (and save) after this long; the lr then halves (at most) 3 times over the
    # budget, every quarter of the steps estimated from the rate measured after step 20
    grad_accum: int = 1  # micro-batches of ``batch_size`` clips per optimiser step
    prompts_per_clip: int = 1  # > 1: clips may get up to this many prompt variants joined by ';' (TPP's Np)
    p_object: float = 0.9  # probability that a clip starts on a slice with the structure (else anywhere in the
    # volume: with a pack cropped wide, that teaches the object score to leave slices without it empty)
    # first-frame visual prompts when training on cached features (features.FeatureClipSampler)
    p_box: float = 0.45
    p_clicks: float = 0.15
    p_no_text: float = 0.5


def trainable_parameters(model, mode: str) -> list[torch.nn.Parameter]:
    from ..modeling.tgsam2 import is_adapter_key

    frozen = model.frozen_parameter_names() if hasattr(model, "frozen_parameter_names") else frozenset()

    def wanted(name: str) -> bool:
        if name.startswith("text_encoder.") or name in frozen:
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
    if not params:
        raise ValueError(f"trainable mode {mode!r} selects no parameter of this model (TPP trains with 'all')")
    return params


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a ``torch.distributed`` process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _ClipForward(torch.nn.Module):
    """TGSAM-2's training forward pass and loss as one module call, so that DistributedDataParallel can hook it."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, masks: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return sequence_loss(self.model.forward_sequence(images, self.model.encode_text(prompts)), masks)


class _TPPClipForward(torch.nn.Module):
    """TPP's training forward pass and loss (Eqs. 13-15, ``tpp_loss``) over a batch of clips: each clip runs as its
    own sequence (the first image with Nq queries, then the propagated query) with its 1 to 3 prompts (a prompt with
    ``;`` is split, a single structure prompt is completed from the prompt library, exactly as at inference)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, masks: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from ..modeling.tpp import tpp_loss
        from ..prompts import prompt_set

        losses = [tpp_loss(self.model.forward_sequence(images[b], prompt_set(prompts[b])), masks[b])
                  for b in range(images.shape[0])]
        return torch.stack(losses).mean()


def clip_objective(model) -> torch.nn.Module:
    """The training objective module for ``model``: TPP or TGSAM-2 / SAM-2."""
    from ..modeling.tpp import TPP

    return _TPPClipForward(model) if isinstance(model, TPP) else _ClipForward(model)


class Trainer:
    """``objective``: a module ``(images, masks, prompts) -> loss`` wrapping ``model`` (default:
    ``clip_objective(model)``)."""

    def __init__(self, model, sampler: ClipSampler, config: TrainConfig, out_dir: Path,
                 objective: Optional[torch.nn.Module] = None, record: Optional[TrainingRecord] = None) -> None:
        self.model, self.sampler, self.config, self.out_dir = model, sampler, config, Path(out_dir)
        # what the checkpoints record they were trained on: the sampler's structures, prompts and datasets, with
        # what the initial weights had been trained on (``record_of(model)``: loaded with them)
        self.record = record or training_record(getattr(sampler, "cases", [])).merged(record_of(model))
        self.params = trainable_parameters(model, config.trainable)
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.decay_every, gamma=0.5)
        self.step = 0
        self.rank, self.world = dist_info()
        torch.manual_seed(config.seed)
        self.forward = objective if objective is not None else clip_objective(model)
        if self.world > 1:  # DDP broadcasts rank 0's weights now and averages gradients in backward
            from torch.nn.parallel import DistributedDataParallel

            device = next(model.parameters()).device
            self.forward = DistributedDataParallel(self.forward, device_ids=[device] if device.type == "cuda" else None,
                                                   find_unused_parameters=True)

    def save(self) -> Path:
        folder = self.out_dir / "last"
        samplers = [self.sampler.state()]
        if self.world > 1:
            import torch.distributed as dist

            samplers = [None] * self.world
            dist.all_gather_object(samplers, self.sampler.state())
        if self.rank == 0:
            save_checkpoint(self.model, folder, metadata={"step": self.step}, training=self.record.to_dict(),
                            calibration={})  # the initial weights' thresholds do not hold for the new ones
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "step": self.step, "sampler": samplers[0], "samplers": samplers,
                        "torch_rng": torch.get_rng_state()}, folder / "trainer_state.pt")
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        return folder

    def weights_digest(self) -> str:
        """SHA-256 of the stored weights: equal on every rank of a healthy data-parallel run."""
        import hashlib

        from ..modeling.checkpoint import _stored_state

        digest = hashlib.sha256()
        for key, value in sorted(_stored_state(self.model).items()):
            digest.update(key.encode())
            digest.update(value.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

    def resume(self, folder: Optional[Path] = None) -> bool:
        folder = Path(folder or self.out_dir / "last")
        if not (folder / "trainer_state.pt").is_file():
            return False
        load_checkpoint(self.model, folder)
        state = torch.load(folder / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        samplers = state.get("samplers") or [state["sampler"]]
        if self.rank < len(samplers):
            self.sampler.set_state(samplers[self.rank])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at step %d", folder, self.step)
        return True

    def train_step(self) -> float:
        import contextlib

        self.model.train()
        device = next(self.model.parameters()).device
        self.optimizer.zero_grad(set_to_none=True)
        accum, total = max(1, self.config.grad_accum), 0.0
        for micro in range(accum):
            # (images or cached features, masks, prompts[, visual prompts of the first frame])
            inputs, masks, *rest = self.sampler.sample(self.config.batch_size)
            last = micro == accum - 1
            sync = contextlib.nullcontext() if last or self.world == 1 else self.forward.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = self.forward(inputs.to(device), masks.to(device), *rest) / accum
                loss.backward()
            total += loss.item()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return total

    def fit(self, steps: Optional[int] = None, log_every: int = 20, progress_bar: bool = False) -> list[float]:
        """Train up to ``steps`` (or the time budget); ``progress_bar`` shows a tqdm bar on rank 0."""
        from tqdm import tqdm

        steps = steps if steps is not None else self.config.steps
        bar = tqdm(total=steps, initial=self.step, unit="step", disable=not progress_bar or self.rank != 0,
                   dynamic_ncols=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.out_dir / "train_config.json").write_text(json.dumps(asdict(self.config), indent=2),
                                                            encoding="utf-8")
        log_path = self.out_dir / ("log.csv" if self.rank == 0 else f"log_rank{self.rank}.csv")
        new = not log_path.exists()
        losses: list[float] = []
        start = time.perf_counter()
        with log_path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", "loss", "lr", "seconds"])
            first_step, mark, fitted = self.step, None, False
            budget = 60 * self.config.max_minutes
            while self.step < steps:
                elapsed = time.perf_counter() - start
                stop, step_size = bool(budget and elapsed > budget), self.scheduler.step_size
                if budget and mark is None and self.step == first_step + 20:  # after warm-up (CUDA, caches)
                    mark = (self.step, elapsed)
                measured = mark is not None and self.step >= mark[0] + 10 and elapsed > 0.1 * budget
                if budget and measured and not fitted:  # fit the schedule to the budget
                    rate = (self.step - mark[0]) / max(elapsed - mark[1], 1e-6)
                    total = self.step - first_step + int(rate * (budget - elapsed))
                    step_size, fitted = max(1, total // 4), True
                    log.info("about %d steps fit the budget; lr halves every %d", total, step_size)
                if budget and fitted and self.scheduler.get_last_lr()[0] <= self.config.lr / 8 * (1 + 1e-6):
                    step_size = 1 << 30  # 3 halvings per budget at most: on a shared machine the rate can rise later
                if budget and self.world > 1:  # every rank follows rank 0's clock
                    stop, step_size = self._from_rank0(stop, step_size)
                self.scheduler.step_size = step_size
                if stop:
                    log.info("time budget of %.1f min reached at step %d", self.config.max_minutes, self.step)
                    break
                loss = self.train_step()
                losses.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}", refresh=False)
                if self.step % log_every == 0:
                    mean = sum(losses[-log_every:]) / len(losses[-log_every:])
                    writer.writerow([self.step, f"{mean:.5f}", self.scheduler.get_last_lr()[0],
                                     f"{time.perf_counter() - start:.1f}"])
                    fh.flush()
                    log.info("step %d loss %.4f", self.step, mean)
                if self.step % self.config.checkpoint_every == 0:
                    self.save()
        bar.close()
        self.save()
        self._record_rank_digests()
        self.model.eval()
        return losses

    def _from_rank0(self, stop: bool, step_size: int) -> tuple[bool, int]:
        import torch.distributed as dist

        device = next(self.model.parameters()).device
        flags = torch.tensor([int(stop), step_size], dtype=torch.long, device=device)
        dist.broadcast(flags, 0)
        return bool(flags[0]), int(flags[1])

    def _record_rank_digests(self) -> None:
        """With several ranks, write every rank's weight digest to ``ranks.json`` (rank 0) and warn on a mismatch."""
        if self.world == 1:
            return
        import torch.distributed as dist

        digests = [None] * self.world
        dist.all_gather_object(digests, self.weights_digest())
        if self.rank == 0:
            (self.out_dir / "ranks.json").write_text(json.dumps({"world_size": self.world, "step": self.step,
                                                                 "weights_sha256": digests}, indent=2))
            if len(set(digests)) != 1:
                log.error("ranks ended with different weights: %s", digests)
