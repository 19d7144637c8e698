"""The overlay PNG is readable (issue 19): tiles a few hundred pixels high with the frame's physical aspect,
2-pixel outlines in each mask's colour, the slice index on each tile and a legend naming the colours."""

from __future__ import annotations

import numpy as np
from PIL import Image

from TextPromptSegLib.io.writers import write_overlay_png


def test_overlay_is_large_with_two_pixel_outlines_slice_numbers_and_a_legend(tmp_path):
    frames = np.full((6, 40, 60), 0.3, np.float32)  # (N, H, W), mid grey
    mask = np.zeros((6, 40, 60), bool)
    mask[2:4, 10:30, 20:40] = True  # a 20 x 20 pixel square on slices 2 and 3
    path = write_overlay_png([mask], [(1.0, 0.0, 0.0)], tmp_path / "o.png", frames=frames, frames_of=lambda m: m,
                             n_slices=2, names=["tumour"], spacing=(1.0, 2.0), tile_height=200)
    image = np.asarray(Image.open(path).convert("RGB"))
    red = np.all(image == (255, 0, 0), axis=-1)
    # two tiles of 200 px high; 60 columns of 2 mm beside 40 rows of 1 mm -> 600 px wide each, 4 px apart
    assert image.shape[0] > 200 and image.shape[1] == 2 * 600 + 4
    tile = red[:200, :600]
    row = tile[100]  # through the middle of the square (rows 50-150, columns 200-400 of the tile)
    runs = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
    assert list(np.diff(runs)[::2]) == [2, 2]  # a left and a right edge, each 2 pixels wide
    assert abs(runs[0] - 200) <= 1 and abs(runs[-1] - 400) <= 1
    assert not tile[100, 210:390].any()  # outline only, the inside stays the image
    label = image[:40, :200].astype(int)
    yellow = (label[..., 0] > 180) & (label[..., 1] > 180) & (label[..., 2] < 100)  # antialiased yellow text
    assert yellow.sum() > 20  # the slice label on the first tile
    assert not ((image[60:200, :200, 0] > 180) & (image[60:200, :200, 2] < 100) & (image[60:200, :200, 1] > 180)).any()
    assert red[200:].sum() >= 24  # the legend's colour sample under the tiles
    text = image[200:].astype(int)
    assert ((text[..., 0] > 180) & (text[..., 1] > 180) & (text[..., 2] > 180)).sum() > 20  # its white name
