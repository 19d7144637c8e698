"""Synthetic 2D+t sequences for model tests: a bright disc and a dark square moving slowly on noise.

Arrays are (B, T, 3, S, S) images in [0, 1] and (B, T, S, S) boolean masks. The same generator makes the clips of
the model-learning tests and the moving-object sequences of the 2D+t tests (grey "ultrasound" or tinted RGB
"endoscopy" frames, optionally with frames where the objects fade out); ``scripts/train_sequence_fixture.py``
trains the committed sequence fixture model with :func:`train`. ``train`` and ``predict`` take a TGSAM-2 or a TPP
model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

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
                   fade_contrast: float = 0.04, *, faded: Optional[Sequence[int]] = None, speed: float = 0.02,
                   tint: bool = False, as_recorded: bool = False, min_speed: float = 0.0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n sequences with both objects in every frame.

    Returns images (n, T, 3, S, S), disc masks and square masks (n, T, S, S). With ``fade_after`` both objects
    drop to ``fade_contrast`` against the background from that frame on (the memory test); ``faded`` names the
    faded frames explicitly instead. ``speed``: the largest per-frame displacement of an object along each axis
    as a fraction of S; ``min_speed``: the smallest per-frame displacement (its norm), 0 allowing still objects.
    ``tint``: each sequence gets a random colour (RGB "endoscopy" frames) instead of grey.
    ``as_recorded``: the images the engine makes of the recorded frames (:func:`frames_array`): 8-bit, then
    percentile-normalised per sequence (grey, "ultrasound") or divided by 255 (RGB) -- what training should see.
    """
    rng = np.random.default_rng(seed)
    faded_frames = set(range(fade_after, frames)) if fade_after is not None else set(faded or ())
    images = np.zeros((n, frames, size, size), np.float32)
    discs = np.zeros((n, frames, size, size), bool)
    squares = np.zeros_like(discs)
    for i in range(n):
        r, half = rng.uniform(0.08, 0.12) * size, rng.uniform(0.07, 0.1) * size
        while True:  # two well separated centres
            c = rng.uniform(0.25, 0.75, size=(2, 2)) * size
            if np.linalg.norm(c[0] - c[1]) > r + 1.5 * half + 0.1 * size:
                break
        v = rng.uniform(-speed, speed, size=(2, 2)) * size
        if min_speed > 0:
            norms = np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)
            v = v * np.maximum(1.0, min_speed * size / norms)
        for t in range(frames):
            (dy, dx), (sy, sx) = c[0] + t * v[0], c[1] + t * v[1]
            discs[i, t], squares[i, t] = _disc(size, dy, dx, r), _square(size, sy, sx, half)
            contrast = fade_contrast if t in faded_frames else 0.35
            img = 0.5 + rng.normal(0, 0.05, (size, size))
            img[discs[i, t]] += contrast
            img[squares[i, t]] -= contrast
            images[i, t] = img
    images = np.clip(images, 0, 1)
    rgb = torch.from_numpy(images)[:, :, None].expand(-1, -1, 3, -1, -1).contiguous()
    if tint:
        colours = torch.from_numpy(rng.uniform(0.55, 1.0, size=(n, 1, 3, 1, 1)).astype(np.float32))
        rgb = rgb * colours
    if as_recorded:
        from TextPromptSegLib.engine.preprocess import normalize_intensity

        recorded = [frames_array(seq, rgb=tint) for seq in rgb]
        normalised = [normalize_intensity(a, "endoscopy" if tint else "US") for a in recorded]
        rgb = torch.stack([torch.from_numpy(a).permute(0, 3, 1, 2) if tint else
                           torch.from_numpy(a)[:, None].expand(-1, 3, -1, -1) for a in normalised]).contiguous()
    return rgb, torch.from_numpy(discs), torch.from_numpy(squares)


