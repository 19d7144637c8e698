"""CLI subcommands for training and evaluation on the ../shared/data layout (registered by cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def shared_eval_cases(root: Path, split: str, structures: list[str]):
    from .data import PROMPTS, default_splits
    from .evaluate import EvalCase

    splits = default_splits(root)
    cases = []
    if "left atrium" in structures:
        for case_id in splits["la2018"][split]:
            folder = root / "la2018" / "train" / case_id
            cases.append(EvalCase(f"la2018/{case_id}", "left atrium", folder / "image.nii.gz",
                                  folder / "label.nii.gz", (1,), PROMPTS["left atrium"][0]))
    if "sarcoma" in structures:
        for case_id in splits["sts_sarcoma"][split]:
            folder = root / "sts_sarcoma" / case_id
            cases.append(EvalCase(f"sts/{case_id}", "sarcoma", folder / "CT_image.nii.gz", folder / "CT_mask.nii.gz",
                                  (1,), PROMPTS["sarcoma"][0]))
    return cases


def cmd_evaluate(args) -> int:
    from ..registry import load_model
    from .evaluate import evaluate_cases, write_report

    model = load_model(args.model, device=args.device or "cpu")
    cases = shared_eval_cases(Path(args.data), args.split, args.structure)
    if args.limit:
        cases = cases[: args.limit]
    report = write_report(evaluate_cases(model, cases, device=args.device), Path(args.out))
    print(report.read_text(encoding="utf-8"))
    return 0


def cmd_train(args) -> int:
    from ..modeling.build import build_model
    from ..modeling.config import get_config
    from .data import ClipSampler, default_splits, la2018_cases, sarcoma_cases
    from .trainer import TrainConfig, Trainer

    spec = json.loads(Path(args.config).read_text(encoding="utf-8"))
    root = Path(spec.get("data", args.data))
    model_cfg = get_config(spec.get("model", "small"), image_size=spec.get("image_size"))
    model = build_model(model_cfg, device=args.device or "cpu")
    splits = default_splits(root)
    size = model_cfg.image_size
    cases = []
    if "la2018" in spec.get("datasets", ["la2018", "sts_sarcoma"]):
        cases += la2018_cases(root, size, splits["la2018"]["train"][: spec.get("la2018_cases")])
    if "sts_sarcoma" in spec.get("datasets", ["la2018", "sts_sarcoma"]):
        cases += sarcoma_cases(root, size, splits["sts_sarcoma"]["train"]) * spec.get("sarcoma_repeat", 1)
    config = TrainConfig(**spec.get("train", {}))
    trainer = Trainer(model, ClipSampler(cases, config.clip_length, seed=config.seed), config, Path(args.out))
    trainer.resume()
    trainer.fit()
    print(f"checkpoint: {Path(args.out) / 'last'}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="Dice / IoU / HD95 per case and a per-structure table")
    ev.add_argument("--model", help="registered model name or checkpoint folder")
    ev.add_argument("--data", default="../shared/data", help="the shared data folder")
    ev.add_argument("--split", default="val", choices=("train", "val"))
    ev.add_argument("--structure", action="append", default=None, choices=("left atrium", "sarcoma"))
    ev.add_argument("--limit", type=int, help="evaluate at most this many cases")
    ev.add_argument("--out", default="evaluation")
    ev.add_argument("--device")
    ev.set_defaults(func=cmd_evaluate, structure=None)

    tr = sub.add_parser("train", help="train TGSAM-2 from a JSON config (resumes from OUT/last)")
    tr.add_argument("config")
    tr.add_argument("--data", default="../shared/data")
    tr.add_argument("--out", default="runs/tgsam2")
    tr.add_argument("--device")
    tr.set_defaults(func=cmd_train)
