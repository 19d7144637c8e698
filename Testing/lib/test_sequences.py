"""2D+t sequences through the engine (issue 5, must-show 3): a tiny TGSAM-2 trained on synthetic moving-object
sequences (the committed fixture, see scripts/train_sequence_fixture.py) segments held-out sequences frame by
frame with Dice >= 0.85 (grey ultrasound-like and RGB endoscopy-like frames, through ``segment_sequence`` and
the CLI), and a correction drawn on one frame propagates: the corrected frame is kept exactly, its neighbours
move toward the correction (measured against the truth), frames the refinement did not revisit keep their masks
bit for bit, and nothing is re-encoded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from synthetic import CORRECTION_FRAME, SHADOW_SEEDS, dice, moving_object_sequence, shadowed_sequence

from TextPromptSegLib.cli import main
from TextPromptSegLib.engine.pipeline import SegmentRequest
from TextPromptSegLib.engine.sequence import segment_sequence
from TextPromptSegLib.io.volumes import read_volume

PROMPT = "the bright disc"
HELD_OUT = (9001, 9002, 9003, 9004, 9005)  # sequences no training step saw (training seeds are 1100000 + step)


@pytest.mark.slow
@pytest.mark.parametrize("rgb", [False, True], ids=["ultrasound", "endoscopy"])
def test_held_out_sequences_are_segmented_frame_by_frame(sequence_model, rgb):
    scores, frames_with_object = [], []
    for seed in HELD_OUT:
        frames, truth = moving_object_sequence(seed, 12, rgb=rgb)
        result, _ = segment_sequence(frames, [PROMPT], sequence_model)
        seg = result.segments[0]
        assert seg.mask.shape == truth.shape and seg.slice_scores.shape == (12,)
        scores.append(dice(seg.mask, truth))
        frames_with_object.append(seg.slices_with_object)
    print(f"{'RGB' if rgb else 'grey'} held-out Dice per sequence: {np.round(scores, 3)}")
    assert np.mean(scores) >= 0.85 and min(scores) >= 0.75
    assert frames_with_object == [12] * len(HELD_OUT)  # the disc is found in every frame


@pytest.mark.slow
def test_a_correction_on_one_frame_propagates(sequence_model):
    """The disc moves on behind a shadow where only the memory can place it: the first pass lags behind it more
    and more. Drawing the true disc on one shadowed frame moves the neighbouring frames toward it."""
    k = CORRECTION_FRAME
    neighbours = [k - 2, k - 1, k + 1, k + 2]
    gains, adjacent = [], []
    for seed in SHADOW_SEEDS:
        frames, truth = shadowed_sequence(seed)
        result, interactive = segment_sequence(frames, [PROMPT], sequence_model)
        seg = result.segments[0]
        before = interactive.frame_masks(seg).copy()
        encoded = interactive.session.encode_count

        refinement = interactive.refine(seg, k, truth[k])
        after = interactive.frame_masks(refinement.segment)
        assert interactive.session.encode_count == encoded  # no re-encoding
        assert np.array_equal(after[k], truth[k])  # the corrected frame exactly as drawn
        # the correction is the only conditioning frame (the first pass's start frame is not kept as an anchor by
        # default: it must not pull against the user), then each direction outwards from k
        assert refinement.visited[0] == k and k in refinement.changed
        forward = [t for t in refinement.visited if t > k]
        backward = [t for t in refinement.visited if t < k]
        assert forward == list(range(k + 1, k + 1 + len(forward)))
        assert backward == list(range(k - 1, k - 1 - len(backward), -1))
        assert forward and backward
        assert np.array_equal(interactive.frame_masks(seg), before)  # the previous result is left as it was
        untouched = [t for t in range(len(frames)) if t not in refinement.visited]
        for t in untouched:  # frames the refinement did not revisit keep their masks bit for bit
            assert np.array_equal(after[t], before[t])
        d_before = np.array([dice(before[j][None], truth[j][None]) for j in neighbours])
        d_after = np.array([dice(after[j][None], truth[j][None]) for j in neighbours])
        print(f"seed {seed}: neighbours {neighbours} Dice {np.round(d_before, 2)} -> {np.round(d_after, 2)}")
        gains.append(float(np.mean(d_after - d_before)))
        adjacent.append(float(np.mean(d_after[1:3] - d_before[1:3])))  # frames k-1 and k+1
    print(f"mean gain over the neighbours {np.mean(gains):.3f}; frames k+-1 per sequence {np.round(adjacent, 3)}")
    assert np.mean(gains) >= 0.05 and np.mean(adjacent) >= 0.05
    assert sum(a > 0 for a in adjacent) >= len(SHADOW_SEEDS) - 1  # the frames next to the correction follow it

    # a second correction elsewhere keeps the first one exactly
    j = k + 3
    second = interactive.refine(refinement.segment, j, truth[j])
    final = interactive.frame_masks(second.segment)
    assert np.array_equal(final[k], truth[k]) and np.array_equal(final[j], truth[j])


def test_cli_segments_a_frame_folder(sequence_fixture_dir, tmp_path, capsys):
    frames, truth = moving_object_sequence(HELD_OUT[0], 10, rgb=True)
    folder = tmp_path / "video"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"img_{t:03d}.png")
    masks = tmp_path / "masks"
    code = main(["segment", str(folder), "-p", PROMPT, "--model", str(sequence_fixture_dir), "-o", str(masks) + "/"])
    assert code == 0 and "of 10 frames" in capsys.readouterr().out
    written = sorted(masks.iterdir())
    assert [p.name for p in written] == [f"img_{t:03d}.png" for t in range(10)]  # named after the input frames
    labels = np.stack([np.asarray(Image.open(p)) for p in written])
    score = dice(labels == 1, truth)
    print(f"CLI frame folder -> PNG masks: Dice {score:.3f}")
    assert score >= 0.85

    np.save(tmp_path / "video.npy", frames)
    out = tmp_path / "video.seg.nrrd"
    assert main(["segment", str(tmp_path / "video.npy"), "-p", PROMPT, "--model", str(sequence_fixture_dir),
                 "-o", str(out)]) == 0
    assert dice(read_volume(out).array > 0, truth) == pytest.approx(score)  # same engine, same result

    # an anatomical axis makes no sense for a sequence, and per-frame outputs none for a volume: one clear line
    assert main(["segment", str(folder), "-p", PROMPT, "--model", str(sequence_fixture_dir), "-o",
                 str(tmp_path / "x.seg.nrrd"), "--axis", "axial"]) == 2
    assert "frame by frame" in capsys.readouterr().err and not (tmp_path / "x.seg.nrrd").exists()


def test_segment_request_with_a_drawn_first_frame(sequence_model):
    """A mask prompt on a frame (the visual prompt of a sequence) is kept exactly and conditions the others."""
    frames, truth = moving_object_sequence(HELD_OUT[1], 8)
    request = SegmentRequest(PROMPT, mask_prompts={0: truth[0]})
    result, interactive = segment_sequence(frames, [request], sequence_model)
    masks = interactive.frame_masks(result.segments[0])
    assert np.array_equal(masks[0], truth[0])
    assert dice(masks[1:], truth[1:]) >= 0.85
