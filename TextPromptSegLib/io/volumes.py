"""Reading images into a :class:`Volume` (numpy + geometry) through SimpleITK. No torch.

Axis conventions: ``Volume.array`` is (z, y, x) = (k, j, i), as ``sitk.GetArrayFromImage`` gives it; ``spacing``
and ``origin`` are (x, y, z); ``direction`` is 3x3 with columns the i, j, k axis directions in LPS (SimpleITK).

Sequences (2D+t: ultrasound cine loops, endoscopy videos) are volumes whose k axis is time: ``array`` is
(t, y, x) grey or (t, y, x, 3) RGB and ``Volume.sequence`` holds the frame index (name, unit, one value per frame).
They come from a folder of frames, a multi-frame file (Slicer ``.seq.nrrd`` volume sequence of 2D frames, a
multi-page TIFF, any 3D file read with :func:`read_sequence`), a ``.npy`` array, or :func:`sequence_from_array`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..engine.preprocess import channel_composite, decide_modality

log = logging.getLogger(__name__)

MIN_SLICES = 2
MIN_IN_PLANE = 16
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SEQUENCE_SUFFIXES = (".seq.nrrd", ".npy", ".tif", ".tiff")  # read as 2D+t sequences by read_volume


class InputError(ValueError):
    """An input image cannot be segmented; the message says why and what to do."""


@dataclass
class SequenceIndex:
    """The time axis of a 2D+t sequence: index name and unit (Slicer's sequence index) and one value per frame."""

    values: tuple[str, ...]
    name: str = "frame"
    unit: str = ""

    @classmethod
    def numbered(cls, count: int) -> SequenceIndex:
        return cls(tuple(str(i) for i in range(count)))


@dataclass
class Volume:
    """A scalar volume (z, y, x), an RGB volume (z, y, x, 3), or a 2D+t sequence (t, y, x[, 3]) with its geometry.

    ``sequence`` is None for a volume; for a sequence it holds the frame index and the engine segments frame by
    frame along k (time), whatever the spacing. The geometry of a sequence is that of one frame (i, j in-plane)
    with k the frame normal, so a mask over (t, y, x) can be written as a stack of frames.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str = "unknown"  # "CT", "MR", "US", "endoscopy", "unknown"
    sequence: Optional[SequenceIndex] = None

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

    @property
    def is_sequence(self) -> bool:
        return self.sequence is not None

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


def image_metadata(image) -> dict[str, str]:
    """A SimpleITK image's metadata dictionary (DICOM tags as ``gggg|eeee``, NRRD and NIfTI header fields)."""
    return {key: image.GetMetaData(key) for key in image.GetMetaDataKeys()}


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


def is_sequence_path(path: Union[str, Path]) -> bool:
    """Whether :func:`read_volume` reads ``path`` as a 2D+t sequence (a frame folder or a multi-frame file)."""
    path = Path(path)
    if path.is_dir():
        return any(p.suffix.lower() in FRAME_SUFFIXES for p in path.iterdir())
    return path.name.lower().endswith(SEQUENCE_SUFFIXES)


def read_volume(path: Union[str, Path], modality: str | None = None) -> Volume:
    """NIfTI, NRRD, MHA/MHD, a DICOM series folder, an npz (keys imgs, spacing, ...), or a 2D+t sequence: a folder
    of frames, a Slicer ``.seq.nrrd`` of 2D frames, a multi-page TIFF or a ``.npy`` (t, y, x[, 3]) array.

    modality: None (the default everywhere) decides it with ``engine.preprocess.decide_modality`` from the file's
    metadata (DICOM Modality and SOP class, an NRRD ``modality`` field) or else its values (Hounsfield-like)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if is_sequence_path(path):
        return read_sequence(path, modality)
    if path.is_dir():
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not ids:
            raise InputError(f"{path} holds no DICOM series and no image frames")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), ids[0]))
        reader.MetaDataDictionaryArrayUpdateOn()  # the first slice's tags: Modality, SOP class, rescale type
        image = reader.Execute()
        metadata = {key: reader.GetMetaData(0, key) for key in reader.GetMetaDataKeys(0)}
    elif path.suffix == ".npz":
        return validate(_read_npz(path, modality))
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"cannot read {path}: {str(exc).strip().splitlines()[-1]}") from exc
        metadata = image_metadata(image)
    if image.GetDimension() == 2 or (image.GetDimension() == 3 and image.GetSize()[2] == 1):
        raise InputError(f"{path.name} is a 2D image: a volume (or a folder of frames) is needed")
    if image.GetNumberOfComponentsPerPixel() > 1:
        image = sitk.VectorIndexSelectionCast(image, 0)
    volume = Volume.from_sitk(image)
    volume.modality = modality or decide_modality(volume.array, metadata)
    return validate(volume)


def read_channels(paths: list[Union[str, Path]], spacing_tolerance: float = 1e-4) -> Volume:
    """Co-registered sequences of one patient (e.g. FLAIR then contrast T1) -> one (z, y, x, 3) composite Volume, built
    exactly as training builds it (``engine.preprocess.channel_composite``). Raises InputError when a file cannot be
    read or the sequences do not lie on the same voxel grid (size, spacing, origin, direction)."""
    return combine_channels([read_volume(p) for p in paths], [Path(p).name for p in paths], spacing_tolerance)


def combine_channels(volumes: list[Volume], names: list[str], spacing_tolerance: float = 1e-4) -> Volume:
    """Co-registered sequences already read (files, or Slicer volume nodes) -> the (z, y, x, 3) composite Volume of
    :func:`read_channels`; ``names`` name them in errors. InputError when they lie on different voxel grids."""
    first = volumes[0]
    for name, other in zip(names[1:], volumes[1:]):
        problems = []
        if other.shape != first.shape:
            problems.append(f"size {other.shape[::-1]} vs {first.shape[::-1]}")
        if not np.allclose(other.spacing, first.spacing, atol=spacing_tolerance):
            problems.append(f"spacing {other.spacing} vs {first.spacing}")
        if not np.allclose(other.origin, first.origin, atol=1e-3):
            problems.append(f"origin {other.origin} vs {first.origin}")
        if not np.allclose(other.direction, first.direction, atol=1e-4):
            problems.append("direction")
        if problems:
            raise InputError(f"{name} and {names[0]} lie on different voxel grids "
                             f"({'; '.join(problems)}): resample them onto one grid first")
    try:
        composite = channel_composite([v.array for v in volumes])
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return Volume(composite, first.spacing, first.origin, first.direction, "MR")


def _read_npz(path: Path, modality: str | None) -> Volume:
    with np.load(path) as data:
        if "imgs" not in data:
            raise InputError(f"{path.name} has no 'imgs' array")
        spacing = tuple(data["spacing"]) if "spacing" in data else (1.0, 1.0, 1.0)
        origin = tuple(data["origin"]) if "origin" in data else (0.0, 0.0, 0.0)
        direction = np.array(data["direction"]).reshape(3, 3) if "direction" in data else np.eye(3)
        imgs = np.asarray(data["imgs"])
        return Volume(imgs, spacing, origin, direction, modality or decide_modality(imgs))


def read_frames(files: list[Path]) -> Volume:
    """A 2D+t sequence from image files in order: (t, y, x) grey or (t, y, x, 3) RGB, spacing 1."""
    from PIL import Image

    arrays = [np.asarray(Image.open(f)) for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise InputError(f"frames differ in size: {sorted(shapes)}")
    volume = sequence_from_array(np.stack(arrays))
    volume.sequence = SequenceIndex(tuple(Path(f).stem for f in files), "frame")
    return volume


def sequence_from_array(frames: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0),
                        origin: tuple[float, float, float] = (0.0, 0.0, 0.0), direction: Optional[np.ndarray] = None,
                        modality: Optional[str] = None, index: Optional[SequenceIndex] = None) -> Volume:
    """A 2D+t sequence from an in-memory array: (t, y, x) grey or (t, y, x, 3|4) colour (alpha dropped; colour
    frames whose channels are all equal become grey).

    spacing: in-plane pixel size (x = column, y = row) in mm, optionally a third value for k (default 1).
    origin / direction: those of a frame (LPS; direction columns i, j, k with k the frame normal).
    modality defaults to "endoscopy" for colour and "US" for grey, which selects RGB scaling or robust percentile
    normalisation. Raises InputError for any other shape.
    """
    stack = np.asarray(frames)
    if stack.ndim == 4 and stack.shape[-1] in (3, 4):
        stack = stack[..., :3]
        if np.all(stack[..., 0] == stack[..., 1]) and np.all(stack[..., 1] == stack[..., 2]):
            stack = stack[..., 0]
    elif stack.ndim == 4 and stack.shape[-1] == 1:
        stack = stack[..., 0]
    if stack.ndim != 3 and not (stack.ndim == 4 and stack.shape[-1] == 3):
        raise InputError(f"a frame sequence must be (t, y, x) or (t, y, x, 3), got an array of shape {stack.shape}")
    index = index or SequenceIndex.numbered(stack.shape[0])
    if len(index.values) != stack.shape[0]:
        raise InputError(f"{len(index.values)} index values for {stack.shape[0]} frames")
    spacing_k = float(spacing[2]) if len(spacing) > 2 else 1.0
    return Volume(stack, (float(spacing[0]), float(spacing[1]), spacing_k), origin,
                  np.eye(3) if direction is None else direction,
                  modality or ("endoscopy" if stack.ndim == 4 else "US"), index)


def read_sequence(path: Union[str, Path], modality: Optional[str] = None) -> Volume:
    """A 2D+t sequence from a frame folder, a Slicer ``.seq.nrrd`` (a volume sequence of single-slice frames, grey
    or RGB, with its index name, unit and values), a ``.npy`` (t, y, x[, 3]) array, or any 3D image file (a
    multi-page TIFF, a cine .mha/.nrrd/.nii) whose k axis is time. Raises InputError with the reason."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not frames:
            raise InputError(f"{path} holds no image frames ({', '.join(FRAME_SUFFIXES)})")
        volume = read_frames(frames)
    elif path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        volume = sequence_from_array(array)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"cannot read {path}: {str(exc).strip().splitlines()[-1]}") from exc
        volume = _sequence_from_sitk(image, path.name)
    if modality:
        volume.modality = modality
    return validate(volume)


