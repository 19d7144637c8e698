"""Make the shared synthetic-data helpers of this folder importable as ``synthetic``; real LA2018 training cases."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def la_cases(shared_data):
    """Two real LA2018 training cases at 128 px, cut to the slices with the atrium (faster and still real)."""
    from TextPromptSegLib.training.data import default_splits, la2018_cases

    ids = default_splits(shared_data)["la2018"]["train"][:2]
    cases = la2018_cases(shared_data, 128, ids)
    for case in cases:
        keep = case.masks.flatten(1).any(1).nonzero().flatten()
        lo, hi = int(keep.min()), int(keep.max()) + 1
        case.frames, case.masks = case.frames[lo:hi], case.masks[lo:hi]
    return cases
