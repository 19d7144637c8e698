"""Reading images into a :class:`Volume` (numpy + geometry) through SimpleITK. No torch.

Axis conventions: ``Volume.array`` is (z, y, x) = (k, j, i), as ``sitk.GetArrayFromImage`` gives it; ``spacing``
and ``origin`` are (x, y, z); ``direction`` is 3x3 with columns the i, j, k axis directions in LPS (SimpleITK).
Sequences (2D+t) are volumes whose k axis is time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

log = logging.getLogger(__name__)

MIN_SLICES = 2
MIN_IN_PLANE = 16
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class InputError(ValueError):
    """An input image cannot be segmented; the message says why and what to do."""


@dataclass
class Volume:
    """A scalar volume (z, y, x) or an RGB sequence (t, y, x, 3) with its physical geometry."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str = "unknown"  # "CT", "MR", "US", "endoscopy", "unknown"

    def __post_init__(self) -> None:
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)

    @property
    def is_rgb(self) -> bool:
        return self.array.ndim == 4

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[:3])

    @classmethod
    def from_sitk(cls, image, modality: str = "unknown") -> Volume:
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise InputError(f"a 3D volume is needed, got a {image.GetDimension()}D image")
        array = sitk.GetArrayFromImage(image)
        return cls(array, image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(3, 3), modality)

    def to_sitk(self, array: np.ndarray | None = None):
        """A SimpleITK image with this geometry holding ``array`` (default: the volume's own)."""
        import SimpleITK as sitk

        data = self.array if array is None else array
        image = sitk.GetImageFromArray(data, isVector=data.ndim == 4)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m


def guess_modality(array: np.ndarray) -> str:
    """CT when intensities look like Hounsfield units (air near -1000), else unknown."""
    if array.ndim == 4:
        return "endoscopy"
    sample = array[:: max(1, array.shape[0] // 8)]
    return "CT" if np.issubdtype(sample.dtype, np.signedinteger) and sample.min() <= -500 else "unknown"


def validate(volume: Volume, min_slices: int = MIN_SLICES) -> Volume:
    """Reject what cannot be segmented; replace NaN/Inf voxels (with a warning) instead of failing.
    ``min_slices=1`` admits single 2D frames (training data; segmenting one still needs ``MIN_SLICES``)."""
    array = volume.array
    if array.ndim not in (3, 4):
        raise InputError(f"a 3D volume or an RGB frame sequence is needed, got an array of shape {array.shape}")
    if min(array.shape[:3]) < 1 or array.shape[0] < min_slices:
        raise InputError(f"the volume has {array.shape[0]} slice(s): at least {min_slices} are needed "
                         "(for a single 2D image, use a 2D segmenter)")
    if min(array.shape[1:3]) < MIN_IN_PLANE:
        raise InputError(f"slices of {array.shape[1]}x{array.shape[2]} voxels are too small (at least "
                         f"{MIN_IN_PLANE}x{MIN_IN_PLANE})")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.all():
            raise InputError("every voxel is NaN or infinite")
        if bad.any():
            fill = float(np.min(array[~bad]))
            log.warning("%d NaN/Inf voxels replaced by the minimum intensity %.3g", int(bad.sum()), fill)
            array = np.where(bad, fill, array)
    if float(np.max(array)) == float(np.min(array)):
        raise InputError("the image is constant (every voxel has the same value): nothing to segment")
    volume.array = array
    return volume


def read_volume(path: Union[str, Path], modality: str | None = None) -> Volume:
    """NIfTI, NRRD, MHA/MHD, a DICOM series folder, a folder of frames, or an npz (keys imgs, spacing, ...)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if frames:
            return validate(read_frames(frames))
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not ids:
            raise InputError(f"{path} holds no DICOM series and no image frames")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), ids[0]))
        image = reader.Execute()
    elif path.suffix == ".npz":
        return validate(_read_npz(path, modality))
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"cannot read {path}: {str(exc).strip().splitlines()[-1]}") from exc
    if image.GetDimension() == 2 or (image.GetDimension() == 3 and image.GetSize()[2] == 1):
        raise InputError(f"{path.name} is a 2D image: a volume (or a folder of frames) is needed")
    if image.GetNumberOfComponentsPerPixel() > 1:
        image = sitk.VectorIndexSelectionCast(image, 0)
    volume = Volume.from_sitk(image)
    volume.modality = modality or guess_modality(volume.array)
    return validate(volume)


def _read_npz(path: Path, modality: str | None) -> Volume:
    with np.load(path) as data:
        if "imgs" not in data:
            raise InputError(f"{path.name} has no 'imgs' array")
        spacing = tuple(data["spacing"]) if "spacing" in data else (1.0, 1.0, 1.0)
        origin = tuple(data["origin"]) if "origin" in data else (0.0, 0.0, 0.0)
        direction = np.array(data["direction"]).reshape(3, 3) if "direction" in data else np.eye(3)
        return Volume(np.asarray(data["imgs"]), spacing, origin, direction, modality or "CT")


def read_frames(files: list[Path]) -> Volume:
    """A 2D+t sequence from image files in order: (t, y, x) grey or (t, y, x, 3) RGB, spacing 1."""
    from PIL import Image

    arrays = [np.asarray(Image.open(f)) for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise InputError(f"frames differ in size: {sorted(shapes)}")
    stack = np.stack(arrays)
    if stack.ndim == 4:
        stack = stack[..., :3]
        if np.all(stack[..., 0] == stack[..., 1]) and np.all(stack[..., 1] == stack[..., 2]):
            stack = stack[..., 0]
    return Volume(stack, modality="endoscopy" if stack.ndim == 4 else "US")
