"""Training data: volumes with label maps and per-label prompts, prepared once into model-resolution frames.

Adapters for ../shared/data: ``la2018`` (left atrium, label 1) and ``sts_sarcoma`` (CT_image/CT_mask, label 1);
``brats2013`` (FLAIR + contrast T1 as one three-channel input, one structure per sub-region). Images are read with
``read_volume``, whose modality ``engine.preprocess.decide_modality`` decides exactly as at inference, and frames go
through the inference path's own preparation (``engine.pipeline.PreparedVolume``) with the training normalisation
(``TRAINING_INPUTS``, which ``textpromptseg train`` writes into the checkpoint), so training and inference see
identical inputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..engine.pipeline import PreparedVolume
from ..engine.preprocess import TRAINING_INPUTS, FrameTransform
from ..io.volumes import read_volume

log = logging.getLogger(__name__)

PROMPTS = {
    "left atrium": ["the left atrium", "left atrium of the heart",
                    "the left atrium, a thin-walled chamber at the back of the heart receiving the pulmonary veins",
                    "a round bright blood pool posterior to the aorta"],
    "sarcoma": ["a soft-tissue sarcoma", "the tumour", "a large heterogeneous soft-tissue mass in the limb",
                "the gross tumour volume of the sarcoma"],
    "necrosis": ["necrosis", "the necrotic core of the tumour, dark on contrast T1"],
    "edema": ["edema", "the peritumoral oedema, bright on FLAIR around the tumour"],
    "enhancing tumour": ["enhancing tumour", "the enhancing rim of the tumour"],
    "whole tumour": ["the whole tumour", "the brain tumour with its oedema"],
}


@dataclass
class Case:
    """One structure in one volume, prepared for a model: frames (N, 3, S, S) float16 in [0, 1], masks (N, S, S)."""

    case_id: str
    structure: str
    frames: torch.Tensor
    masks: torch.Tensor
    prompts: list[str]


@dataclass
class FrameVolume:
    """A volume as the engine slices it, before resizing: uint8 frames (N, H, W) or (N, H, W, 3) of the
    normalised intensities, pixel spacing, and one boolean mask (N, H, W) per structure. Compact enough to pack
    and ship to a training machine (:func:`save_pack`); ``to_cases`` resizes to a model's input."""

    case_id: str
    frames: np.ndarray
    masks: dict[str, np.ndarray]
    row_spacing: float = 1.0
    col_spacing: float = 1.0
    prompts: dict[str, list[str]] = field(default_factory=dict)  # per structure; else PROMPTS

    def to_cases(self, image_size: int) -> list[Case]:
        prompts = {**PROMPTS, **self.prompts}
        n, h, w = self.frames.shape[:3]
        transform = FrameTransform(h, w, image_size, self.row_spacing, self.col_spacing)
        frames = transform.frames_to_model(self.frames.astype(np.float32) / 255.0).half()
        cases = []
        for structure, mask in self.masks.items():
            masks = transform.frames_to_model(mask.astype(np.float32))[:, 0] > 0.5
            cases.append(Case(self.case_id, structure, frames, masks, list(prompts[structure])))
        return cases

    def cropped(self, margin: int) -> FrameVolume:
        """Only the slices within ``margin`` of any structure (empty slices near the object stay, for the
        object-score loss)."""
        present = np.flatnonzero(np.any([m.reshape(len(m), -1).any(1) for m in self.masks.values()], axis=0))
        if not present.size:
            return self
        lo, hi = max(0, present[0] - margin), min(len(self.frames), present[-1] + margin + 1)
        return FrameVolume(self.case_id, self.frames[lo:hi], {k: v[lo:hi] for k, v in self.masks.items()},
                           self.row_spacing, self.col_spacing, self.prompts)


def frame_volume(volume, labels: np.ndarray, label_map: dict[str, tuple[int, ...]], case_id: str,
                 axis: Optional[str] = None) -> FrameVolume:
    """Slice ``volume`` and its label map exactly as the engine does (``PreparedVolume``)."""
    return masks_frame_volume(volume, {s: np.isin(labels, values) for s, values in label_map.items()}, case_id, axis)


