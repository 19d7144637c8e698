"""Train the tiny TGSAM-2 of the 2D+t sequence tests on synthetic moving-object sequences.

    nice -n 10 env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_sequence_fixture.py

writes ``Testing/fixtures/tgsam2-tiny-sequences`` (fp16, about 1.9 MB) in three stages, about 15 minutes on one
CPU thread; one thread makes the run deterministic for a given torch build (the committed file was made with
torch 2.13.0+cpu). The clips come from ``Testing/lib/synthetic.py``: a bright disc and a dark square drifting over
noise, grey "ultrasound" and tinted RGB "endoscopy" frames exactly as the engine prepares recorded frames, with
the text prompt "the bright disc" / "the dark square" (or, in text-free clips, only a mask prompt on the first
frame). The text encoder is the offline MiniLM package.

1. ``stage1`` (800 steps): text-prompted segmentation and tracking; 45 % of the clips fade out for a stretch or
   to the end; 30 % also get the target's mask on the first frame.
2. ``stage2`` (600 steps): the memory. A stage-1 model attends almost only to the memory's object-pointer tokens
   (its spatial memory gets no gradient), so the memory encoder and the memory cross-attention's query/key
   projections are re-initialised and trained on clips that only the spatial memory can solve: the objects
   vanish after the first frame (half of the clips with no text at all, only the first frame's mask).
3. ``stage3`` (800 steps): both together (40 % memory clips, the rest as in stage 1, 20 % text-free).

Each stage takes the previous stage's fp16 checkpoint; the learning rate is 1e-3, a quarter of it for the last
20 % of a stage's schedule; gradients are clipped at norm 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing" / "lib"))
sys.path.insert(0, str(ROOT))

log = logging.getLogger("train_sequence_fixture")


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    seed: int
    init: Optional[str] = None  # the stage whose checkpoint this one starts from
    schedule_steps: int = 0  # length of the learning-rate schedule (0: ``steps``)
    reset_memory: bool = False
    clips: str = "mixed"  # "mixed" (clip_options) or "memory" (memory_clip_options)
    memory_share: float = 0.0  # mixed stages: share of memory clips
    fade_share: float = 0.45
    fade_end: float = 0.25  # share of clips that fade to the end (the rest of the fading ones come back)
    visual_share: float = 0.0
    mask_prompt_share: float = 0.3


RECIPE = (
    Stage("stage1", steps=800, seed=11, schedule_steps=2000),
    Stage("stage2", steps=600, seed=20, init="stage1", reset_memory=True, clips="memory", visual_share=0.5),
    Stage("stage3", steps=800, seed=21, init="stage2", memory_share=0.4, fade_end=0.45 * 0.55, visual_share=0.2),
)


def memory_clip_options(rng: np.random.Generator, frames: int) -> dict:
    """A clip only the spatial memory can solve: the objects drift slowly and vanish (contrast 0) after the first
    frame, so every later mask must come from where the memory saw them."""
    return {"speed": 0.01, "tint": bool(rng.random() < 0.5), "as_recorded": True, "faded": list(range(1, frames)),
            "fade_contrast": 0.0}


def clip_options(rng: np.random.Generator, frames: int, fade_share: float, fade_end: float) -> dict:
    """A clip moving at up to 3 % of the frame per step, grey or tinted; ``fade_share`` of them fade (contrast 0
    to 0.08 against noise of 0.05), ``fade_end`` of all clips to the end, the others for a stretch. Faded frames
    still show the object in the target: only the memory knows where it is."""
    options = {"speed": 0.03, "tint": bool(rng.random() < 0.5), "as_recorded": True}
    draw = rng.random()
    if draw < fade_share:
        start = int(rng.integers(1, frames))
        stop = frames if draw < fade_end else int(rng.integers(start + 1, frames + 1))
        options["faded"] = list(range(start, stop))
        options["fade_contrast"] = float(rng.uniform(0.0, 0.08))
    return options


def pick_clip(rng: np.random.Generator, stage: Stage, frames: int) -> dict:
    if stage.clips == "memory" or (stage.memory_share > 0 and rng.random() < stage.memory_share):
        return memory_clip_options(rng, frames)
    return clip_options(rng, frames, stage.fade_share, stage.fade_end)


def run_stage(stage: Stage, init: Optional[Path], out: Path, batch: int = 4, frames: int = 4,
              lr: float = 1e-3) -> dict:
    """Train one stage and save it (fp16) to ``out``; returns the stage's metadata."""
    from synthetic import train

    from TextPromptSegLib.modeling.build import build_model
    from TextPromptSegLib.modeling.checkpoint import save_checkpoint
    from TextPromptSegLib.modeling.config import get_config

    torch.manual_seed(stage.seed)
    model = build_model(init) if init else build_model(get_config("tiny"))
    if stage.reset_memory:
        for layer in model.memory_attention.layers:
            layer.cross_attn_image.q_proj.reset_parameters()
            layer.cross_attn_image.k_proj.reset_parameters()
        for module in model.memory_encoder.modules():
            if module is not model.memory_encoder and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    start = time.perf_counter()
    skipped: list[int] = []

    def progress(step: int, loss: float) -> None:
        if not np.isfinite(loss):
            skipped.append(step)
        if (step + 1) % 50 == 0:
            log.info("%s step %d loss %.3f (%.0f s, %d skipped)", stage.name, step + 1, loss,
                     time.perf_counter() - start, len(skipped))

    drop = int((stage.schedule_steps or stage.steps) * 0.8)
    train(model, stage.steps, batch, frames, seed=stage.seed, lr=lr, clip=lambda rng: pick_clip(rng, stage, frames),
          mask_prompt_prob=stage.mask_prompt_share, visual_prob=stage.visual_share, max_grad_norm=1.0,
          lr_at=lambda step: lr if step < drop else lr / 4, progress=progress)
    meta = {**{k: str(v) for k, v in asdict(stage).items()}, "skipped_steps": str(len(skipped)),
            "seconds": f"{time.perf_counter() - start:.0f}"}
    save_checkpoint(model, out, half=True, metadata=meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Testing" / "fixtures" / "tgsam2-tiny-sequences")
    parser.add_argument("--work", type=Path, help="folder for the stage checkpoints (default: beside --out)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    from TextPromptSegLib.modeling.build import build_model
    from TextPromptSegLib.modeling.checkpoint import save_checkpoint

    work = args.work or args.out.parent / f".{args.out.name}-stages"
    paths: dict[str, Path] = {}
    metadata: dict[str, str] = {"recipe": "scripts/train_sequence_fixture.py", "torch": torch.__version__}
    for stage in RECIPE:
        paths[stage.name] = work / stage.name
        meta = run_stage(stage, paths[stage.init] if stage.init else None, paths[stage.name])
        metadata.update({f"{stage.name}.{k}": v for k, v in meta.items()})
    final = build_model(paths[RECIPE[-1].name])
    save_checkpoint(final, args.out, half=True, metadata=metadata)
    log.info("saved %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
