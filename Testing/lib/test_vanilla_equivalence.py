"""Equivalence with SAM-2 (issue 7, must-show 3): with the same weights and frames, the engine's masks equal sam2's
own video predictor's for a mask prompt on the first frame (forward only), within numerical tolerance."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from vanilla import build_pair, compare, first_frame_prompt, synthetic_frames  # noqa: E402

from TextPromptSegLib.modeling.config import TextEncoderConfig, get_config  # noqa: E402


def test_engine_matches_the_sam2_video_predictor(tiny_text_encoder_dir):
    config = get_config("tiny")
    config.text = TextEncoderConfig(model_id_or_path=str(tiny_text_encoder_dir), max_length=16)
    ours, vanilla = build_pair(config, seed=0)
    # make the random model confident that an object is present, so the masks are not trivially empty
    import torch

    with torch.no_grad():
        for model in (ours, vanilla):
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(20.0)
    size = config.image_size
    frames = synthetic_frames(6, size)
    prompt = first_frame_prompt(size)
    result = compare(ours, vanilla, frames, prompt, encode_batch_size=4)
    assert result.vanilla_masks[1:].any(), "the reference produced no mask: the comparison would be vacuous"
    # sam2's predictor keeps its memory features in bfloat16; we keep float32: allow a few boundary pixels
    print(f"pixels that differ from sam2's predictor: {result.disagreement:.4%}")
    assert result.disagreement < 0.01, f"{result.disagreement:.4%} of pixels differ"


def test_engine_does_exactly_the_arithmetic_of_the_sam2_video_predictor(tiny_text_encoder_dir):
    """Equal output at equal cost: over the same run the engine counts the same matmul, convolution and attention
    FLOPs as sam2's predictor, no more (no re-encoding, no extra decoder passes) and no less (nothing skipped).
    benchmarks/bench_cpu_bound.py bounds the CPU speed-up from this count."""
    import torch
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
