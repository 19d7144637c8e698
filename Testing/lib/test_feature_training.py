"""Training on cached encoder features (issue 15): the cache holds what the encoder computes, the sampler's visual
prompts come from the labels, and a training step changes only what we train (LiteMedSAM's parts stay bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from TextPromptSegLib.training.data import FrameVolume
from TextPromptSegLib.training.features import (
    CachedClipForward,
    FeatureCase,
    FeatureClipSampler,
    cache_volume,
    encode_frames,
    encoder_id,
    load_cache,
)


@pytest.fixture(scope="module")
def model():
    from TextPromptSegLib.modeling.build import build_model

    return build_model("litemedsam")


@pytest.fixture(scope="module")
def small_volume(shared_data) -> FrameVolume:
    """Four slices of a real LA2018 volume through the atrium, as training prepares them."""
    from TextPromptSegLib.training.data import la2018_volumes

    case = sorted((shared_data / "la2018" / "train").iterdir())[0].name
    volume = la2018_volumes(shared_data, [case])[0]
    mid = int(np.flatnonzero(volume.masks["left atrium"].any((1, 2))).mean())
    return FrameVolume(volume.case_id, volume.frames[mid - 2:mid + 2],
                       {k: v[mid - 2:mid + 2] for k, v in volume.masks.items()}, volume.row_spacing,
                       volume.col_spacing)


def test_cache_round_trip_holds_the_encoder_output_and_the_masks(model, small_volume, tmp_path):
    path = cache_volume(model, small_volume, tmp_path / "la.safetensors", batch=2)
    (case,) = load_cache(path, expect_encoder=encoder_id(model))
    (expected,) = small_volume.to_cases(model.image_size)
    assert case.structure == "left atrium" and case.prompts == expected.prompts
    assert torch.equal(case.masks, expected.masks)
    assert torch.equal(case.feats, encode_frames(model, expected.frames, batch=4))
    assert case.feats.shape == (4, 256, 64, 64) and case.feats.dtype == torch.float16
    with pytest.raises(ValueError, match="encoded by"):
        load_cache(path, expect_encoder="hiera:own")


def _disc_case(n: int = 6, size: int = 256) -> FeatureCase:
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), bool)
    for i in range(1, n):  # frame 0 empty; a disc whose box is rows 80..120, columns 150..200
        masks[i] = ((yy - 100) / 20.0) ** 2 + ((xx - 175) / 25.0) ** 2 <= 1
    return FeatureCase("synthetic/disc", "disc", torch.zeros(n, 4, 8, 8, dtype=torch.float16),
                       torch.from_numpy(masks), ["the disc", "a round disc"])


def test_sampler_boxes_and_clicks_come_from_the_first_frames_label():
    case = _disc_case()
    sampler = FeatureClipSampler([case], length=3, p_object=1.0, p_box=1.0, p_clicks=0.0, p_no_text=0.0,
                                 box_jitter=0.0, seed=1)
    for _ in range(5):
        feats, masks, prompts, points = sampler.sample(2)
        assert feats.shape == (2, 3, 4, 8, 8) and masks.shape == (2, 3, 256, 256)
        assert points["point_labels"].tolist() == [[2, 3], [2, 3]]
        for b in range(2):
            ys, xs = np.nonzero(masks[b, 0].numpy())  # (x, y) corners of the first frame's label
            assert points["point_coords"][b].tolist() == [[xs.min(), ys.min()], [xs.max(), ys.max()]]
        assert all(p in case.prompts for p in prompts)
    clicks = FeatureClipSampler([case], length=3, p_object=1.0, p_box=0.0, p_clicks=1.0, p_no_text=1.0, seed=2)
    for _ in range(5):
        _, masks, prompts, points = clicks.sample(2)
        assert prompts == ["", ""]  # a visual prompt without text: the whole batch
        for b in range(2):
            for (x, y), label in zip(points["point_coords"][b].tolist(), points["point_labels"][b].tolist()):
                assert bool(masks[b, 0, int(y), int(x)]) == bool(label)
    text_only = FeatureClipSampler([case], length=3, p_box=0.0, p_clicks=0.0, seed=3)
    assert text_only.sample(2)[3] is None


def test_a_training_step_moves_only_what_we_train(model, small_volume, tmp_path):
    from TextPromptSegLib.training.trainer import TrainConfig, Trainer

    path = cache_volume(model, small_volume, tmp_path / "la.safetensors", batch=2)
    cases = load_cache(path)
    sampler = FeatureClipSampler(cases, length=2, p_object=1.0, p_box=1.0, p_clicks=0.0, p_no_text=0.0, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        trainer = Trainer(model, sampler, TrainConfig(batch_size=1, clip_length=2, lr=1e-3), tmp_path / "run",
                          objective=CachedClipForward(model))
        trainer.train_step()
        trainer.train_step()  # the memory's zero-initialised output projection opens in step 1, memory attention
        after = model.state_dict()
        package = model.package_keys()
        assert package and all(torch.equal(before[k], after[k]) for k in package)
        assert torch.equal(before["no_mem_embed"], after["no_mem_embed"])
        moved = {k for k in after if not torch.equal(before[k], after[k])}
        assert any(k.startswith("memory_attention.") for k in moved) and "memory_delta.weight" in moved
        assert any(k.startswith("text_prompt.") for k in moved)
        assert any(k.startswith("sam_mask_decoder.pred_obj_score_head.") for k in moved)
    finally:
        model.load_state_dict(before)
        model.eval()
