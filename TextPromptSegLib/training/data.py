"""Training data: volumes with label maps and per-label prompts, prepared once into model-resolution frames.

Adapters for ../shared/data: ``la2018`` (left atrium, label 1) and ``sts_sarcoma`` (CT_image/CT_mask, label 1);
``brats2013`` (FLAIR, one prompt per sub-region). Frames go through the inference path's own preparation
(``engine.pipeline.PreparedVolume``), so training and inference see identical inputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..engine.pipeline import PreparedVolume
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
    """One volume prepared for a model: frames (N, 3, S, S) float16 in [0, 1] and masks (N, S, S) per label."""

    case_id: str
    structure: str
    frames: torch.Tensor
    masks: torch.Tensor
    prompts: list[str]


def prepare_case(image: Path, label: Path, structure: str, label_values: tuple[int, ...], image_size: int,
                 case_id: str, axis: Optional[str] = None) -> Case:
    volume = read_volume(image)
    labels = read_volume(label).array
    prepared = PreparedVolume(volume, image_size, axis)
    target = prepared.geometry.to_frames(np.isin(labels, label_values).astype(np.float32))
    frames = prepared.transform.frames_to_model(prepared.frames).half()
    masks = prepared.transform.frames_to_model(target)[:, 0] > 0.5
    return Case(case_id, structure, frames, masks, PROMPTS[structure])


def la2018_cases(root: Path, image_size: int, ids: list[str]) -> list[Case]:
    return [prepare_case(root / "la2018" / "train" / i / "image.nii.gz", root / "la2018" / "train" / i / "label.nii.gz",
                         "left atrium", (1,), image_size, f"la2018/{i}") for i in ids]


def sarcoma_cases(root: Path, image_size: int, ids: list[str]) -> list[Case]:
    base = root / "sts_sarcoma"
    return [prepare_case(base / i / "CT_image.nii.gz", base / i / "CT_mask.nii.gz", "sarcoma", (1,), image_size,
                         f"sts/{i}") for i in ids]


def default_splits(root: Path) -> dict[str, dict[str, list[str]]]:
    """Fixed splits by case id: LA2018 first 70 sorted ids train, last 10 validation; sarcoma: STS_001..018
    train except STS_002 (the bundled demo case), STS_019..024 and STS_002 validation."""
    la = sorted(json.loads((root / "manifest.json").read_text(encoding="utf-8"))["la2018_train_cases"])
    sts = sorted(p.name for p in (root / "sts_sarcoma").iterdir() if p.name.startswith("STS_"))
    return {
        "la2018": {"train": la[:70], "val": la[70:]},
        "sts_sarcoma": {"train": [s for s in sts[:18] if s != "STS_002"], "val": ["STS_002", *sts[18:]]},
    }


class ClipSampler:
    """Random clips of ``length`` consecutive slices, starting on a slice with the object with probability
    ``p_object`` (the conditioning frame), random direction and flips, random prompt variant."""

    def __init__(self, cases: list[Case], length: int = 3, p_object: float = 0.9, seed: int = 0) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases, self.length, self.p_object = cases, length, p_object
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        images, masks, prompts = [], [], []
        for _ in range(batch):
            case = self.cases[self.rng.integers(len(self.cases))]
            n = case.frames.shape[0]
            with_object = np.flatnonzero(case.masks.flatten(1).any(1).numpy())
            if with_object.size and self.rng.random() < self.p_object:
                start = int(self.rng.choice(with_object))
            else:
                start = int(self.rng.integers(n))
            step = 1 if self.rng.random() < 0.5 else -1
            idx = np.clip(start + step * np.arange(self.length), 0, n - 1)
            x, y = case.frames[idx].float(), case.masks[idx]
            if self.rng.random() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            gain = float(self.rng.uniform(0.9, 1.1))
            images.append((x * gain + float(self.rng.normal(0, 0.02))).clamp(0, 1))
            masks.append(y)
            prompts.append(str(self.rng.choice(case.prompts)))
        return torch.stack(images), torch.stack(masks), prompts