def masks_frame_volume(volume, masks: dict[str, np.ndarray], case_id: str, axis: Optional[str] = None) -> FrameVolume:
    """Like ``frame_volume`` with one boolean mask (z, y, x) per structure (masks may overlap)."""
    prepared = PreparedVolume(volume, 16, axis, min_slices=1, inputs=TRAINING_INPUTS)  # single 2D frames are fine
    frames = np.round(prepared.frames * 255).astype(np.uint8)
    framed = {s: prepared.geometry.to_frames(np.asarray(m, bool)).copy() for s, m in masks.items()}
    return FrameVolume(case_id, frames, framed, prepared.geometry.row_spacing, prepared.geometry.col_spacing)


def la2018_volumes(root: Path, ids: list[str]) -> list[FrameVolume]:
    out = []
    for i in ids:
        folder = root / "la2018" / "train" / i
        out.append(frame_volume(read_volume(folder / "image.nii.gz"),
                                read_volume(folder / "label.nii.gz").array, {"left atrium": (1,)}, f"la2018/{i}"))
    return out


def sarcoma_volumes(root: Path, ids: list[str]) -> list[FrameVolume]:
    out = []
    for i in ids:
        folder = root / "sts_sarcoma" / i
        out.append(frame_volume(read_volume(folder / "CT_image.nii.gz"),
                                read_volume(folder / "CT_mask.nii.gz").array, {"sarcoma": (1,)}, f"sts/{i}"))
    return out


BRATS_LABELS = {"necrosis": (1,), "edema": (2,), "enhancing tumour": (4,), "whole tumour": (1, 2, 3, 4)}


def brats_volume(folder: Path):
    """A BraTS case as one RGB-like volume (FLAIR, contrast T1, their mean; ``io.volumes.read_channels``, which the
    CLI's ``--channel`` uses too): one input shows oedema (FLAIR) and enhancement (T1c) together."""
    from ..io.volumes import read_channels

    return read_channels([folder / "flair.nii.gz", folder / "t1c.nii.gz"])


def brats_volumes(root: Path, ids: list[str]) -> list[FrameVolume]:
    out = []
    for i in ids:
        folder = root / "brats2013" / i
        labels = read_volume(folder / "label.nii.gz").array.round().astype(np.int16)
        out.append(frame_volume(brats_volume(folder), labels, BRATS_LABELS, f"brats2013/{i}"))
    return out


DATASETS = {"la2018": la2018_volumes, "sts_sarcoma": sarcoma_volumes, "brats2013": brats_volumes}


def la2018_cases(root: Path, image_size: int, ids: list[str]) -> list[Case]:
    return [c for v in la2018_volumes(root, ids) for c in v.to_cases(image_size)]


def sarcoma_cases(root: Path, image_size: int, ids: list[str]) -> list[Case]:
    return [c for v in sarcoma_volumes(root, ids) for c in v.to_cases(image_size)]


def save_pack(volumes: list[FrameVolume], path: Path) -> Path:
    """Write frame volumes to one ``.npz`` (an LZMA zip, which ``np.load`` reads; masks bit-packed)."""
    import io
    import zipfile

    arrays, meta = {}, []
    for i, v in enumerate(volumes):
        arrays[f"{i}_frames"] = v.frames
        for j, mask in enumerate(v.masks.values()):
            arrays[f"{i}_mask{j}"] = np.packbits(mask, axis=-1)
        meta.append({"case_id": v.case_id, "structures": list(v.masks), "shape": list(v.frames.shape[:3]),
                     "row_spacing": v.row_spacing, "col_spacing": v.col_spacing, "prompts": v.prompts})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as zf:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(f"{key}.npy", buffer.getvalue())
    return path


def load_pack(path: Path) -> list[FrameVolume]:
    with np.load(path) as data:
        meta = json.loads(bytes(data["meta"]).decode("utf-8"))
        out = []
        for i, m in enumerate(meta):
            n, h, w = m["shape"]
            masks = {s: np.unpackbits(data[f"{i}_mask{j}"], axis=-1, count=w).astype(bool)
                     for j, s in enumerate(m["structures"])}
            out.append(FrameVolume(m["case_id"], data[f"{i}_frames"], masks, m["row_spacing"], m["col_spacing"],
                                   m.get("prompts", {})))
    return out


