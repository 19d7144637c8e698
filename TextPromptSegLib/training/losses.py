"""Losses: Dice + BCE on mask logits, and BCE on SAM-2's object score so that empty slices are learnt."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over the leading dimension of soft Dice loss + BCE; logits and target (N, H, W)."""
    target = target.float()
    prob = torch.sigmoid(logits)
    inter = (prob * target).flatten(1).sum(1)
    dice = 1 - (2 * inter + smooth) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + smooth)
    return dice.mean() + F.binary_cross_entropy_with_logits(logits, target)


def sequence_loss(out: dict[str, torch.Tensor], masks: torch.Tensor, object_weight: float = 1.0) -> torch.Tensor:
    """Loss of ``TGSAM2.forward_sequence`` outputs against masks (B, T, S, S).

    Mask loss on frames that contain the object (SAM-2 replaces the masks of frames it calls empty by a constant,
    so they carry no gradient), object-score BCE on every frame.
    """
    logits = out["mask_logits"][:, :, 0].flatten(0, 1)
    target = masks.flatten(0, 1)
    present = target.flatten(1).any(1)
    loss = out["object_score_logits"].new_zeros(())
    if present.any():
        loss = loss + dice_bce_loss(logits[present], target[present])
    scores = out["object_score_logits"].flatten(0, 1)[:, 0]
    return loss + object_weight * F.binary_cross_entropy_with_logits(scores, present.float())
