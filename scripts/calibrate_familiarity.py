"""Calibrate a checkpoint's prompt-familiarity thresholds on a table of prompts with the level a radiologist expects
(synonyms, paraphrases, misspellings, neighbouring and unrelated anatomy), and print the table.

    python scripts/calibrate_familiarity.py                 # the bundled tgsam2-medium and its table
    python scripts/calibrate_familiarity.py --model runs/new/last --table my_prompts.json --write runs/new/last

The table is JSON: {"prompts": [[prompt, expected level, expected nearest structure or null, kind], ...]}
(``Testing/fixtures/familiarity_tgsam2_medium.json`` for the bundled model; its test checks every row). Only the
rows that reach the cosine rule of ``familiarity.FamiliarityChecker`` (no exact, library, spelling or phrase match)
set the thresholds: ``known`` is the midpoint between the lowest similarity of an expected-known row and the highest
of an expected related/unknown row (rows capped by the library or by laterality excluded), ``related`` the midpoint
between the expected-related and the expected-unknown rows. ``--write`` stores them in the checkpoint's config.json
(``calibration.familiarity``) and refreshes its SHA256SUMS.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from TextPromptSegLib.familiarity import (  # noqa: E402
    KNOWN,
    RELATED,
    UNKNOWN,
    FamiliarityThresholds,
    familiarity_checker,
    write_checkpoint_calibration,
)
from TextPromptSegLib.registry import resolve  # noqa: E402

COSINE_RULE = ("close to a training prompt", "similar to a training prompt", "far from every training prompt")


def midpoint(low_side: list[float], high_side: list[float], name: str) -> float:
    """Halfway between max(low_side) and min(high_side); raises when the two groups overlap."""
    top, bottom = max(low_side), min(high_side)
    if top >= bottom:
        raise SystemExit(f"{name}: the groups overlap (highest below {top:.3f} >= lowest above {bottom:.3f}); "
                         "no threshold separates them")
    return round((top + bottom) / 2, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tgsam2-medium", help="registered name or checkpoint folder")
    parser.add_argument("--table", default=str(ROOT / "Testing" / "fixtures" / "familiarity_tgsam2_medium.json"))
    parser.add_argument("--write", help="store the thresholds in this checkpoint folder's config.json")
    args = parser.parse_args(argv)
    _, folder, _ = resolve(args.model)
    checker = familiarity_checker(folder)
    if checker is None:
        raise SystemExit(f"{folder} records no training prompts (config.json 'training'); nothing to compare with")
    rows = json.loads(Path(args.table).read_text(encoding="utf-8"))["prompts"]
    results = [(row, checker.check(row[0])) for row in rows]
    cosine = [(row, f) for row, f in results if f.how in COSINE_RULE]
    known = midpoint([f.similarity for row, f in cosine if row[1] != KNOWN],
                     [f.similarity for row, f in cosine if row[1] == KNOWN], "known")
    capped = [(row, f) for row, f in results if f.how not in COSINE_RULE and f.level != KNOWN]
    related = midpoint([f.similarity for row, f in cosine + capped if row[1] == UNKNOWN],
                       [f.similarity for row, f in cosine + capped if row[1] == RELATED], "related")
    checker.thresholds = FamiliarityThresholds(known, related, checker.thresholds.spelling)
    print(f"thresholds: known >= {known}, related >= {related} (cosine of mean-pooled text-encoder embeddings)\n")
    print("| prompt | kind | expected | level | nearest structure | similarity | decided by |")
    print("|---|---|---|---|---|---|---|")
    wrong = 0
    for row in rows:
        f = checker.check(row[0])
        wrong += f.level != row[1]
        mark = "" if f.level == row[1] else " **(differs)**"
        print(f"| {row[0]} | {row[3]} | {row[1]} | {f.level}{mark} | {f.structure} | {f.similarity:.3f} | {f.how} |")
    print(f"\n{len(rows) - wrong} of {len(rows)} prompts get the expected level")
    if args.write:
        write_checkpoint_calibration(Path(args.write), "familiarity", {
            "known": known, "related": related, "spelling": checker.thresholds.spelling,
            "calibrated_on": f"{len(rows)} prompts of {Path(args.table).name} (scripts/calibrate_familiarity.py)"})
        print(f"wrote the thresholds to {Path(args.write) / 'config.json'}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
