"""Dataset adapters: any labelled data -> ``FrameVolume`` (frames as the engine slices them, one mask per structure,
the prompts of each structure).

* A prompt spec (JSON or YAML) maps label values to structure names and prompts (profile, shape, colour, class
  name), e.g. ``{"labels": {"1": {"structure": "spleen", "prompts": {"profile": "...", "shape": "..."}},
  "2": "liver", "3": {"structure": "whole tumour", "values": [1, 2, 3]}}}``; a structure given by name alone takes
  its prompts from the prompt library (``Resources/prompt_library.json``) or our training prompts.
* ``nnunet_volumes``: nnU-Net v2 / MSD folders (``dataset.json``, ``imagesTr``, ``labelsTr``).
* ``sequence_volume``: a 2D+t sequence (a folder of frames with a folder of masks of the same names).
* ``SHARED_ADAPTERS``: one adapter for every folder of ``../shared/data``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..io.volumes import Volume, read_frames, read_volume
from .data import BRATS_LABELS, PROMPTS, FrameVolume, brats_volume, frame_volume, masks_frame_volume

PROMPT_KINDS = ("profile", "shape", "colour", "class")


def structure_prompts(name: str) -> list[str]:
    """Prompt variants for a structure name: our training prompts, else the library entry's (name + profile,
    shape and colour descriptions), else the name itself."""
    from ..prompts import match_prompt

    if name in PROMPTS:
        return list(PROMPTS[name])
    readable = name.replace("_", " ").strip()
    match = match_prompt(readable)
    if match.entry is not None and match.how in ("name", "synonym"):
        return [match.entry.name.lower(), *match.entry.prompts.values()]
    return [readable]


@dataclass
class StructureSpec:
    name: str
    values: tuple[int, ...]
    prompts: list[str]


def load_prompt_spec(spec: Union[Path, str, dict]) -> list[StructureSpec]:
    """Parse a prompt spec (a dict, or a .json / .yaml file) into structures with label values and prompts."""
    if not isinstance(spec, dict):
        path = Path(spec)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
    labels = spec.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError("a prompt spec needs a non-empty 'labels' mapping of label value -> structure")
    out = []
    for value, item in labels.items():
        if isinstance(item, str):
            item = {"structure": item}
        name = item.get("structure") or item.get("name")
        if not name:
            raise ValueError(f"label {value}: no structure name")
        if int(value) == 0 and "values" not in item:
            continue  # background
        prompts = item.get("prompts")
        if isinstance(prompts, dict):
            unknown = set(prompts) - set(PROMPT_KINDS)
            if unknown:
                raise ValueError(f"label {value}: unknown prompt kinds {sorted(unknown)}; use {PROMPT_KINDS}")
            prompts = [p for p in prompts.values() if p]
        prompts = list(prompts) if prompts else structure_prompts(name)
        values = tuple(int(v) for v in item.get("values", [value]))
        out.append(StructureSpec(name, values, prompts))
    return out


def spec_volume(volume: Volume, labels: np.ndarray, structures: list[StructureSpec], case_id: str,
                axis: Optional[str] = None, keep_empty: bool = False) -> FrameVolume:
    """One volume and its label map through a prompt spec; structures absent from the label map are dropped
    unless ``keep_empty``."""
    present = [s for s in structures if keep_empty or np.isin(labels, s.values).any()]
    fv = frame_volume(volume, labels, {s.name: s.values for s in present}, case_id, axis)
    fv.prompts = {s.name: s.prompts for s in present}
    return fv


def _label_names(dataset_json: dict) -> dict[str, str]:
    """nnU-Net v2 ``{"name": value}`` or MSD ``{"value": "name"}`` -> {value: name}."""
    labels = dataset_json.get("labels", {})
    if all(str(k).lstrip("-").isdigit() for k in labels):
        return {str(k): v for k, v in labels.items()}
    return {str(v): k for k, v in labels.items() if isinstance(v, int)}


def nnunet_volumes(folder: Path, spec: Union[Path, dict, None] = None, limit: Optional[int] = None,
                   channel: int = 0) -> list[FrameVolume]:
    """An nnU-Net v2 or MSD dataset folder. Prompts from ``spec`` if given, else from the label names."""
    folder = Path(folder)
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    structures = load_prompt_spec(spec) if spec is not None else load_prompt_spec(
        {"labels": {v: n for v, n in _label_names(meta).items() if int(v) != 0}})
    ending = meta.get("file_ending", ".nii.gz")
    out = []
    for label_path in sorted((folder / "labelsTr").glob(f"*{ending}"))[:limit]:
        case = label_path.name[: -len(ending)]
        image = folder / "imagesTr" / f"{case}_{channel:04d}{ending}"  # nnU-Net v2
        if not image.exists():
            image = folder / "imagesTr" / label_path.name  # MSD (4D files are not supported here)
        out.append(spec_volume(read_volume(image), read_volume(label_path).array.round().astype(np.int32),
                               structures, f"{folder.name}/{case}"))
    return out


def _mask_file(path: Path) -> np.ndarray:
    from PIL import Image

    data = np.asarray(Image.open(path).convert("L"))
    return data > 127  # JPEG masks are not exactly binary


def sequence_volume(frames_dir: Path, masks_dir: Path, structure: str, prompts: Optional[list[str]] = None,
                    pattern: str = "*") -> FrameVolume:
    """A 2D+t sequence: frames in name order and masks with the same file stem (any image format)."""
    frames = sorted(p for p in Path(frames_dir).glob(pattern) if p.is_file())
    if not frames:
        raise ValueError(f"no frames in {frames_dir}")
    masks = {p.stem: p for p in Path(masks_dir).iterdir()}
    missing = [f.name for f in frames if f.stem not in masks]
    if missing:
        raise ValueError(f"no mask for frames {missing[:3]}")
    volume = read_frames(frames)
    labels = np.stack([_mask_file(masks[f.stem]) for f in frames]).astype(np.uint8)
    return spec_volume(volume, labels, [StructureSpec(structure, (1,), prompts or structure_prompts(structure))],
                       f"{Path(frames_dir).name}", keep_empty=True)


# --- the folders of ../shared/data -----------------------------------------------------------------------------


def totalseg_volumes(root: Path, limit: Optional[int] = None) -> list[FrameVolume]:
    """TotalSegmentator's small CT and MR examples with their organ label maps (``class_map_total_v2.json``)."""
    base = root / "totalseg_small"
    maps = json.loads((base / "class_map_total_v2.json").read_text(encoding="utf-8"))
    out = []
    for image, label, key in (("example_ct_sm", "example_seg", "total"), ("example_mr_sm", "example_seg_mr",
                                                                           "total_mr")):
        structures = load_prompt_spec({"labels": maps[key]})
        volume = read_volume(base / f"{image}.nii.gz")
        out.append(spec_volume(volume, read_volume(base / f"{label}.nii.gz").array, structures,
                               f"totalseg_small/{image}"))
    return out[:limit]


