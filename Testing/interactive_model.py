"""Synthetic moving objects and a tiny TGSAM-2 that tracks them, for the refinement tests (issue 5).

A random-weight model does not move "toward" anything, so the refinement tests use a tiny TGSAM-2 trained on
these scenes (``scripts/train_interactive_test_model.py``, committed as ``Testing/fixtures/tgsam2-tiny-interactive``).

Scenes: two bright discs (A and B: the same kind of object, as the two kidneys are) and a dark square (Q) on
noise, each moving slowly. Every array is frame-major: images (T, S, S) float32 in [0, 1], masks (T, S, S) bool.
The model learns what the engine asks of it: text alone ("the bright disc" = every bright disc), a mask prompt
(track that mask, even one disc of two), clicks and boxes (the object under them), and corrective clicks on a
current mask (SAM-2's dense prompt: a positive click adds the clicked object, a negative one removes it); objects
may leave the field (all of them, or one disc before the other; empty frames, object score < 0). Visual prompts
come with a class text (40 %) or with a text that says nothing ("the object", 60 %): otherwise the text, which
alone finds both discs, is a shortcut that a tiny model takes instead of learning clicks and memory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tgsam2-tiny-interactive"
DISC_PROMPTS = ("the bright disc", "a bright round disc")
SQUARE_PROMPTS = ("the dark square", "a dark square")
GENERIC_PROMPTS = ("the object", "the structure")  # text that says nothing: the visual prompt decides
TASKS = ("text", "mask", "points", "box", "correct")
TASK_WEIGHTS = (0.1, 0.2, 0.2, 0.2, 0.3)  # how often train() draws each task
# the current mask of a corrective click enters as logits of +-(scale / 2); the engine clamps the model's own logits
# to +-32 as SAM-2 does, and a tiny model's are typically within +-20
PREV_LOGIT_SCALE = (8.0, 40.0)


@dataclass
class Scene:
    """images (T, S, S) float32 in [0, 1]; a, b (bright discs) and q (dark square): (T, S, S) bool masks."""

    images: np.ndarray
    a: np.ndarray
    b: np.ndarray
    q: np.ndarray


def make_scene(frames: int, size: int, rng: np.random.Generator, present: Optional[tuple[int, int]] = None,
               target_leaves: Optional[tuple[str, int]] = None, speed: float = 0.015,
               contrast_jitter: bool = False, faded: Optional[tuple[int, int]] = None,
               fade_contrast: float = 0.05, with_b: bool = True,
               b_frames: Optional[tuple[int, int]] = None) -> Scene:
    """Two bright discs and a dark square drifting on noise.

    present: (first, last) frames holding objects (inclusive; outside: noise only). target_leaves: (object,
    frame): that object ("a", "b" or "q") is gone from that frame on, the others stay. faded: (first, last)
    frames where the objects stand only ``fade_contrast`` above or below the background (noise sd 0.05): there
    the image alone cannot tell where they are, only a prompt or the memory can. with_b=False: no disc B;
    b_frames: (first, last) frames holding disc B (inclusive; default: those of the others).
    """
    first, last = present if present is not None else (0, frames - 1)
    while True:  # three well separated centres
        centres = rng.uniform(0.22, 0.78, size=(3, 2)) * size
        if min(np.linalg.norm(centres[i] - centres[j]) for i, j in ((0, 1), (0, 2), (1, 2))) > 0.3 * size:
            break
    radii = rng.uniform(0.07, 0.1, size=2) * size
    half = rng.uniform(0.06, 0.08) * size
    velocity = rng.uniform(-speed, speed, size=(3, 2)) * size
    yy, xx = np.mgrid[:size, :size]
    images = 0.5 + rng.normal(0, 0.05, (frames, size, size))
    masks = {k: np.zeros((frames, size, size), bool) for k in "abq"}
    for t in range(frames):
        if not first <= t <= last:
            continue
        c = centres + (t - first) * velocity
        masks["a"][t] = (yy - c[0, 0]) ** 2 + (xx - c[0, 1]) ** 2 <= radii[0] ** 2
        b_here = with_b and (b_frames is None or b_frames[0] <= t <= b_frames[1])
        masks["b"][t] = (yy - c[1, 0]) ** 2 + (xx - c[1, 1]) ** 2 <= radii[1] ** 2 if b_here else False
        masks["q"][t] = (np.abs(yy - c[2, 0]) <= half) & (np.abs(xx - c[2, 1]) <= half)
        if target_leaves is not None and t >= target_leaves[1]:
            masks[target_leaves[0]][t] = False
        contrast = fade_contrast if faded is not None and faded[0] <= t <= faded[1] else 0.35
        images[t][masks["a"][t] | masks["b"][t]] += contrast
        images[t][masks["q"][t]] -= contrast
    if contrast_jitter:  # what intensity normalisation of a real volume may do to these levels
        images = (images - 0.5) * rng.uniform(0.8, 1.3) + 0.5 + rng.uniform(-0.06, 0.06)
    return Scene(np.clip(images, 0, 1).astype(np.float32), masks["a"], masks["b"], masks["q"])


def _inside(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A random (row, col) inside a 2D mask, away from its border when possible."""
    core = mask
    for _ in range(2):  # erode by the 4-neighbourhood twice
        padded = np.pad(core, 1)
        core = core & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    rows, cols = np.nonzero(core if core.any() else mask)
    i = rng.integers(len(rows))
    return float(rows[i]), float(cols[i])