def _meta(image, key: str) -> Optional[str]:
    return image.GetMetaData(key) if image.HasMetaDataKey(key) else None


def _sequence_from_sitk(image, name: str) -> Volume:
    """(t, y, x[, 3]) frames of a SimpleITK image: a Slicer volume sequence (the frame list as the pixel components
    of a 3D image for grey frames, as a 4th axis for RGB frames) or a plain 3D image whose k axis is time."""
    import SimpleITK as sitk

    dim = image.GetDimension()
    list_axis = None
    if _meta(image, "NRRD_kinds[pixel]") == "list":
        list_axis = "pixel"
    elif dim == 4 and _meta(image, "NRRD_kinds[3]") == "list":
        list_axis = 3
    if list_axis is None:
        if dim != 3:
            raise InputError(f"{name}: a {dim}D image is not a frame sequence (need 3D: frames along k)")
        array = sitk.GetArrayFromImage(image)  # (t, y, x[, c])
        spacing, origin = image.GetSpacing(), image.GetOrigin()
        direction = np.array(image.GetDirection()).reshape(3, 3)
        index = None
    else:
        array = sitk.GetArrayFromImage(image)
        if list_axis == "pixel":  # (k, y, x, t): grey frames
            array = np.moveaxis(array, -1, 0)  # (t, k, y, x)
        size = image.GetSize()
        if size[2] != 1:
            raise InputError(f"{name} is a sequence of 3D volumes ({size[0]}x{size[1]}x{size[2]} voxels per frame): "
                             "only sequences of 2D frames are segmented frame by frame; segment one time point "
                             "as a volume")
        array = array[:, 0]  # (t, y, x[, c])
        spacing, origin = image.GetSpacing()[:2], image.GetOrigin()[:3]
        direction = np.array(image.GetDirection()).reshape(dim, dim)[:3, :3]
        key = next((k for k in ("axis 3 index values", "axis 0 index values") if image.HasMetaDataKey(k)), None)
        values = tuple(image.GetMetaData(key).split()) if key else tuple(str(i) for i in range(array.shape[0]))
        label_key = "NRRD_labels[pixel]" if list_axis == "pixel" else "NRRD_labels[3]"
        unit_key = "NRRD_units[pixel]" if list_axis == "pixel" else "NRRD_units[3]"
        index = SequenceIndex(values, (_meta(image, label_key) or "frame").strip('"') or "frame",
                              (_meta(image, unit_key) or "").strip('"'))
    if array.ndim == 4 and array.shape[-1] not in (3, 4):
        raise InputError(f"{name}: frames with {array.shape[-1]} components are neither grey nor RGB")
    return sequence_from_array(array, spacing, origin, direction, index=index)
