"""Training on cached encoder features: with a frozen image encoder (LiteMedSAM's TinyViT), every training slice is
encoded once and stored; memory attention, memory encoder, object score and the text modules then train from the
stored embeddings, about 10x faster per step on a CPU than re-encoding every clip.

A cache file (``.safetensors``) holds one volume: ``feats`` (N, D, h, w) float16 embeddings of its frames as the
inference path prepares them (``FrameVolume.to_cases``), and per structure ``mask.<name>`` (N, S, S) bit-packed along
the last axis; its metadata names the case, the structures with their prompts, and the encoder (preset and the
LiteMedSAM checkpoint digest) so that a cache made by another encoder is refused.

``FeatureClipSampler`` cuts clips of consecutive slices like ``data.ClipSampler`` (no flips: features of a flipped
image are not flipped features, and "left" must stay left), and gives the first frame a visual prompt taken from the
label: a box (jittered), a few clicks, or none, with or without the text, so that a box on one slice tracks any
structure and text and box together can do better than either alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .data import FrameVolume, clip_indices

log = logging.getLogger(__name__)

CACHE_FORMAT = "textpromptseg-features-1"


@dataclass
class FeatureCase:
    """One structure in one volume: cached embeddings (N, D, h, w) float16 (shared by the volume's structures),
    masks (N, S, S) bool at the model input size, and the structure's prompt variants."""

    case_id: str
    structure: str
    feats: torch.Tensor
    masks: torch.Tensor
    prompts: list[str]


def encoder_id(model) -> str:
    """What the cached features depend on: the preset's backbone and the LiteMedSAM checkpoint digest."""
    from ..modeling.litemedsam import CHECKPOINT_SHA256

    return f"{model.config.backbone}:{CHECKPOINT_SHA256 if model.config.backbone == 'litemedsam' else 'own'}"


@torch.inference_mode()
def encode_frames(model, frames: torch.Tensor, batch: int = 4,
                  progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """frames (N, 3, S, S) in [0, 1] -> the frozen encoder's single-level embeddings (N, D, h, w) float16."""
    out = []
    for i in range(0, len(frames), batch):
        chunk = frames[i:i + batch].float().to(model.image_mean.device)
        out.append(model.encode_backbone(model.normalize_images(chunk))["backbone_fpn"][-1].half().cpu())
        if progress:
            progress(min(i + batch, len(frames)), len(frames))
    return torch.cat(out)


def cache_volume(model, volume: FrameVolume, path: Path, z_stride: int = 1, batch: int = 4) -> Path:
    """Encode ``volume`` (every ``z_stride``-th frame) and write one cache file."""
    from safetensors.torch import save_file

    if z_stride > 1:
        volume = FrameVolume(volume.case_id, volume.frames[::z_stride],
                             {k: v[::z_stride] for k, v in volume.masks.items()}, volume.row_spacing,
                             volume.col_spacing, volume.prompts)
    cases = volume.to_cases(model.image_size)
    if not cases:
        raise ValueError(f"{volume.case_id}: no structure to cache")
    feats = encode_frames(model, cases[0].frames, batch)
    tensors = {"feats": feats.contiguous()}
    structures = {}
    for i, case in enumerate(cases):
        tensors[f"mask.{i}"] = torch.from_numpy(np.packbits(case.masks.numpy(), axis=-1))
        structures[str(i)] = {"name": case.structure, "prompts": case.prompts}
    meta = {"format": CACHE_FORMAT, "case_id": volume.case_id, "encoder": encoder_id(model),
            "size": str(model.image_size), "z_stride": str(z_stride), "structures": json.dumps(structures)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_cache(path: Path, expect_encoder: Optional[str] = None) -> list[FeatureCase]:
    """The structures of one cache file as FeatureCases (the embeddings are shared, not copied)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path} is not a TextPromptSeg feature cache")
        if expect_encoder and meta.get("encoder") != expect_encoder:
            raise ValueError(f"{path} was encoded by {meta.get('encoder')}, not by this model's {expect_encoder}")
        feats = fh.get_tensor("feats")
        size = int(meta["size"])
        cases = []
        for key, info in json.loads(meta["structures"]).items():
            packed = fh.get_tensor(f"mask.{key}").numpy()
            masks = torch.from_numpy(np.unpackbits(packed, axis=-1, count=size).astype(bool))
            cases.append(FeatureCase(meta["case_id"], info["name"], feats, masks, list(info["prompts"])))
    return cases


class FeatureClipSampler:
    """Random clips of ``length`` consecutive cached frames (either direction), starting on the structure with
    probability ``p_object``. The first frame's prompt: a box from the label (each side jittered by up to
    ``box_jitter`` of its size) with probability ``p_box``, 1-3 clicks with ``p_clicks``, else none; with a visual
    prompt the text is left out (visual prompt only) with probability ``p_no_text``. A batch shares its prompt kind
    and its text-or-not, so that points stack and the text is all or nothing.

    ``sample(batch)`` -> (feats (B, T, D, h, w) float32, masks (B, T, S, S) bool, prompts [B] (``""`` = no text),
    points {"point_coords" (B, P, 2) (x, y) pixels, "point_labels" (B, P) int32} or None). Clips of one batch share
    one prompt kind, so that their points stack; a clip whose first frame is empty gets no visual prompt.
    """

    def __init__(self, cases: list[FeatureCase], length: int = 4, p_object: float = 0.8, seed: int = 0,
                 p_box: float = 0.45, p_clicks: float = 0.15, p_no_text: float = 0.5, box_jitter: float = 0.1,
                 weights: Optional[list[float]] = None) -> None:
        if not cases:
            raise ValueError("no cached training cases")
        self.cases, self.length, self.p_object = cases, length, p_object
        self.p_box, self.p_clicks, self.p_no_text, self.box_jitter = p_box, p_clicks, p_no_text, box_jitter
        self.rng = np.random.default_rng(seed)
        self._with_object = [np.flatnonzero(c.masks.flatten(1).any(1).numpy()) for c in cases]
        w = np.asarray(weights if weights is not None else [1.0] * len(cases), dtype=np.float64)
        self.weights = w / w.sum()

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def _box(self, mask: np.ndarray) -> list[tuple[float, float, int]]:
        ys, xs = np.nonzero(mask)
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        w, h = x1 - x0 + 1, y1 - y0 + 1
        j = self.rng.uniform(-self.box_jitter, self.box_jitter, 4) * np.array([w, h, w, h])
        size = mask.shape[0] - 1
        x0, y0, x1, y1 = np.clip(np.array([x0, y0, x1, y1], dtype=np.float64) + j, 0, size)
        return [(min(x0, x1), min(y0, y1), 2), (max(x0, x1), max(y0, y1), 3)]

    def _clicks(self, mask: np.ndarray, count: int) -> list[tuple[float, float, int]]:
        inside = np.argwhere(mask)
        outside = np.argwhere(~mask)
        points = []
        for k in range(count):
            positive = k == 0 or self.rng.random() < 0.7 or not len(outside)
            pool = inside if positive else outside
            y, x = pool[int(self.rng.integers(len(pool)))]
            points.append((float(x), float(y), 1 if positive else 0))
        return points

    def sample(self, batch: int):
        kind_roll = self.rng.random()
        kind = "box" if kind_roll < self.p_box else "clicks" if kind_roll < self.p_box + self.p_clicks else "none"
        n_clicks = int(self.rng.integers(1, 4))
        with_text = kind == "none" or self.rng.random() >= self.p_no_text
        feats, masks, prompts, points = [], [], [], []
        for _ in range(batch):
            k = int(self.rng.choice(len(self.cases), p=self.weights))
            case, with_object = self.cases[k], self._with_object[k]
            idx = clip_indices(self.rng, case.feats.shape[0], with_object, self.p_object, self.length)
            feats.append(case.feats[idx].float())
            masks.append(case.masks[idx])
            text = str(self.rng.choice(case.prompts)) if with_text else ""
            first = case.masks[idx[0]].numpy()
            if kind != "none" and first.any():
                pts = self._box(first) if kind == "box" else self._clicks(first, n_clicks)
            elif kind != "none":  # an empty first frame: a background click says "not here"
                pts = [(float(self.rng.integers(first.shape[1])), float(self.rng.integers(first.shape[0])), 0)]
                pts = pts * (2 if kind == "box" else n_clicks)
            else:
                pts = []
            prompts.append(text)
            points.append(pts)
        point_prompt = None
        if kind != "none":
            coords = torch.tensor([[p[:2] for p in pts] for pts in points], dtype=torch.float32)
            labels = torch.tensor([[p[2] for p in pts] for pts in points], dtype=torch.int32)
            point_prompt = {"point_coords": coords, "point_labels": labels}
        return torch.stack(feats), torch.stack(masks), prompts, point_prompt


class CachedClipForward(torch.nn.Module):
    """TGSAM-2's training forward and loss on cached features; empty prompt strings (a whole batch) mean no text."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor, masks: torch.Tensor, prompts: list[str],
                points: Optional[dict] = None) -> torch.Tensor:
        from .losses import sequence_loss

        text = self.model.encode_text(prompts) if all(prompts) else None
        if points is not None:
            points = {k: v.to(feats.device) for k, v in points.items()}
        out = self.model.forward_sequence(None, text, point_prompt=points, features=feats)
        return sequence_loss(out, masks)
