"""slicer-core fixtures for the module Logic tests: a real MRML scene with the Segmentations logic, and the
module's Logic importable.

This folder must not be named ``slicer``: slicer-core's ``slicer`` package extends its ``__path__`` to every
``slicer/`` folder on sys.path and imports each module there into ``slicer`` (Testing/ is on sys.path here)."""

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
