"""Checkpoints: our format is a folder with ``model.safetensors`` + ``config.json`` (loading runs no pickled
code); Meta's official SAM-2 / SAM-2.1 ``.pt`` files load with ``torch.load(weights_only=True)``.

A frozen text encoder is not stored (``config.json`` names it); trainable adapters are. Loading is strict: one
``CheckpointError`` names every missing key, unexpected key and shape mismatch. ``config.json`` also states what the
model reads (``"inputs"``: the intensity normalisation each modality was trained with, ``engine.preprocess.
InputSpec``); loading sets it as ``model.inputs``, which inference applies.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Union

import torch

from ..engine.preprocess import InputSpec, model_inputs
from .config import TGSAM2Config

log = logging.getLogger(__name__)

FORMAT = "textpromptseg-tgsam2"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the model."""


def _paths(path: Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        return path / WEIGHTS, path / CONFIG
    return path, path.with_name(CONFIG)


def read_config(path: Union[str, Path]) -> TGSAM2Config:
    """The TGSAM2Config stored beside a checkpoint."""
    _, config_path = _paths(Path(path))
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint config not found: {config_path}") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint config {config_path} is not valid JSON: {exc}") from exc
    if data.get("format") != FORMAT:
        found = data.get("format")
        raise CheckpointError(f"{config_path} is not a TextPromptSeg TGSAM-2 checkpoint (format {found!r})")
    return TGSAM2Config.from_dict(data["config"])


def read_inputs(path: Union[str, Path]) -> InputSpec:
    """The ``"inputs"`` a checkpoint's ``config.json`` states (the training default when it states none)."""
    _, config_path = _paths(Path(path))
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
        return InputSpec.from_dict(data.get("inputs"))
    except FileNotFoundError:
        return InputSpec()
    except (json.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{config_path}: bad 'inputs' entry: {exc}") from exc


def _stored_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: everything but a frozen text encoder and the pretrained parts that the model reads
    from an installed package (LiteMedSAM; ``TGSAM2.package_keys``)."""
    frozen_text = getattr(model, "text_encoder", None) is not None and getattr(model.text_encoder, "frozen", True)
    from_package = model.package_keys() if hasattr(model, "package_keys") else frozenset()
    return {k: v for k, v in model.state_dict().items()
            if not (frozen_text and k.startswith("text_encoder.")) and k not in from_package}


def save_checkpoint(model: torch.nn.Module, folder: Union[str, Path], half: bool = False,
                    metadata: Optional[dict] = None, training: Optional[dict] = None,
                    calibration: Optional[dict] = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json``; ``half`` stores float tensors as fp16. The
    config's ``format`` is the model's ``checkpoint_format`` (TPP) or the TGSAM-2 format. ``training`` (what the
    model was trained on: ``familiarity.TrainingRecord.to_dict()``) and ``calibration`` (familiarity and presence
    thresholds) default to the ones the model was loaded with (``model.checkpoint_info``), so that re-saving a
    loaded checkpoint keeps them."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in _stored_state(model).items():
        value = value.detach().cpu().contiguous()
        state[key] = value.half() if half and value.is_floating_point() else value
    tmp = folder / (WEIGHTS + ".part")
    save_file(state, str(tmp), metadata={"format": getattr(model, "checkpoint_format", FORMAT)})
    tmp.replace(folder / WEIGHTS)
    info = {"format": getattr(model, "checkpoint_format", FORMAT), "version": FORMAT_VERSION,
            "config": model.config.to_dict(), "inputs": model_inputs(model).to_dict(), "metadata": metadata or {}}
    loaded = getattr(model, "checkpoint_info", None) or {}
    for key, value in (("training", training), ("calibration", calibration)):
        value = value if value is not None else loaded.get(key)
        if value:
            info[key] = value
    (folder / CONFIG).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return folder


def _check_and_load(model: torch.nn.Module, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                    source: Path, allow_missing: frozenset = frozenset()) -> None:
    missing = sorted(set(expected) - set(state) - allow_missing)
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {source} does not match the model:"]
        groups = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        for title, items in groups:
            if items:
                shown = ", ".join(items[:12]) + (f" ... (+{len(items) - 12} more)" if len(items) > 12 else "")
                lines.append(f"  {title} ({len(items)}): {shown}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)


def load_checkpoint(model: torch.nn.Module, path: Union[str, Path]) -> None:
    """Load our safetensors checkpoint (file or folder) strictly into ``model``, and set ``model.inputs`` to what
    its ``config.json`` states."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, _ = _paths(Path(path))
    if not weights.is_file():
        raise CheckpointError(f"checkpoint not found: {weights}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {weights} is corrupt or not a safetensors file: {exc}") from exc
    _check_and_load(model, state, _stored_state(model), weights)
    model.inputs = read_inputs(path)
    remember_checkpoint_info(model, weights)


def remember_checkpoint_info(model: torch.nn.Module, weights: Path) -> None:
    """Keep the loaded checkpoint's config.json (training record, calibration) on the model as
    ``model.checkpoint_info`` (read by ``familiarity`` and by ``segment_volume``'s presence rule)."""
    from ..familiarity import read_checkpoint_info

    model.checkpoint_info = read_checkpoint_info(weights)


def load_official_sam2(model: torch.nn.Module, path: Union[str, Path]) -> None:
    """Load Meta's SAM-2 / SAM-2.1 ``.pt`` into the SAM-2 part of a TGSAM-2 (adapters keep their init).

    The official models keep 7 memory frames; with a smaller bank (TGSAM-2 uses K=4) the first K temporal
    position encodings are kept (entry 0 is the current frame, then the nearest past frames).
    """
    from .tgsam2 import is_adapter_key

    path = Path(path)
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint not found: {path}") from exc
    except Exception as exc:  # torch raises many types for a corrupt or pickled-code file
        raise CheckpointError(f"cannot read SAM-2 checkpoint {path}: {exc}") from exc
    state = dict(raw.get("model", raw)) if isinstance(raw, dict) else None
    if state is None:
        raise CheckpointError(f"{path} holds no state dict")
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("text_encoder.")}
    key = "maskmem_tpos_enc"
    if key in state and key in expected and state[key].shape[0] > expected[key].shape[0]:
        state[key] = state[key][: expected[key].shape[0]]
    adapters = frozenset(k for k in expected if is_adapter_key(k))
    _check_and_load(model, state, expected, path, allow_missing=adapters)
