"""Gate-zero equivalence: an untrained TGSAM-2 computes exactly what SAM-2 computes (issue 2, must-show 1)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from TextPromptSegLib.modeling.build import build_sam2
from TextPromptSegLib.modeling.testing import build_tiny_model


def _track(model, images: torch.Tensor, points: dict, text=None) -> list[torch.Tensor]:
    """Point prompt on frame 0, then memory tracking over normalised images (T, 3, S, S).

    ``text`` given: ``model`` is a TGSAM2 run through its text path; else a plain SAM2Base.
    Returns the high-res mask logits of every frame.
    """
    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    masks = []
    with torch.inference_mode():
        for i in range(images.shape[0]):
            image = images[i : i + 1]
            if text is None:
                backbone, context = model.forward_image(image), contextlib.nullcontext()
            else:
                backbone = model.condition_backbone(model.encode_backbone(image), text)
                context = model.text_context(text)
            _, feats, pos, sizes = model._prepare_backbone_features(backbone)
            with context:
                out = model.track_step(i, i == 0, feats, pos, sizes, points if i == 0 else None, None, output_dict,
                                       images.shape[0])
            output_dict["cond_frame_outputs" if i == 0 else "non_cond_frame_outputs"][i] = out
            masks.append(out["pred_masks_high_res"])
    return masks


@pytest.mark.parametrize(
    "overrides",
    [{}, {"ttme_fusion": "mul"}, {"ttme_fusion": "concat"}, {"tcvp_mode": "text_query"},
     {"use_tcvp": False}, {"use_ttme": False}, {"use_text_prompt": False}, {"multimask_output": True}],
    ids=["default", "ttme-mul", "ttme-concat", "tcvp-text-query", "no-tcvp", "no-ttme", "no-text-prompt",
         "multimask"],
)
def test_untrained_tgsam2_equals_sam2(tiny_text_encoder_dir, overrides):
    model = build_tiny_model(tiny_text_encoder_dir, seed=0, **overrides)
    reference = build_sam2(model.config)
    reference.load_state_dict(model.sam2_state_dict(), strict=True)

    torch.manual_seed(1)
    frames = torch.rand(4, 3, 128, 128)
    points = {"point_coords": torch.tensor([[[60.0, 64.0]]]), "point_labels": torch.tensor([[1]], dtype=torch.int32)}
    text = model.encode_text(["the bright disc on the left"])
    normalised = model.normalize_images(frames)

    ours = _track(model, normalised, points, text)
    theirs = _track(reference, normalised, points)
    for frame, (a, b) in enumerate(zip(ours, theirs)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), f"frame {frame}: max diff {(a - b).abs().max():.3g}"
