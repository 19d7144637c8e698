"""Synthetic 2D+t sequences for model tests: a bright disc and a dark square moving slowly on noise.

Arrays are (B, T, 3, S, S) images in [0, 1] and (B, T, S, S) boolean masks. ``train`` and ``predict`` take a
TGSAM-2 or a TPP model.
"""

from __future__ import annotations

import numpy as np
import torch

from TextPromptSegLib.training.losses import dice_bce_loss

PROMPTS = {"disc": ("the bright disc", "a bright round disc"), "square": ("the dark square", "a dark square")}


def _disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _square(size: int, cy: float, cx: float, half: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)


def make_sequences(n: int, frames: int, size: int, seed: int, fade_after: int | None = None,
                   fade_contrast: float = 0.04) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n sequences with both objects in every frame.

    Returns images (n, T, 3, S, S), disc masks and square masks (n, T, S, S). With ``fade_after`` both objects
    drop to ``fade_contrast`` against the background from that frame on (the memory test).
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((n, frames, size, size), np.float32)
    discs = np.zeros((n, frames, size, size), bool)
    squares = np.zeros_like(discs)
    for i in range(n):
        r, half = rng.uniform(0.08, 0.12) * size, rng.uniform(0.07, 0.1) * size
        while True:  # two well separated centres
            c = rng.uniform(0.25, 0.75, size=(2, 2)) * size
            if np.linalg.norm(c[0] - c[1]) > r + 1.5 * half + 0.1 * size:
                break
        v = rng.uniform(-0.02, 0.02, size=(2, 2)) * size
        for t in range(frames):
            (dy, dx), (sy, sx) = c[0] + t * v[0], c[1] + t * v[1]
            discs[i, t], squares[i, t] = _disc(size, dy, dx, r), _square(size, sy, sx, half)
            contrast = fade_contrast if fade_after is not None and t >= fade_after else 0.35
            img = 0.5 + rng.normal(0, 0.05, (size, size))
            img[discs[i, t]] += contrast
            img[squares[i, t]] -= contrast
            images[i, t] = img
    images = np.clip(images, 0, 1)
    rgb = torch.from_numpy(images)[:, :, None].expand(-1, -1, 3, -1, -1).contiguous()
    return rgb, torch.from_numpy(discs), torch.from_numpy(squares)


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean Dice over the leading dimension of boolean (N, H, W) tensors."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    return float(((2 * inter + 1e-6) / (pred.sum(1) + target.sum(1) + 1e-6)).mean())


def _is_tpp(model) -> bool:
    from TextPromptSegLib.modeling.tpp import TPP

    return isinstance(model, TPP)


def train(model, steps: int, batch: int, frames: int, seed: int, lr: float = 2e-3, fade_after: int | None = None,
          both_objects: bool = True, fade_contrast: float = 0.04, final_lr: float | None = None) -> list[float]:
    """Train all but the frozen text encoder on text-only prompts; returns the loss curve. ``final_lr``: the lr
    follows a cosine from ``lr`` down to it (default: constant).

    TGSAM-2: Dice + BCE on the masks and BCE on the object score. TPP: the training pipeline's objective
    (``tpp_loss``, best-query matching); half of its sequences get both prompt variants of the object (Np = 2,
    ``;``-separated), the others one."""
    from TextPromptSegLib.training.trainer import clip_objective

    tpp_objective = clip_objective(model) if _is_tpp(model) else None
    size = model.image_size
    params = [p for n, p in model.named_parameters() if not n.startswith("text_encoder.")]
    opt = torch.optim.Adam(params, lr=lr)
    schedule = None
    if final_lr is not None:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps - 1), eta_min=final_lr)
    model.train()
    losses = []
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        images, discs, squares = make_sequences(batch, frames, size, seed * 100_000 + step, fade_after, fade_contrast)
        names = ["disc" if not both_objects or torch.rand((), generator=gen) < 0.5 else "square" for _ in range(batch)]
        prompts = [PROMPTS[k][int(torch.randint(2, (), generator=gen))] for k in names]
        target = torch.stack([discs[i] if k == "disc" else squares[i] for i, k in enumerate(names)])
        if tpp_objective is not None:
            both = [torch.rand((), generator=gen) < 0.5 for _ in range(batch)]
            prompts = ["; ".join(PROMPTS[k][::-1] if torch.rand((), generator=gen) < 0.5 else PROMPTS[k]) if b else p
                       for k, p, b in zip(names, prompts, both)]
            loss = tpp_objective(images, target, prompts)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
            losses.append(loss.item())
            continue
        out = model.forward_sequence(images, model.encode_text(prompts))
        logits = out["mask_logits"][:, :, 0]
        loss = dice_bce_loss(logits.flatten(0, 1), target.flatten(0, 1))
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
            out["object_score_logits"], torch.ones_like(out["object_score_logits"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if schedule is not None:
            schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.inference_mode()
def predict(model, images: torch.Tensor, prompt: str, use_memory: bool = True) -> torch.Tensor:
    """Boolean masks (n, T, S, S) for one prompt over a batch of sequences. A TPP runs through the engine's TPP
    session from the first frame forwards (best query by class score; a frame it scores <= 0 stays empty)."""
    if _is_tpp(model):
        from TextPromptSegLib.engine.tpp_engine import TPPPropagator

        propagator = TPPPropagator(model, "cpu")
        return torch.stack([propagator.start_session(seq).propagate(prompt, start_index=0, direction="forward")
                            .masks() for seq in images])
    text = model.encode_text([prompt] * images.shape[0])
    out = model.forward_sequence(images, text, use_memory=use_memory)
    return out["mask_logits"][:, :, 0] > 0
