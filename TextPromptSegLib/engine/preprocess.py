"""Intensity normalisation and the resize/pad to the model input, with the exact inverse. numpy only at import.

Which normalisation a volume gets is decided in one place for training, evaluation, the CLI and the Slicer Logic:
:func:`decide_modality` says whether a volume is CT (from its metadata when there is any, else from its values),
and :func:`normalize_intensity` applies what the model's checkpoint states for that modality (:class:`InputSpec`,
``"inputs"`` in its ``config.json``; the training code's own choice, :data:`TRAINING_INPUTS`, when it states
none). Intensities become [0, 1] once per volume (so neighbouring slices stay comparable): a CT window, or robust
percentiles (0.5-99.5 %) for MRI and ultrasound; RGB frames are divided by 255. A user's ``window`` overrides the
checkpoint's choice for that run.

Frames are resized keeping their *physical* aspect ratio (pixel spacing) so that the longer side fills S, then
padded at the bottom/right; :meth:`FrameTransform.logits_to_frame` crops the padding and resizes back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

WINDOWS = {  # (centre, width) in HU
    "soft_tissue": (40.0, 400.0),
    "abdomen": (50.0, 350.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
Window = Union[str, tuple[float, float], None]

# --- which modality -------------------------------------------------------------------------------------------

# metadata keys (compared without case) whose value names the modality: DICOM (0008,0060) as SimpleITK/GDCM, Slicer's
# DICOM database ("0008,0060") and NRRD/MITK-style key names write it, and a plain "modality" key
_MODALITY_KEYS = ("0008|0060", "0008,0060", "modality", "dicom.modality", "dicom_0008_0060", "dicom.0008.0060")
# metadata that implies the modality without naming it: Slicer's voxel value quantity / units codes (set from the
# SOP class by its DICOM scalar volume plugin), the DICOM SOP class UID and the rescale type
_CT_UNITS = ("[hnsf'u]", "hu", "hounsfield unit")
_QUANTITY = {"112031": "CT", "110852": "MR"}  # DCM codes: attenuation coefficient, MR signal intensity
_SOP_CLASS = {"1.2.840.10008.5.1.4.1.1.2": "CT", "1.2.840.10008.5.1.4.1.1.4": "MR",
              "1.2.840.10008.5.1.4.1.1.6": "US", "1.2.840.10008.5.1.4.1.1.3": "US"}


def modality_from_metadata(metadata: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The modality a file's or node's metadata states ("CT", "MR", "US", or the DICOM code as given, e.g. "PT"), or
    None when it states none. Keys are compared without case: a DICOM Modality ``0008|0060`` / ``0008,0060``, a
    ``modality`` key (NRRD, Slicer attribute ``DICOM.Modality``), ``units`` / ``quantity`` (Slicer's voxel value
    codes: Hounsfield units or "attenuation coefficient" mean CT), ``0008|0016`` (SOP class UID) and
    ``0028|1054`` (rescale type "HU")."""
    if not metadata:
        return None
    meta = {str(k).strip().lower(): str(v).strip() for k, v in metadata.items() if v is not None and str(v).strip()}
    for key in _MODALITY_KEYS:
        if key in meta:
            value = meta[key].upper()
            return {"MRI": "MR", "OCT": "unknown"}.get(value, value)
    if meta.get("units", "").lower() in _CT_UNITS or meta.get("0028|1054", "").upper() == "HU":
        return "CT"
    if meta.get("quantity") in _QUANTITY:
        return _QUANTITY[meta["quantity"]]
    sop = meta.get("0008|0016", "")
    for prefix, modality in _SOP_CLASS.items():  # e.g. Enhanced CT 1.2.840.10008.5.1.4.1.1.2.1
        if sop == prefix or sop.startswith(prefix + "."):
            return modality
    return None