def default_splits(root: Path) -> dict[str, dict[str, list[str]]]:
    """Fixed splits by case id: LA2018 first 70 sorted ids train, last 10 validation; sarcoma: STS_001..018
    train except STS_002 (the bundled demo case), STS_019..024 and STS_002 validation; BraTS: the first three
    sorted cases train, the last one validation."""
    la = sorted(json.loads((root / "manifest.json").read_text(encoding="utf-8"))["la2018_train_cases"])
    sts = sorted(p.name for p in (root / "sts_sarcoma").iterdir() if p.name.startswith("STS_"))
    brats_dir = root / "brats2013"
    brats = sorted(p.name for p in brats_dir.iterdir() if p.is_dir()) if brats_dir.is_dir() else []
    return {
        "la2018": {"train": la[:70], "val": la[70:]},
        "sts_sarcoma": {"train": [s for s in sts[:18] if s != "STS_002"], "val": ["STS_002", *sts[18:]]},
        "brats2013": {"train": brats[:-1], "val": brats[-1:]},
    }


def clip_indices(rng: np.random.Generator, n: int, with_object: np.ndarray, p_object: float,
                 length: int) -> np.ndarray:
    """``length`` consecutive slice indices of an ``n``-slice volume in a random direction, starting on a slice of
    ``with_object`` with probability ``p_object`` (else anywhere), clipped at the volume's ends."""
    if with_object.size and rng.random() < p_object:
        start = int(rng.choice(with_object))
    else:
        start = int(rng.integers(n))
    step = 1 if rng.random() < 0.5 else -1
    return np.clip(start + step * np.arange(length), 0, n - 1)


class ClipSampler:
    """Random clips of ``length`` consecutive slices, starting on a slice with the object with probability
    ``p_object`` (the conditioning frame), random direction and flips, random prompt variant, and with probability
    ``p_spatial`` one random affine per clip (scale 0.8-1.2, rotation +-15 degrees, shift +-8 %). Cases may live on
    the GPU; clips are cut where the cases are. With ``prompts_per_clip`` > 1 (TPP), half of the clips get 1 to
    ``prompts_per_clip`` distinct variants joined by ``;`` (a structure's several prompts), the others one variant
    (which TPP completes from the prompt library, as at inference)."""

    def __init__(self, cases: list[Case], length: int = 3, p_object: float = 0.9, seed: int = 0,
                 p_spatial: float = 0.0, prompts_per_clip: int = 1) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases, self.length, self.p_object, self.p_spatial = cases, length, p_object, p_spatial
        self.prompts_per_clip = prompts_per_clip
        self.rng = np.random.default_rng(seed)
        self._with_object = [np.flatnonzero(c.masks.flatten(1).any(1).cpu().numpy()) for c in cases]

    def _affine(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch.nn.functional as F

        scale = float(self.rng.uniform(0.8, 1.2))
        angle = float(np.deg2rad(self.rng.uniform(-15, 15)))
        tx, ty = (float(v) for v in self.rng.uniform(-0.16, 0.16, 2))
        c, s = np.cos(angle) / scale, np.sin(angle) / scale
        theta = torch.tensor([[c, -s, tx], [s, c, ty]], dtype=torch.float32, device=x.device)
        grid = F.affine_grid(theta[None].expand(len(x), -1, -1), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return x, y[:, 0] > 0.5

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def _prompt(self, variants: list[str]) -> str:
        if self.prompts_per_clip > 1 and len(variants) > 1 and self.rng.random() < 0.5:
            k = int(self.rng.integers(1, min(self.prompts_per_clip, len(variants)) + 1))
            return "; ".join(variants[int(i)] for i in self.rng.choice(len(variants), size=k, replace=False))
        return str(self.rng.choice(variants))

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        images, masks, prompts = [], [], []
        for _ in range(batch):
            k = int(self.rng.integers(len(self.cases)))
            case, with_object = self.cases[k], self._with_object[k]
            idx = clip_indices(self.rng, case.frames.shape[0], with_object, self.p_object, self.length)
            x, y = case.frames[idx].float(), case.masks[idx]
            if self.rng.random() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if self.p_spatial and self.rng.random() < self.p_spatial:
                x, y = self._affine(x, y)
            gain = float(self.rng.uniform(0.9, 1.1))
            images.append((x * gain + float(self.rng.normal(0, 0.02))).clamp(0, 1))
            masks.append(y)
            prompts.append(self._prompt(case.prompts))
        return torch.stack(images), torch.stack(masks), prompts
