"""Where the shared resources (prompt library, model registry, bundled sample and checkpoint) live.

The same ``Resources/`` folder serves the source tree (``<repo>/Resources``) and a Slicer install, where the
module's CMakeLists installs ``TextPromptSegLib/`` and ``Resources/`` side by side in the scripted-modules
folder. ``TEXTPROMPTSEG_RESOURCES`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

_ENV = "TEXTPROMPTSEG_RESOURCES"


def resources_dir() -> Path:
    """Return the Resources folder, raising FileNotFoundError with the places searched."""
    override = os.environ.get(_ENV)
    candidates = [Path(override)] if override else []
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "Resources", here.parent / "TextPromptSeg" / "Resources"]
    for candidate in candidates:
        if (candidate / "models.json").is_file() or (candidate / "prompt_library.json").is_file():
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"TextPromptSeg resources not found (searched {searched}); set {_ENV}.")


def resource_path(*parts: str) -> Path:
    """Path of a file under the Resources folder (existence is not checked)."""
    return resources_dir().joinpath(*parts)
