"""Fine-tuning from corrections: volumes with the segmentations a radiologist corrected and saved from Slicer
(``.seg.nrrd``; the prompt in each segment's ``TextPromptSeg.Prompt`` tag) become a training set.

Layout: a folder of ``NAME.seg.nrrd`` files, each beside its image ``NAME.nrrd`` / ``.nii.gz`` / ``.nii`` / ``.mha``
(Slicer's "Save" writes both). Each segment becomes a structure whose prompts are its tagged prompt and its name;
segments are resampled onto the image grid through their physical geometry (Slicer crops segmentations to their
extent, so the grids usually differ).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..io.volumes import read_volume
from ..io.writers import PROMPT_TAG
from .data import FrameVolume, masks_frame_volume

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha", ".mhd")


@dataclass
class SegmentRecord:
    name: str
    label_value: int
    layer: int
    prompt: Optional[str]


def read_segments(image) -> list[SegmentRecord]:
    """Segment fields of a ``.seg.nrrd`` read by SimpleITK (``SegmentN_Name``, ``_LabelValue``, ``_Layer``,
    ``_Tags``)."""
    records, i = [], 0
    while image.HasMetaDataKey(f"Segment{i}_Name"):
        def field(key: str, default: str = "", i=i) -> str:
            name = f"Segment{i}_{key}"
            return image.GetMetaData(name) if image.HasMetaDataKey(name) else default

        tags = dict(t.split(":", 1) for t in field("Tags").split("|") if ":" in t)
        records.append(SegmentRecord(field("Name"), int(field("LabelValue", "1")), int(field("Layer", "0")),
                                     tags.get(PROMPT_TAG) or None))
        i += 1
    return records


def _image_for(seg_path: Path) -> Path:
    stem = seg_path.name[: -len(".seg.nrrd")]
    for suffix in IMAGE_SUFFIXES:
        candidate = seg_path.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no image beside {seg_path.name} (looked for {stem} + {', '.join(IMAGE_SUFFIXES)})")


def correction_volume(seg_path: Path, axis: Optional[str] = None) -> FrameVolume:
    import SimpleITK as sitk

    image_path = _image_for(seg_path)
    volume = read_volume(image_path)
    reference = sitk.ReadImage(str(image_path))
    seg = sitk.ReadImage(str(seg_path))
    records = read_segments(seg)
    if not records:
        raise ValueError(f"{seg_path.name} has no segments")
    layers = seg.GetNumberOfComponentsPerPixel()
    masks, prompts = {}, {}
    for record in records:
        layer = sitk.VectorIndexSelectionCast(seg, record.layer) if layers > 1 else seg
        binary = sitk.Cast(sitk.Equal(layer, record.label_value), sitk.sitkUInt8)
        on_grid = sitk.Resample(binary, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        masks[record.name] = sitk.GetArrayFromImage(on_grid).astype(bool)
        prompts[record.name] = [p for p in (record.prompt, record.name) if p]
    fv = masks_frame_volume(volume, masks, f"corrections/{image_path.name}", axis)
    fv.prompts = prompts
    return fv


def corrections_volumes(folder: Path, axis: Optional[str] = None) -> list[FrameVolume]:
    paths = sorted(Path(folder).glob("*.seg.nrrd"))
    if not paths:
        raise FileNotFoundError(f"no .seg.nrrd files in {folder}")
    out = [correction_volume(p, axis) for p in paths]
    log.info("%d corrected volumes, %d segments", len(out), sum(len(v.masks) for v in out))
    return out
