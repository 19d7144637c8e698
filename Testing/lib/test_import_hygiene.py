"""Importing the library pulls in no torch, sam2/Hydra or transformers (issue 2, #6): Slicer can load the module
before torch is installed."""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec

LIGHT_MODULES = [
    "TextPromptSegLib", "TextPromptSegLib.resources", "TextPromptSegLib.modeling", "TextPromptSegLib.modeling.config",
    "TextPromptSegLib.engine", "TextPromptSegLib.io", "TextPromptSegLib.training",
    "TextPromptSegLib.prompts", "TextPromptSegLib.registry", "TextPromptSegLib.io.volumes",
    "TextPromptSegLib.io.writers", "TextPromptSegLib.engine.geometry", "TextPromptSegLib.engine.preprocess",
    "TextPromptSegLib.engine.progress", "TextPromptSegLib.cli",
]
HEAVY = ["torch", "sam2", "hydra", "transformers"]


def test_light_modules_import_no_heavy_dependency():
    modules = [m for m in LIGHT_MODULES if find_spec(m) is not None]
    assert "TextPromptSegLib.modeling.config" in modules
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + (
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout.strip()} (by {modules})"
