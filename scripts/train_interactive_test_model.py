"""Train the tiny interactive TGSAM-2 used by the refinement tests and write it to Testing/fixtures.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_interactive_test_model.py --minutes 34

The model (tiny preset with high_res_features=False, 128 px, offline MiniLM text encoder) learns the synthetic
scenes of Testing/interactive_model.py: text, mask, click, box and corrective-click prompts. It is stored as fp16
safetensors (about 2 MB) and evaluated again after the round trip; the command and the held-out Dice go into the
checkpoint's config.json metadata (and, by hand, into the fixture's README). Training is time-budgeted, so two
runs on machines of different speed take different numbers of steps: the metadata records the steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))

import torch  # noqa: E402
from interactive_model import FIXTURE, TASK_WEIGHTS, TASKS, build, evaluate, train  # noqa: E402

from TextPromptSegLib.modeling.build import build_model  # noqa: E402
from TextPromptSegLib.modeling.checkpoint import save_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=FIXTURE)
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--task-weights", type=float, nargs=len(TASKS), default=TASK_WEIGHTS,
                        help=f"how often each task is drawn: {' '.join(TASKS)}")
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from this checkpoint folder (its weights; a fresh optimiser and schedule)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    model = build_model(args.init) if args.init is not None else build()
    previous = {}
    if args.init is not None:
        previous = json.loads((args.init / "config.json").read_text(encoding="utf-8")).get("metadata", {})

    def checkpoint(m) -> None:  # an evaluable copy while the budget runs (overwritten at the end)
        save_checkpoint(m, args.out, half=True, metadata={"partial": True, "command": command})
        m.eval()
        logging.info("held-out Dice so far: %s", {k: round(v, 3) for k, v in evaluate(m).items()})

    command = "python scripts/train_interactive_test_model.py " + " ".join(sys.argv[1:])
    losses = train(model, args.minutes, batch=args.batch, frames=args.frames, seed=args.seed, lr=args.lr,
                   on_checkpoint=checkpoint, checkpoint_minutes=args.checkpoint_minutes,
                   task_weights=tuple(args.task_weights))
    metadata = {"trained_by": "scripts/train_interactive_test_model.py", "command": command, "minutes": args.minutes,
                "steps": len(losses), "batch": args.batch, "frames": args.frames, "seed": args.seed, "lr": args.lr,
                "task_weights": dict(zip(TASKS, args.task_weights))}
    if args.init is not None:
        metadata["continued_from"] = previous
    save_checkpoint(model, args.out, half=True, metadata=metadata)
    reloaded = build_model(args.out)
    scores = evaluate(reloaded)
    metadata["held_out_dice"] = {k: round(v, 4) for k, v in scores.items()}
    save_checkpoint(reloaded, args.out, half=True, metadata=metadata)
    print(json.dumps(metadata, indent=2))


if __name__ == "__main__":
    main()