def frames_array(images: torch.Tensor, rgb: bool = False) -> np.ndarray:
    """One sequence (T, 3, S, S) in [0, 1] -> uint8 frames as a recording stores them: (T, S, S) grey or
    (T, S, S, 3) RGB."""
    data = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return data.permute(0, 2, 3, 1).numpy() if rgb else data[:, 0].numpy()


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over the leading dimension of the library's Dice of boolean (N, H, W) frames (1.0 for a frame where
    both are empty)."""
    from TextPromptSegLib.training.metrics import dice as frame_dice

    pred, target = torch.as_tensor(pred).bool().numpy(), torch.as_tensor(target).bool().numpy()
    return float(np.mean([frame_dice(p, t) for p, t in zip(pred, target)]))


def _is_tpp(model) -> bool:
    from TextPromptSegLib.modeling.tpp import TPP

    return isinstance(model, TPP)


def train(model, steps: int, batch: int, frames: int, seed: int, lr: float = 2e-3, fade_after: int | None = None,
          both_objects: bool = True, fade_contrast: float = 0.04, final_lr: float | None = None, *,
          clip: Optional[Callable[[np.random.Generator], dict[str, Any]]] = None, mask_prompt_prob: float = 0.0,
          visual_prob: float = 0.0, trainable: Optional[Callable[[str], bool]] = None,
          max_grad_norm: Optional[float] = None, lr_at: Optional[Callable[[int], float]] = None,
          progress: Optional[Callable[[int, float], None]] = None) -> list[float]:
    """Train all but the frozen text encoder on text prompts; returns the loss curve.

    TGSAM-2: Dice + BCE on the masks and BCE on the object score. TPP: the training pipeline's objective
    (``tpp_loss``, best-query matching); half of its sequences get both prompt variants of the object (Np = 2,
    ``;``-separated), the others one (the visual-prompt options below are TGSAM-2's).
    final_lr: the lr follows a cosine from ``lr`` down to it (default: constant).

    clip(rng): per-step keyword arguments for :func:`make_sequences` (fade, speed, tint), overriding
    ``fade_after`` / ``fade_contrast``. mask_prompt_prob: the share of steps whose first frame also gets the
    target mask as a mask prompt (trains tracking from a drawn mask, as refinement uses it). visual_prob: the
    share of steps with no text at all, only that mask prompt (plain SAM-2 tracking: which object, and where it is,
    must come from the memory). trainable(name): which parameters to train (default: all but the text encoder).
    max_grad_norm: clip the gradient norm (and skip a step whose loss or gradient is not finite).
    lr_at(step): the learning rate of each step (default ``lr`` throughout).
    progress(step, loss) is called after every step.
    """
    from TextPromptSegLib.training.trainer import clip_objective

    tpp_objective = clip_objective(model) if _is_tpp(model) else None
    size = model.image_size
    params = [p for n, p in model.named_parameters()
              if not n.startswith("text_encoder.") and (trainable is None or trainable(n))]
    opt = torch.optim.Adam(params, lr=lr)
    schedule = None
    if final_lr is not None:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps - 1), eta_min=final_lr)
    model.train()
    losses = []
    gen = torch.Generator().manual_seed(seed)
    clip_rng = np.random.default_rng(seed)
    for step in range(steps):
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
        options: dict[str, Any] = {"fade_after": fade_after, "fade_contrast": fade_contrast}
        if clip is not None:
            options = {"fade_after": None, "fade_contrast": fade_contrast, **clip(clip_rng)}
        images, discs, squares = make_sequences(batch, frames, size, seed * 100_000 + step, **options)
        names = ["disc" if not both_objects or torch.rand((), generator=gen) < 0.5 else "square" for _ in range(batch)]
        prompts = [PROMPTS[k][int(torch.randint(2, (), generator=gen))] for k in names]
        target = torch.stack([discs[i] if k == "disc" else squares[i] for i, k in enumerate(names)])
        if tpp_objective is not None:
            both = [torch.rand((), generator=gen) < 0.5 for _ in range(batch)]
            prompts = ["; ".join(PROMPTS[k][::-1] if torch.rand((), generator=gen) < 0.5 else PROMPTS[k]) if b else p
                       for k, p, b in zip(names, prompts, both)]
            loss = tpp_objective(images, target, prompts)
        else:
            mask_prompt, text = None, model.encode_text(prompts)
            if mask_prompt_prob > 0 and clip_rng.random() < mask_prompt_prob:
                mask_prompt = target[:, :1].float()
            if visual_prob > 0 and clip_rng.random() < visual_prob:
                mask_prompt, text = target[:, :1].float(), None
            out = model.forward_sequence(images, text, mask_prompt=mask_prompt)
            logits = out["mask_logits"][:, :, 0]
            loss = dice_bce_loss(logits.flatten(0, 1), target.flatten(0, 1))
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
                out["object_score_logits"], torch.ones_like(out["object_score_logits"]))
        losses.append(_optimise(opt, params, loss, max_grad_norm))
        if schedule is not None:
            schedule.step()
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    return losses


def _optimise(opt, params, loss: torch.Tensor, max_grad_norm: Optional[float]) -> float:
    """One optimiser step; with ``max_grad_norm`` a step whose loss or gradient norm is not finite is skipped
    (returns NaN) rather than allowed to poison the weights."""
    opt.zero_grad()
    if max_grad_norm is not None and not torch.isfinite(loss):
        return float("nan")
    loss.backward()
    if max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if not torch.isfinite(norm):
            opt.zero_grad()
            return float("nan")
    opt.step()
    return loss.item()


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


def text_selection_scores(model, seed: int = 999) -> dict[str, float]:
    """Held-out two-object sequences (16 of 4 frames): Dice of each prompt's prediction against each object."""
    images, discs, squares = make_sequences(16, 4, model.image_size, seed=seed)
    disc_pred = predict(model, images, "the bright disc").flatten(0, 1)
    square_pred = predict(model, images, "the dark square").flatten(0, 1)
    discs, squares = discs.flatten(0, 1), squares.flatten(0, 1)
    return {
        "disc prompt vs disc": dice(disc_pred, discs),
        "square prompt vs square": dice(square_pred, squares),
        "disc prompt vs square": dice(disc_pred, squares),
        "square prompt vs disc": dice(square_pred, discs),
    }


def moving_object_sequence(seed: int, frames: int = 12, size: int = 128, rgb: bool = False,
                           faded: Optional[Sequence[int]] = None, fade_contrast: float = 0.0,
                           speed: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """One recorded 2D+t sequence: uint8 frames (T, S, S) grey ("ultrasound") or (T, S, S, 3) tinted RGB
    ("endoscopy"), and the bright disc's masks (T, S, S) bool. ``faded`` frames show the objects at
    ``fade_contrast`` only (acoustic shadow / glare)."""
    images, discs, _ = make_sequences(1, frames, size, seed, faded=faded, fade_contrast=fade_contrast, speed=speed,
                                      tint=rgb)
    return frames_array(images[0], rgb=rgb), discs[0].numpy()


# The correction scenario of the 2D+t tests: the disc drifts steadily and, from frame 4 on, is hidden by an
# "acoustic shadow" (contrast 0); the first pass can only carry it on from memory, so its masks lag further and
# further behind; the user draws the true disc on one shadowed frame.
SHADOW = tuple(range(4, 15))
CORRECTION_FRAME = 10
SHADOW_SEEDS = (4242, 501, 502, 503, 504, 505)


def shadowed_sequence(seed: int = SHADOW_SEEDS[0], frames: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """A grey sequence whose disc moves 1.5 % of the frame per step (at least) and is invisible on the ``SHADOW``
    frames: uint8 frames (T, S, S) and the disc's true masks (T, S, S)."""
    images, discs, _ = make_sequences(1, frames, 128, seed, faded=SHADOW, fade_contrast=0.0, speed=0.015,
                                      min_speed=0.015)
    return frames_array(images[0]), discs[0].numpy()
