"""How familiar a model is with each prompt line, for the panel's echo (loads the model's text encoder once)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Optional

log = logging.getLogger(__name__)

_CHECKERS: dict[str, Any] = {}  # checkpoint path -> FamiliarityChecker (its text encoder loads once)


def prompt_familiarity(prompts: Sequence[str], model: Optional[str] = None) -> list[Any]:
    """``familiarity.Familiarity`` of each prompt for the registered model name or checkpoint path (default: the
    registry's default), or None for each when it cannot be told without installing anything (torch or the text
    encoder missing, model not on disk). The text encoder is loaded once per checkpoint."""
    import importlib.util

    from TextPromptSegLib.familiarity import assess, familiarity_checker, text_ignored
    from TextPromptSegLib.registry import RegistryError, resolve

    try:
        _, local, _ = resolve(model or None)
        if text_ignored(local):
            return assess(local, prompts)
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
            return [None] * len(prompts)
        key = str(local)
        if key not in _CHECKERS:
            _CHECKERS[key] = familiarity_checker(local)
        return assess(local, prompts, _CHECKERS[key])
    except (RegistryError, OSError, ValueError, RuntimeError) as exc:
        log.debug("familiarity not available: %s", exc)
        return [None] * len(prompts)
