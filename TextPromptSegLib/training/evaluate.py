"""Evaluation through the inference path (``segment_volume``): per-case Dice, IoU, HD95 and a per-structure
table laid out like the papers' Table 1 (Markdown + JSON)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..engine.pipeline import SegmentRequest, segment_volume
from ..io.volumes import read_volume
from .metrics import dice, hd95, iou

log = logging.getLogger(__name__)


@dataclass
class EvalCase:
    case_id: str
    structure: str
    image: Path
    label: Path
    label_values: tuple[int, ...]
    prompt: str
    reader: Optional[Callable] = None  # image path -> Volume (default: read_volume), e.g. a multi-channel composite
    others: Optional[dict[str, tuple[int, ...]]] = None  # other structures in the same label map (selection test)


@dataclass
class CaseScore:
    case_id: str
    structure: str
    prompt: str
    dice: float
    iou: float
    hd95: float
    seconds: float
    dice_vs_others: Optional[dict[str, float]] = None  # Dice of this prompt's output against the other structures


def evaluate_cases(model, cases: list[EvalCase], device: Optional[str] = None, **segment_kwargs) -> list[CaseScore]:
    """Segment every case with its prompt and score it against its label."""
    import time

    scores = []
    for case in cases:
        volume = (case.reader or read_volume)(case.image)
        labels = read_volume(case.label).array
        truth = np.isin(labels, case.label_values)
        start = time.perf_counter()
        result = segment_volume(volume, [SegmentRequest(case.prompt)], model, device=device, **segment_kwargs)
        mask = result.segments[0].mask
        score = CaseScore(case.case_id, case.structure, case.prompt, dice(mask, truth), iou(mask, truth),
                          hd95(mask, truth, volume.spacing), time.perf_counter() - start)
        if case.others:
            score.dice_vs_others = {name: dice(mask, np.isin(labels, values)) for name, values in case.others.items()}
        log.info("%s: Dice %.3f IoU %.3f HD95 %.1f mm", case.case_id, score.dice, score.iou, score.hd95)
        scores.append(score)
    return scores


def summary_table(scores: list[CaseScore]) -> tuple[str, dict]:
    """Markdown table (structure rows, mean +- sd Dice / IoU, median HD95) and the same as a dict."""
    by_structure: dict[str, list[CaseScore]] = {}
    for s in scores:
        by_structure.setdefault(s.structure, []).append(s)
    rows, data = [], {}
    for structure, items in by_structure.items():
        d = np.array([s.dice for s in items]) * 100
        j = np.array([s.iou for s in items]) * 100
        h = np.array([s.hd95 for s in items])
        data[structure] = {"cases": len(items), "dice_mean": float(d.mean()), "dice_sd": float(d.std()),
                           "iou_mean": float(j.mean()), "hd95_median_mm": float(np.median(h))}
        rows.append(f"| {structure} | {len(items)} | {d.mean():.2f} ± {d.std():.2f} | {j.mean():.2f} | "
                    f"{np.median(h):.1f} |")
    table = "| structure | cases | DSC (%) | IoU (%) | HD95 (mm, median) |\n|---|---|---|---|---|\n" + "\n".join(rows)
    selection = selection_table(scores)
    if selection:
        table += "\n\nText selection (mean Dice %, rows: the prompt's structure, columns: the reference it is scored " \
                 "against):\n\n" + selection
    return table, data


def selection_table(scores: list[CaseScore]) -> str:
    """Prompt x reference-structure Dice matrix over the cases that carry ``dice_vs_others``."""
    rows: dict[str, list[dict[str, float]]] = {}
    for s in scores:
        if s.dice_vs_others is not None:
            rows.setdefault(s.structure, []).append(s.dice_vs_others)
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for items in rows.values() for d in items for k in d))
    lines = ["| prompt \\ reference | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for structure, items in rows.items():
        cells = [f"{100 * np.mean([d[c] for d in items if c in d]):.1f}" for c in columns]
        lines.append(f"| {structure} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(scores: list[CaseScore], out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, data = summary_table(scores)
    (out_dir / "results.md").write_text(table + "\n", encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps(
        {"summary": data, "cases": [asdict(s) for s in scores]}, indent=2, default=float), encoding="utf-8")
    return out_dir / "results.md"