def _box(mask: np.ndarray, rng: np.random.Generator, jitter: float = 2.0) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    j = rng.uniform(-jitter, jitter, 4)
    return float(r0 + j[0]), float(c0 + j[1]), float(r1 + j[2]), float(c1 + j[3])


def make_batch(task: str, batch: int, frames: int, size: int, rng: np.random.Generator) -> dict:
    """One training batch of ``task`` (all clips of a batch share the prompt kind; frame 0 is prompted).

    Returns images (B, T, 3, S, S), target (B, T, S, S), prompts (B texts) and the task's visual prompts:
    mask (B, 1, S, S); points {"point_coords": (B, P, 2) model (x, y), "point_labels": (B, P)};
    prev_logits (B, 1, S/4, S/4) for corrective clicks.
    """
    import torch
    import torch.nn.functional as F

    images, targets, texts, masks, coords, labels, prev = [], [], [], [], [], [], []
    for _ in range(batch):
        with_b = rng.random() < 0.6
        present = (0, int(rng.integers(1, frames)) - 1) if rng.random() < 0.15 else None  # all leave the field
        faded = None
        if rng.random() < 0.5:  # a low-contrast stretch: only the prompt or the memory can find the objects
            faded = (int(rng.integers(1 if task == "text" else 0, frames)), frames - 1)
        names = ["a", "b", "q"] if with_b else ["a", "q"]
        if task == "text":
            choice = ("ab" if with_b else "a") if rng.random() < 0.6 else "q"
        elif task == "mask":
            choice = rng.choice([*names, "ab"] if with_b else names)
        else:
            choice = rng.choice(names)
        leaves = None
        if task in ("mask", "points", "box") and choice != "ab" and rng.random() < 0.15:
            leaves = (choice, int(rng.integers(1, frames)))
        elif task in ("text", "mask") and choice == "ab" and rng.random() < 0.3:  # one disc ends before the other
            leaves = (str(rng.choice(["a", "b"])), int(rng.integers(1, frames)))
        scene = make_scene(frames, size, rng, present=present, target_leaves=leaves, contrast_jitter=True,
                           faded=faded, fade_contrast=float(rng.uniform(0.02, 0.08)), with_b=with_b)
        objects = {"a": scene.a, "b": scene.b, "q": scene.q, "ab": scene.a | scene.b}
        if task != "text" and rng.random() < 0.6:
            texts.append(GENERIC_PROMPTS[rng.integers(2)])
        else:
            texts.append(DISC_PROMPTS[rng.integers(2)] if choice != "q" else SQUARE_PROMPTS[rng.integers(2)])
        target = objects[choice]
        point_list: list[tuple[float, float]] = []
        label_list: list[int] = []
        if task == "mask":
            masks.append(target[0])
        elif task == "points":
            point_list.append(_inside(target[0], rng))
            label_list.append(1)
            if rng.random() < 0.5:
                point_list.append(_inside(objects[rng.choice([n for n in names if n != choice])][0], rng))
                label_list.append(0)
        elif task == "box":
            r0, c0, r1, c1 = _box(target[0], rng)
            point_list += [(r0, c0), (r1, c1)]
            label_list += [2, 3]
        elif task == "correct":  # the current mask X, a click on Y: +Y -> X and Y; -Y on X and Y -> X
            second = rng.choice([n for n in names if n != choice])
            add = rng.random() < 0.5
            current = objects[choice][0] | (objects[second][0] if not add else False)
            point_list.append(_inside(objects[second][0], rng))
            label_list.append(1 if add else 0)
            target = (objects[choice] | objects[second]) if add else objects[choice]
            low = F.interpolate(torch.from_numpy(np.asarray(current))[None, None].float(),
                                size=(size // 4, size // 4), mode="area")[0, 0]
            prev.append((low - 0.5) * float(rng.uniform(*PREV_LOGIT_SCALE)))
        while len(point_list) < 2 and task in ("points", "correct"):
            point_list.append((0.0, 0.0))
            label_list.append(-1)
        images.append(scene.images)
        targets.append(target)
        coords.append([(c + 0.5, r + 0.5) for r, c in point_list])
        labels.append(label_list)
    images_t = torch.from_numpy(np.stack(images))[:, :, None].expand(-1, -1, 3, -1, -1).contiguous()
    out = {"images": images_t, "target": torch.from_numpy(np.stack(targets)), "prompts": texts,
           "mask": None, "points": None, "prev_logits": None}
    if task == "mask":
        out["mask"] = torch.from_numpy(np.stack(masks))[:, None].float()
    if task in ("points", "box", "correct"):
        out["points"] = {"point_coords": torch.tensor(coords, dtype=torch.float32),
                         "point_labels": torch.tensor(labels, dtype=torch.int32)}
    if task == "correct":
        out["prev_logits"] = torch.stack(prev)[:, None]
    return out


def build(text_max_length: int = 16):
    """An untrained tiny TGSAM-2 with the offline MiniLM text encoder (128 px input, SAM-1-style decoder)."""
    from TextPromptSegLib.modeling.build import build_model
    from TextPromptSegLib.modeling.config import get_config

    config = get_config("tiny", high_res_features=False)  # see TGSAM2Config.high_res_features
    config.text.max_length = text_max_length
    return build_model(config)


def _forward(model, batch: dict) -> dict:
    text = model.encode_text(batch["prompts"])
    return model.forward_sequence(batch["images"], text, mask_prompt=batch["mask"], point_prompt=batch["points"],
                                  prev_mask_logits=batch["prev_logits"])


def train(model, minutes: float, batch: int = 8, frames: int = 5, seed: int = 0, lr: float = 1e-3,
          log_every: int = 50, on_checkpoint=None, checkpoint_minutes: float = 10.0,
          task_weights: tuple[float, ...] = TASK_WEIGHTS) -> list[float]:
    """Train every part but the frozen text encoder for a budget of ``minutes`` of this process's CPU time (cosine
    learning rate; on one thread that is the training's own compute, so pauses and other load on the machine do
    not shorten it); returns losses. ``checkpoint_minutes`` is CPU time too."""
    import torch

    from TextPromptSegLib.training.losses import sequence_loss

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    params = [p for n, p in model.named_parameters() if not n.startswith("text_encoder.") and p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    weights = np.asarray(task_weights, float)
    model.train()
    losses: list[float] = []
    start = last_checkpoint = time.process_time()
    budget = minutes * 60
    step = 0
    while (elapsed := time.process_time() - start) < budget:
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * min(1.0, elapsed / budget)))
        task = TASKS[rng.choice(len(TASKS), p=weights / weights.sum())]
        data = make_batch(task, batch, frames, model.image_size, rng)
        loss = sequence_loss(_forward(model, data), data["target"])
        opt.zero_grad()
        if not torch.isfinite(loss):
            log.warning("step %d (%s): non-finite loss, skipped", step, task)
            continue
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)  # SAM-2 training blows up without it at this rate
        if not torch.isfinite(norm):  # a rare non-finite gradient would turn every weight into NaN
            log.warning("step %d (%s): non-finite gradient, skipped", step, task)
            opt.zero_grad()
            continue
        opt.step()
        losses.append(loss.item())
        if on_checkpoint is not None and time.process_time() - last_checkpoint > checkpoint_minutes * 60:
            last_checkpoint = time.process_time()
            on_checkpoint(model)
            model.train()
        step += 1
        if step % log_every == 0:
            log.info("step %d (%.0f s): loss %.4f (mean of last %d: %.4f)", step, elapsed, losses[-1], log_every,
                     float(np.mean(losses[-log_every:])))
    model.eval()
    return losses


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty): the library's."""
    from TextPromptSegLib.training.metrics import dice as library_dice

    return library_dice(pred, target)


def evaluate(model, clips: int = 24, frames: int = 8, seed: int = 12345) -> dict[str, float]:
    """Mean per-frame Dice of each task on held-out clips (longer than the training clips)."""
    import torch

    rng = np.random.default_rng(seed)
    out = {}
    with torch.inference_mode():
        for task in TASKS:
            data = make_batch(task, clips, frames, model.image_size, rng)
            pred = (_forward(model, data)["mask_logits"][:, :, 0] > 0).numpy()
            target = data["target"].numpy()
            out[task] = float(np.mean([dice(p, t) for p, t in zip(pred.reshape(-1, *pred.shape[2:]),
                                                                   target.reshape(-1, *target.shape[2:]))]))
    return out
