"""Equivalence with SAM-2 (issue 7 must-show 3, issue 16): with the same weights and frames, the engine's masks equal
sam2's own video predictor's for a mask, clicks or a box on one frame, tracked forward, backward (sam2's
``reverse=True``) and both ways, within numerical tolerance.

sam2's predictor stores its memory features in bfloat16 and we keep float32: a few boundary pixels differ (at most
11 of 131 072, 0.0084 %, measured over these cases). The tolerance, 0.03 %, sits between that and the smallest
regression measured: tracking backward frames as forward ones differs by 0.077 % (box) to 0.79 %, a memory bank
cut to the prompted frame by 0.135 % to 1.16 %."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from vanilla import VisualPrompt, build_pair, compare, first_frame_prompt, synthetic_frames  # noqa: E402

from TextPromptSegLib.modeling.config import TextEncoderConfig, get_config  # noqa: E402

TOLERANCE = 0.0003  # share of pixels
FRAMES = 8
K = 4  # the prompted frame of the backward and both-way cases


@pytest.fixture(scope="module")
def pair(tiny_text_encoder_dir):
    config = get_config("tiny")
    config.text = TextEncoderConfig(model_id_or_path=str(tiny_text_encoder_dir), max_length=16)
    ours, vanilla = build_pair(config, seed=0)
    # make the random model confident that an object is present, so the masks are not trivially empty
    with torch.no_grad():
        for model in (ours, vanilla):
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(20.0)
    return ours, vanilla


def _disc(size: int, t: int) -> np.ndarray:
    """The disc of ``synthetic_frames``' frame t."""
    yy, xx = np.mgrid[:size, :size]
    return (yy - size * (0.45 + 0.01 * t)) ** 2 + (xx - size * (0.4 + 0.015 * t)) ** 2 < (0.15 * size) ** 2


def _prompt(kind: str, size: int) -> VisualPrompt:
    if kind == "mask0":
        return VisualPrompt(0, mask=first_frame_prompt(size))
    if kind == "mask":
        return VisualPrompt(K, mask=_disc(size, K))
    cy, cx, r = size * (0.45 + 0.01 * K), size * (0.4 + 0.015 * K), 0.15 * size
    if kind == "clicks":  # two positive clicks in the disc, a negative one outside
        return VisualPrompt(K, points=np.array([[cx, cy], [cx + 0.5 * r, cy], [cx - 2 * r, cy - 2 * r]], np.float32),
                            labels=np.array([1, 1, 0]))
    return VisualPrompt(K, box=np.array([cx - r, cy - r, cx + r, cy + r], np.float32))


@pytest.mark.parametrize("kind, direction", [("mask0", "forward"), ("mask", "backward"), ("mask", "both"),
                                             ("clicks", "both"), ("box", "both")])
def test_engine_matches_the_sam2_video_predictor(pair, kind, direction):
    ours, vanilla = pair
    size = ours.image_size
    prompt = _prompt(kind, size)
    result = compare(ours, vanilla, synthetic_frames(FRAMES, size), prompt, encode_batch_size=4, direction=direction)
    reached = {"forward": range(prompt.frame, FRAMES), "backward": range(0, prompt.frame + 1),
               "both": range(FRAMES)}[direction]
    has_mask = result.vanilla_masks.flatten(1).any(1)
    # not vacuous: sam2 drew the object on every frame it reached and nothing on the others
    assert has_mask.tolist() == [i in reached for i in range(FRAMES)]
    print(f"{kind} {direction}: pixels that differ from sam2's predictor: {result.disagreement:.4%}")
    assert result.disagreement < TOLERANCE, f"{result.disagreement:.4%} of pixels differ"


def test_engine_does_exactly_the_arithmetic_of_the_sam2_video_predictor(tiny_text_encoder_dir):
    """Equal output at equal cost: over the same run the engine counts the same matmul, convolution and attention
    FLOPs as sam2's predictor, no more (no re-encoding, no extra decoder passes) and no less (nothing skipped).
    benchmarks/bench_cpu_bound.py bounds the CPU speed-up from this count."""
    from bench_cpu_bound import counted_flops, run_ours, run_vanilla

    config = get_config("tiny")
    config.text = TextEncoderConfig(model_id_or_path=str(tiny_text_encoder_dir), max_length=16)
    ours, vanilla = build_pair(config, seed=0)
    size = config.image_size
    frames = synthetic_frames(5, size)
    prompt = first_frame_prompt(size)
    unit = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255
    vanilla_flops = counted_flops(lambda: run_vanilla(vanilla, frames, prompt, "fp32"))
    ours_flops = counted_flops(lambda: run_ours(ours, unit, prompt, 2, "fp32"))
    one_encoding = counted_flops(lambda: ours.encode_backbone(ours.normalize_images(unit[:1])))
    assert one_encoding > 0 and vanilla_flops > 5 * one_encoding  # the count sees the encoder and more
    assert ours_flops == vanilla_flops
