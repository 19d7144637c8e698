"""Calibrate a checkpoint's presence threshold: run every structure's prompt on every validation volume (structures
present and absent), keep each run's per-slice object scores, and choose the rule (threshold, min_slices) that
separates "present" from "absent".

    python scripts/calibrate_presence.py --model Resources/Models/tgsam2-medium --data ../shared/data \
        --out presence.json                         # runs the model (about 10 min on a 2-core CPU), then the table
    python scripts/calibrate_presence.py --scores presence.json            # the table again from saved scores
    python scripts/calibrate_presence.py --scores presence.json --write Resources/Models/tgsam2-medium
                                                    # store the threshold in the checkpoint's config.json

The decision rule is ``PresenceRule.absent`` (TextPromptSegLib/familiarity.py): a run is absent when fewer than
``min_slices`` slices have an object score above ``threshold``. Missing a structure that is there is worse than
drawing one that is not (the user deletes a wrong segment, but may never look for a missing one), so the threshold
keeps every present run present (TPR 1) with room to spare (halfway between the hardest present run and the
nearest absent run below it, and at least ``--margin`` logits below that run), and ``min_slices`` (1, 2, 3 or 5)
is the one with the lowest false-positive rate at that. The tables give TPR / FPR per prompt and around the
threshold. ``--write`` updates SHA256SUMS as well.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from TextPromptSegLib.familiarity import PresenceRule, write_checkpoint_calibration  # noqa: E402

log = logging.getLogger("calibrate_presence")

STRUCTURES = ("left atrium", "sarcoma", "necrosis", "edema", "enhancing tumour", "whole tumour")


def run_model(model_name: str, data: Path, split: str, limit: int | None) -> list[dict]:
    """One record per (volume, structure prompt): case, structure, prompt, present, reached-slice scores, voxels."""
    from TextPromptSegLib.engine.pipeline import PreparedVolume, SegmentRequest, segment_volume
    from TextPromptSegLib.engine.tpp_engine import make_propagator
    from TextPromptSegLib.io.volumes import read_volume
    from TextPromptSegLib.registry import load_model
    from TextPromptSegLib.training.commands import shared_eval_cases
    from TextPromptSegLib.training.data import BRATS_LABELS, PROMPTS

    model = load_model(model_name)
    propagator = make_propagator(model, "cpu")
    volumes: dict[str, object] = {}
    for case in shared_eval_cases(data, split, list(STRUCTURES)):
        volumes.setdefault(case.case_id, case)
    cases = list(volumes.values())[:limit]
    records = []
    for case in cases:
        start = time.perf_counter()
        volume = (case.reader or read_volume)(case.image)
        labels = read_volume(case.label).array
        prepared = PreparedVolume(volume, model.image_size)
        session = propagator.start_session(prepared.frame_source())
        present_structures = {case.structure} if not case.others else {
            s for s, values in BRATS_LABELS.items() if np.isin(labels, values).any()}
        for structure in STRUCTURES:
            prompt = PROMPTS[structure][0]
            result = segment_volume(volume, [SegmentRequest(prompt)], propagator=propagator, prepared=prepared,
                                    session=session, presence=None)
            seg = result.segments[0]
            scores = seg.slice_scores[np.isfinite(seg.slice_scores)]
            records.append({"case": case.case_id, "structure": structure, "prompt": prompt,
                            "present": structure in present_structures, "scores": [round(float(s), 3) for s in scores],
                            "voxels": int(seg.mask.sum()), "slices_with_object": seg.slices_with_object})
        log.info("%s: %d prompts in %.0f s", case.case_id, len(STRUCTURES), time.perf_counter() - start)
    return records


def rates(records: list[dict], rule: PresenceRule) -> tuple[float, float, int, int]:
    """(TPR, FPR, present runs, absent runs) of ``rule`` over the records."""
    pos = [r for r in records if r["present"]]
    neg = [r for r in records if not r["present"]]
    tp = sum(not rule.absent(np.asarray(r["scores"])) for r in pos)
    fp = sum(not rule.absent(np.asarray(r["scores"])) for r in neg)
    return tp / max(1, len(pos)), fp / max(1, len(neg)), len(pos), len(neg)


def statistic(record: dict, min_slices: int) -> float:
    """The run's ``min_slices``-th highest slice score (-inf with fewer slices): present iff it is above the
    threshold."""
    scores = np.sort(np.asarray(record["scores"], np.float64))[::-1]
    return float(scores[min_slices - 1]) if len(scores) >= min_slices else float("-inf")


def choose(records: list[dict], min_slices: int, margin: float = 0.5) -> float:
    """A threshold that keeps every present run present with room to spare: halfway between the lowest statistic
    of a present run and the highest statistic of an absent run below it, and at least ``margin`` below that lowest
    present statistic (a crop or another scanner moves the scores by about that much)."""
    lowest = min(statistic(r, min_slices) for r in records if r["present"])
    below = [statistic(r, min_slices) for r in records if not r["present"] and statistic(r, min_slices) < lowest]
    below = [s for s in below if np.isfinite(s)]
    halfway = (max(below) + lowest) / 2 if below else lowest
    return round(min(halfway, lowest - margin), 4)


def choose_rule(records: list[dict], candidates=(1, 2, 3, 5), margin: float = 0.5) -> PresenceRule:
    """Of the rules ``choose`` gives for each ``min_slices`` candidate, the one with the lowest false-positive rate
    (ties: fewer slices)."""
    rules = [PresenceRule(choose(records, m, margin), m) for m in candidates]
    return min(rules, key=lambda rule: (rates(records, rule)[1], rule.min_slices))


def table(records: list[dict], threshold: float, min_slices: int) -> str:
    lines = ["| structure prompt | present runs | detected | absent runs | detected (false positive) |",
             "|---|---|---|---|---|"]
    rule = PresenceRule(threshold, min_slices)
    for structure in STRUCTURES:
        rows = [r for r in records if r["structure"] == structure]
        tpr, fpr, npos, nneg = rates(rows, rule)
        lines.append(f"| {structure} | {npos} | {round(tpr * npos)} ({tpr:.0%}) | {nneg} | {round(fpr * nneg)} "
                     f"({fpr:.0%}) |")
    tpr, fpr, npos, nneg = rates(records, rule)
    lines.append(f"| **all** | {npos} | {round(tpr * npos)} (TPR {tpr:.0%}) | {nneg} | {round(fpr * nneg)} "
                 f"(FPR {fpr:.0%}) |")
    lines += ["", f"| threshold (min_slices {min_slices}) | TPR | FPR |", "|---|---|---|"]
    for t in sorted({threshold - 1.0, threshold - 0.5, threshold, threshold + 0.5, threshold + 1.0, 0.0}):
        tpr, fpr, _, _ = rates(records, PresenceRule(t, min_slices))
        lines.append(f"| {t:+.2f}{' (chosen)' if t == threshold else ''} | {tpr:.2f} | {fpr:.2f} |")
    return "\n".join(lines)


def table_margin(records: list[dict], margin: float) -> str:
    lines = ["| min_slices | threshold | FPR |", "|---|---|---|"]
    for m in (1, 2, 3, 5):
        t = choose(records, m, margin)
        lines.append(f"| {m} | {t:+.2f} | {rates(records, PresenceRule(t, m))[1]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="registered name or checkpoint folder (default: bundled)")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--limit", type=int, help="at most this many volumes")
    parser.add_argument("--out", help="save the runs' scores to this JSON")
    parser.add_argument("--scores", help="read saved scores instead of running the model")
    parser.add_argument("--min-slices", type=int, help="fix the number of slices (default: the best of 1, 2, 3, 5)")
    parser.add_argument("--margin", type=float, default=0.5, help="keep the threshold at least this far (logits) "
                        "below the hardest present run (default 0.5)")
    parser.add_argument("--note", help="a sentence stored with the calibration (why this choice)")
    parser.add_argument("--write", help="store the chosen threshold in this checkpoint folder's config.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.scores:
        saved = json.loads(Path(args.scores).read_text(encoding="utf-8"))
        records, model_name = saved["runs"], saved.get("model")
    else:
        records, model_name = run_model(args.model, Path(args.data), args.split, args.limit), args.model
        if args.out:
            Path(args.out).write_text(json.dumps({"model": model_name, "split": args.split, "runs": records}),
                                      encoding="utf-8")
    rule = choose_rule(records, margin=args.margin) if args.min_slices is None else PresenceRule(
        choose(records, args.min_slices, args.margin), args.min_slices)
    threshold = rule.threshold
    print(table(records, threshold, rule.min_slices))
    print(f"\nat TPR 1, {args.margin} below the hardest present run, by min_slices:\n")
    print(table_margin(records, args.margin))
    if args.write:
        tpr, fpr, npos, nneg = rates(records, rule)
        write_checkpoint_calibration(Path(args.write), "presence", {
            "threshold": threshold, "min_slices": rule.min_slices,
            "calibrated_on": f"{args.split} split of the shared data: {npos} runs with the structure present, "
                             f"{nneg} absent (scripts/calibrate_presence.py)",
            "tpr": round(tpr, 3), "fpr": round(fpr, 3), **({"note": args.note} if args.note else {})})
        print(f"wrote presence threshold {threshold} to {Path(args.write) / 'config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
