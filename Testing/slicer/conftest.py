"""slicer-core fixtures: a real MRML scene with the Segmentations logic, and the module's Logic importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "TextPromptSeg"))  # as Slicer's "additional module paths" would
sys.path.insert(0, str(ROOT / "Testing"))


@pytest.fixture()
def mrml():
    from mrml import make_scene

    return make_scene()
