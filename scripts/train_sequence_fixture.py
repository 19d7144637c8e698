"""Train the tiny TGSAM-2 of the 2D+t sequence tests on synthetic moving-object sequences.

    nice -n 10 env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_sequence_fixture.py \
        --out Testing/fixtures/tgsam2-tiny-sequences

The clips come from ``Testing/lib/synthetic.py`` (a bright disc and a dark square moving on noise): grey
"ultrasound" and tinted RGB "endoscopy" frames exactly as the engine prepares recorded frames, some clips with the
objects fading out after a few frames (the memory must carry them) and some with a mask prompt on the first frame
(tracking from a drawn mask, as refinement uses it). The text encoder is the offline MiniLM package. The result is
saved in fp16 (about 1.8 MB); the sequence tests load it from ``Testing/fixtures``. One thread makes the run
deterministic for a given torch build.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing" / "lib"))
sys.path.insert(0, str(ROOT))

log = logging.getLogger("train_sequence_fixture")


def clip_options(rng: np.random.Generator, frames: int, fade_share: float = 0.45) -> dict:
    """Per-step clip: grey or tinted, moving at up to 3 % of the frame per step. ``fade_share`` of the clips fade
    (contrast 0 to 0.08 against noise of 0.05): about half of them from a frame on, the others for a stretch in the
    middle (the objects come back). Faded frames still count as showing the object: only the memory knows where."""
    options = {"speed": 0.03, "tint": bool(rng.random() < 0.5), "as_recorded": True}
    draw = rng.random()
    if draw < fade_share:
        start = int(rng.integers(1, frames))
        stop = frames if draw < fade_share * 0.55 else int(rng.integers(start + 1, frames + 1))
        options["faded"] = list(range(start, stop))
        options["fade_contrast"] = float(rng.uniform(0.0, 0.08))
    return options


def main(argv: list[str] | None = None) -> int:
    from synthetic import train

    from TextPromptSegLib.modeling.build import build_model
    from TextPromptSegLib.modeling.checkpoint import save_checkpoint
    from TextPromptSegLib.modeling.config import get_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Testing" / "fixtures" / "tgsam2-tiny-sequences")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--save-every", type=int, default=400, help="also save OUT-stepN every N steps")
    parser.add_argument("--fade-share", type=float, default=0.45, help="share of clips with faded frames")
    parser.add_argument("--init", type=Path, help="start from this checkpoint folder (a second stage)")
    parser.add_argument("--visual-share", type=float, default=0.0, help="share of clips with only a mask prompt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(args.init) if args.init else build_model(get_config("tiny"))
    start = time.perf_counter()
    skipped: list[int] = []

    def progress(step: int, loss: float) -> None:
        if not np.isfinite(loss):
            skipped.append(step)
        if (step + 1) % 50 == 0:
            log.info("step %d loss %.3f (%.0f s, %d skipped)", step + 1, loss, time.perf_counter() - start,
                     len(skipped))
        if args.save_every and (step + 1) % args.save_every == 0:
            save_checkpoint(model, args.out.with_name(f"{args.out.name}-step{step + 1}"), half=True)

    high = int(args.steps * 0.8)  # one optimiser throughout; the learning rate drops for the last 20 %
    train(model, args.steps, args.batch, args.frames, seed=args.seed, lr=args.lr,
          clip=lambda rng: clip_options(rng, args.frames, args.fade_share), mask_prompt_prob=0.3,
          visual_prob=args.visual_share, max_grad_norm=1.0,
          lr_at=lambda step: args.lr if step < high else args.lr / 4, progress=progress)
    metadata = {"recipe": "scripts/train_sequence_fixture.py", "steps": str(args.steps), "seed": str(args.seed),
                "batch": str(args.batch), "frames": str(args.frames), "lr": str(args.lr),
                "fade_share": str(args.fade_share), "visual_share": str(args.visual_share),
                "init": str(args.init.name if args.init else ""),
                "skipped_steps": str(len(skipped)), "torch": torch.__version__}
    save_checkpoint(model, args.out, half=True, metadata=metadata)
    log.info("saved %s after %.0f s", args.out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