def looks_like_hounsfield(array: np.ndarray) -> bool:
    """Whether a scalar volume's values look like Hounsfield units, whatever its dtype: air or padding at -500 HU
    or below, a median between air (-1100) and dense bone (3100), and values that are whole numbers (as stored CT
    is, in int16 or float32 alike) or, for resampled CTs, at least 1 % of voxels at air (-1050..-950 HU).
    Reads every k-th slice (at most about 16)."""
    if array.ndim != 3 or array.size == 0:
        return False
    sample = np.asarray(array[:: max(1, array.shape[0] // 16)])
    if sample.dtype.kind not in "iuf" or sample.dtype.kind == "u":  # unsigned data holds no negative HU
        return False
    sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample.ravel()
    if sample.size == 0 or float(sample.min()) > -500:
        return False
    if not -1100 <= float(np.median(sample)) <= 3100:
        return False
    if sample.dtype.kind == "i" or bool(np.all(sample == np.round(sample))):
        return True
    return float(np.mean((sample >= -1050) & (sample <= -950))) >= 0.01


def decide_modality(array: np.ndarray, metadata: Optional[Mapping[str, Any]] = None) -> str:
    """The modality that selects a volume's intensity normalisation, decided the same way by training, evaluation,
    the CLI and the Slicer Logic: "endoscopy" for colour (t, y, x, 3) data; else what the metadata states
    (:func:`modality_from_metadata`: DICOM Modality, SOP class, Slicer's voxel value units, an NRRD ``modality``
    key); else "CT" when the values look like Hounsfield units (:func:`looks_like_hounsfield`, int16 and float32
    alike), otherwise "unknown" (robust percentiles, as for MR).

    array: (z, y, x) scalar or (z, y, x, 3) colour voxels. metadata: string keys and values, or None."""
    if array.ndim == 4:
        return "endoscopy"
    stated = modality_from_metadata(metadata)
    if stated is not None:
        return stated
    return "CT" if looks_like_hounsfield(array) else "unknown"


# --- how each modality is normalised --------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalisation:
    """How one modality's intensities become [0, 1]: a window (centre, width, in the image's units: HU for CT), or
    the (low, high) percentiles of the volume, or for colour data a division by ``scale`` (values above 1 only)."""

    window: Optional[tuple[float, float]] = None
    percentiles: Optional[tuple[float, float]] = None
    scale: Optional[float] = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.window, self.percentiles, self.scale)) != 1:
            raise ValueError("a normalisation is exactly one of: window, percentiles, scale")
        if self.window is not None and float(self.window[1]) <= 0:
            raise ValueError(f"window width must be positive, got {self.window[1]}")

    def to_dict(self) -> dict[str, Any]:
        if self.window is not None:
            return {"window": [float(v) for v in self.window]}
        if self.percentiles is not None:
            return {"percentiles": [float(v) for v in self.percentiles]}
        return {"scale": float(self.scale)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalisation:
        unknown = set(data) - {"window", "percentiles", "scale"}
        if unknown:
            raise ValueError(f"unknown normalisation key(s) {sorted(unknown)}")
        return cls(tuple(data["window"]) if "window" in data else None,
                   tuple(data["percentiles"]) if "percentiles" in data else None,
                   float(data["scale"]) if "scale" in data else None)

    def describe(self) -> str:
        if self.window is not None:
            return f"window {self.window[0]:g},{self.window[1]:g}"
        if self.percentiles is not None:
            return f"percentiles {self.percentiles[0]:g}-{self.percentiles[1]:g}"
        return f"divided by {self.scale:g}"


PERCENTILES = Normalisation(percentiles=(0.5, 99.5))
# what the training code does (training/data.py prepares every volume with this) and therefore what a checkpoint
# that states nothing was trained with
DEFAULT_INTENSITY: Mapping[str, Normalisation] = {
    "CT": Normalisation(window=WINDOWS["soft_tissue"]), "MR": PERCENTILES, "US": PERCENTILES,
    "unknown": PERCENTILES, "RGB": Normalisation(scale=255.0)}


@dataclass(frozen=True)
class ChannelSet:
    """Co-registered sequences that a model reads together as one colour composite (:func:`channel_composite`) for
    some structures, e.g. BraTS sub-regions from FLAIR + contrast T1. ``sequences`` in channel order."""

    sequences: tuple[str, ...]
    structures: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"sequences": list(self.sequences), "structures": list(self.structures),
                "composite": "each sequence scaled by its 0.5-99.5 percentiles inside the brain (voxels above the "
                             "background of any sequence) into channels 1-2, their mean in channel 3, 8-bit"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelSet:
        return cls(tuple(str(v) for v in data["sequences"]), tuple(str(v) for v in data.get("structures", ())))

    def covers(self, prompt: str) -> bool:
        """Whether a prompt names one of these structures (case-insensitive; "oedema" and "edema" alike)."""
        text = prompt.lower().replace("oedema", "edema").replace("tumor", "tumour")
        return any(s.lower().replace("oedema", "edema") in text for s in self.structures)


BRATS_CHANNELS = ChannelSet(("FLAIR", "T1c"), ("necrosis", "edema", "enhancing tumour", "whole tumour"))


@dataclass(frozen=True)
class InputSpec:
    """What a model reads, as its checkpoint's ``config.json`` states under ``"inputs"``:

    intensity: per modality ("CT", "MR", "US", "unknown", and "RGB" for colour data) the normalisation it was
    trained with; a modality without an entry gets the "unknown" one.
    channels: sets of sequences read together as a composite for some structures (empty: one image for all).
    """

    intensity: Mapping[str, Normalisation] = field(default_factory=lambda: dict(DEFAULT_INTENSITY))
    channels: tuple[ChannelSet, ...] = ()

    def normalisation(self, modality: str, rgb: bool = False) -> Normalisation:
        if rgb:
            return self.intensity.get("RGB", DEFAULT_INTENSITY["RGB"])
        return self.intensity.get(modality) or self.intensity.get("unknown", PERCENTILES)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"intensity": {k: v.to_dict() for k, v in self.intensity.items()}}
        if self.channels:
            out["channels"] = [c.to_dict() for c in self.channels]
        return out

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> InputSpec:
        """The spec of a config's ``"inputs"``; None (an older checkpoint) gives :data:`TRAINING_INPUTS`."""
        if not data:
            return cls()
        unknown = set(data) - {"intensity", "channels"}
        if unknown:
            raise ValueError(f"unknown 'inputs' key(s) {sorted(unknown)}")
        intensity = {str(k): Normalisation.from_dict(v) for k, v in data.get("intensity", {}).items()}
        return cls({**DEFAULT_INTENSITY, **intensity}, tuple(ChannelSet.from_dict(c) for c in data.get("channels", ())))

    def channel_set(self, count: int) -> Optional[ChannelSet]:
        """The channel set of ``count`` sequences, if the model reads one."""
        return next((c for c in self.channels if len(c.sequences) == count), None)


TRAINING_INPUTS = InputSpec()  # what training/data.py prepares volumes with; written into every trained checkpoint


def model_inputs(model: Any) -> InputSpec:
    """The :class:`InputSpec` a built model's checkpoint states (``model.inputs``), else the training default."""
    spec = getattr(model, "inputs", None)
    return spec if isinstance(spec, InputSpec) else TRAINING_INPUTS


def channel_composite(arrays: list[np.ndarray], percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Co-registered sequences (each (z, y, x), the same shape) -> the (z, y, x, 3) uint8 composite that training
    builds for multi-sequence structures: each of the first two sequences scaled to [0, 1] by its ``percentiles``
    inside the brain and 0 outside, the third channel their mean. The brain is every voxel where some sequence lies
    above its own minimum (skull-stripped data has a constant background; on BraTS 2013 this is exactly its brain
    mask)."""
    if len(arrays) != 2:
        raise ValueError(f"the composite takes 2 sequences, got {len(arrays)}")
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"the sequences differ in shape: {[a.shape for a in arrays]}")
    brain = np.zeros(arrays[0].shape, bool)
    for data in arrays:
        brain |= data > data.min()
    channels = []
    for data in arrays:
        low, high = np.percentile(data[brain], percentiles) if brain.any() else (data.min(), data.max())
        channels.append(np.where(brain, np.clip((data - low) / max(high - low, 1e-6), 0, 1), 0))
    channels.append((channels[0] + channels[1]) / 2)
    return np.round(np.stack(channels, -1) * 255).astype(np.uint8)


def resolve_window(window: Window) -> Optional[tuple[float, float]]:
    """A preset name or (centre, width) -> (centre, width); ValueError for an unknown name or a width <= 0."""
    if window is None:
        return None
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; choose one of {', '.join(WINDOWS)} or give centre,width")
        return WINDOWS[window]
    centre, width = float(window[0]), float(window[1])
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width:g}")
    return centre, width


def normalize_intensity(array: np.ndarray, modality: str = "unknown", window: Window = None,
                        inputs: Optional[InputSpec] = None) -> np.ndarray:
    """Volume (z, y, x) or RGB (t, y, x, 3) -> float32 in [0, 1] with the same shape.

    modality: as :func:`decide_modality` says; inputs: the model's :class:`InputSpec` (default: the training
    code's); window: a preset name or (centre, width) that overrides the spec for this volume."""
    spec = (inputs or TRAINING_INPUTS).normalisation(modality, rgb=array.ndim == 4)
    if array.ndim == 4:
        scale = spec.scale or 255.0
        return np.clip(array.astype(np.float32) / (scale if array.max() > 1.0 else 1.0), 0.0, 1.0)
    chosen = resolve_window(window) or spec.window
    data = array.astype(np.float32, copy=False)
    if chosen is not None:
        centre, width = float(chosen[0]), float(chosen[1])
        low, high = centre - width / 2, centre + width / 2
    else:
        sample = data[:: max(1, data.shape[0] // 32)].ravel()
        low, high = (float(v) for v in np.percentile(sample, spec.percentiles or PERCENTILES.percentiles))
        if high <= low:
            low, high = float(data.min()), float(data.max())
    return np.clip((data - low) / max(high - low, 1e-6), 0.0, 1.0)


@dataclass(frozen=True)
class FrameTransform:
    """Frame (H, W) with pixel spacing (row, col) <-> model input S x S (content at the top-left)."""

    height: int
    width: int
    image_size: int
    row_spacing: float = 1.0
    col_spacing: float = 1.0

    @property
    def content_shape(self) -> tuple[int, int]:
        """(h, w) of the resized frame inside the S x S input."""
        ph, pw = self.height * self.row_spacing, self.width * self.col_spacing
        scale = self.image_size / max(ph, pw)
        return (max(1, min(self.image_size, round(ph * scale))), max(1, min(self.image_size, round(pw * scale))))

    def frames_to_model(self, frames: np.ndarray):
        """(b, H, W) or (b, H, W, 3) float in [0, 1] -> torch (b, 3, S, S)."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
        x = x[:, None].expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        h, w = self.content_shape
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def logits_to_frame(self, logits) -> np.ndarray:
        """(b, s, s) model-space logits at any resolution s -> (b, H, W) bool masks on the frame grid."""
        import torch
        import torch.nn.functional as F

        logits = torch.as_tensor(logits).float()
        s = logits.shape[-1]
        h, w = self.content_shape
        # resample the content box [0, h*s/S) x [0, w*s/S) of the logits onto the H x W frame pixel centres
        ys = (torch.arange(self.height) + 0.5) * (h * s / self.image_size) / self.height - 0.5
        xs = (torch.arange(self.width) + 0.5) * (w * s / self.image_size) / self.width - 0.5
        grid_y = ys / (s - 1) * 2 - 1 if s > 1 else torch.zeros_like(ys)
        grid_x = xs / (s - 1) * 2 - 1 if s > 1 else torch.zeros_like(xs)
        gy, gx = torch.meshgrid(grid_y, grid_x, indexing="ij")
        grid = torch.stack([gx, gy], -1)[None].expand(logits.shape[0], -1, -1, -1)
        out = F.grid_sample(logits[:, None].nan_to_num(neginf=-1024.0), grid, mode="bilinear",
                            padding_mode="border", align_corners=True)
        return (out[:, 0] > 0).numpy()

    def frame_points_to_model(self, points_rc: np.ndarray) -> np.ndarray:
        """(P, 2) frame (row, col) pixel positions -> (P, 2) model-space (x, y) as SAM-2 expects."""
        h, w = self.content_shape
        pts = np.asarray(points_rc, dtype=np.float32)
        return np.stack([(pts[:, 1] + 0.5) * w / self.width, (pts[:, 0] + 0.5) * h / self.height], axis=1)

    def frame_mask_to_model(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool -> (S, S) bool mask prompt (nearest)."""
        h, w = self.content_shape
        rows = np.minimum((np.arange(h) + 0.5) * self.height / h, self.height - 1).astype(int)
        cols = np.minimum((np.arange(w) + 0.5) * self.width / w, self.width - 1).astype(int)
        out = np.zeros((self.image_size, self.image_size), bool)
        out[:h, :w] = np.asarray(mask, bool)[np.ix_(rows, cols)]
        return out

