"""2D+t sequence input and output (issue 5 / issue 7 I/O): multi-frame files and arrays read as sequences, frames
reach the model as stored (time = k, no anatomical re-orientation), and per-frame masks are written exactly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from TextPromptSegLib.engine.pipeline import PreparedVolume
from TextPromptSegLib.io.volumes import InputError, SequenceIndex, read_volume, sequence_from_array
from TextPromptSegLib.io.writers import SegmentSpec, write_frame_masks, write_seg_nrrd


def _frames(rgb: bool, t: int = 5, h: int = 24, w: int = 36) -> np.ndarray:
    rng = np.random.default_rng(3)
    shape = (t, h, w, 3) if rgb else (t, h, w)
    return rng.integers(0, 256, size=shape).astype(np.uint8)


@pytest.mark.parametrize("rgb", [False, True])
def test_multi_page_tiff_is_a_sequence(tmp_path, rgb):
    frames = _frames(rgb)
    pages = [Image.fromarray(f) for f in frames]
    pages[0].save(tmp_path / "cine.tif", save_all=True, append_images=pages[1:])
    volume = read_volume(tmp_path / "cine.tif")
    assert volume.is_sequence and len(volume.sequence.values) == 5
    assert np.array_equal(volume.array, frames)  # RGB kept (not reduced to its first channel)
    assert volume.modality == ("endoscopy" if rgb else "US")


def test_npy_array_and_in_memory_entry_point(tmp_path):
    frames = _frames(True)
    np.save(tmp_path / "video.npy", frames)
    volume = read_volume(tmp_path / "video.npy")
    assert volume.is_sequence and np.array_equal(volume.array, frames)
    rgba = np.concatenate([frames, np.full(frames.shape[:3] + (1,), 255, np.uint8)], axis=-1)
    assert np.array_equal(sequence_from_array(rgba).array, frames)  # alpha dropped
    grey_rgb = np.repeat(frames[..., :1], 3, axis=-1)
    assert sequence_from_array(grey_rgb).array.ndim == 3  # equal channels: grey
    with pytest.raises(InputError, match="frame sequence"):
        sequence_from_array(np.zeros((4, 8, 8, 5)))
    with pytest.raises(InputError, match="index values"):
        sequence_from_array(frames, index=SequenceIndex(("0", "1")))


def test_frames_reach_the_model_as_stored(tmp_path):
    """Time is the slicing axis whatever the spacing and direction; frames are not flipped or transposed."""
    frames = _frames(False, t=4, h=20, w=30)
    direction = np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # an oblique-looking frame orientation
    volume = sequence_from_array(frames, spacing=(0.2, 0.5, 9.0), direction=direction)
    prepared = PreparedVolume(volume, 64)
    assert len(prepared) == 4
    assert prepared.geometry.row_spacing == 0.5 and prepared.geometry.col_spacing == 0.2
    expected = (frames.astype(np.float32) - np.percentile(frames[::1], 0.5)) / (
        np.percentile(frames[::1], 99.5) - np.percentile(frames[::1], 0.5))
    assert np.allclose(prepared.frames, np.clip(expected, 0, 1), atol=1e-5)
    assert np.array_equal(prepared.to_volume_mask(prepared.frames > 0.5), prepared.frames > 0.5)
    with pytest.raises(ValueError, match="frame by frame"):
        PreparedVolume(volume, 64, axis="axial")


def test_per_frame_png_masks_and_seg_nrrd(tmp_path):
    labels = np.zeros((3, 20, 30), np.uint8)
    labels[0, 2:5, 3:9] = 1
    labels[2, 10:15, 20:25] = 2
    paths = write_frame_masks(labels, tmp_path / "masks", names=["a", "b", "c"])
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"]
    back = np.stack([np.asarray(Image.open(p)) for p in paths])
    assert np.array_equal(back, labels)
    assert not list(tmp_path.glob(".*part*"))  # no temporary folder left
    volume = sequence_from_array(_frames(False, t=3, h=20, w=30))
    specs = [SegmentSpec(labels == 1, "disc", (1.0, 0.0, 0.0), "the bright disc")]
    write_seg_nrrd(volume, specs, tmp_path / "out.seg.nrrd")  # a (t, y, x) stack Slicer can load
    assert np.array_equal(read_volume(tmp_path / "out.seg.nrrd").array > 0, labels == 1)