def recist_volumes(root: Path, limit: Optional[int] = None) -> list[FrameVolume]:
    """DeepLesion sub-volumes (npz: uint8 windowed ``imgs``, ``gts``, geometry): one lesion each."""
    out = []
    for path in sorted((root / "recist_ct").glob("*.npz"))[:limit]:
        volume = read_volume(path)  # already windowed to uint8: decided "unknown", percentile scaling
        with np.load(path) as data:
            labels = (np.asarray(data["gts"]) > 0).astype(np.uint8)
        out.append(spec_volume(volume, labels, [StructureSpec("lesion", (1,), structure_prompts("lesion"))],
                               f"recist_ct/{path.stem}"))
    return out


def kvasir_volumes(root: Path, limit: Optional[int] = None) -> list[FrameVolume]:
    """Kvasir-SEG colonoscopy frames (RGB), each a one-frame sequence with its polyp mask."""
    base = root / "kvasir_polyp_2d" / "Kvasir-SEG"
    out = []
    for image in sorted((base / "images").glob("*.jpg"))[:limit]:
        volume = read_frames([image])
        labels = _mask_file(base / "masks" / image.name)[None].astype(np.uint8)
        out.append(spec_volume(volume, labels, [StructureSpec("polyp", (1,), structure_prompts("polyp"))],
                               f"kvasir/{image.stem}"))
    return out


def ct_organs_2d_volumes(root: Path, limit: Optional[int] = None) -> list[FrameVolume]:
    """SAM-Med2D demo CT slices, one mask file per organ (``<image>_<organ>_000.png``)."""
    base = root / "ct_organs_2d" / "data_demo"
    out = []
    for image in sorted((base / "images").glob("*.png"))[:limit]:
        volume = read_frames([image])  # 8-bit display values: percentile scaling, no CT window
        pattern = re.compile(rf"^{re.escape(image.stem)}_(.+)_\d+$")
        masks, prompts = {}, {}
        for mask_path in sorted((base / "masks").glob(f"{image.stem}_*.png")):
            found = pattern.match(mask_path.stem)
            mask = _mask_file(mask_path)[None]
            if found and mask.any():  # organ masks may overlap: kept as separate masks, not one label map
                masks[found.group(1)] = mask
                prompts[found.group(1)] = structure_prompts(found.group(1))
        fv = masks_frame_volume(volume, masks, f"ct_organs_2d/{image.stem}")
        fv.prompts = prompts
        out.append(fv)
    return out


def _split_adapter(name: str) -> Callable:
    def load(root: Path, limit: Optional[int] = None) -> list[FrameVolume]:
        from .data import DATASETS, default_splits

        split = default_splits(root)[name]
        ids = split["train"] + split["val"]
        return DATASETS[name](root, ids[:limit])

    return load


SHARED_ADAPTERS: dict[str, Callable[..., list[FrameVolume]]] = {
    "la2018": _split_adapter("la2018"),
    "sts_sarcoma": _split_adapter("sts_sarcoma"),
    "brats2013": _split_adapter("brats2013"),
    "totalseg_small": totalseg_volumes,
    "recist_ct": recist_volumes,
    "kvasir_polyp_2d": kvasir_volumes,
    "ct_organs_2d": ct_organs_2d_volumes,
}

__all__ = ["BRATS_LABELS", "SHARED_ADAPTERS", "StructureSpec", "brats_volume", "load_prompt_spec",
           "nnunet_volumes", "sequence_volume", "spec_volume", "structure_prompts"]
