"""Training data plumbing (issue 4): packed frame volumes round-trip exactly, cached text features equal the
encoder's, the spatial augmentation moves image and mask together, and a time budget ends training with the
learning-rate schedule fitted to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from TextPromptSegLib.modeling.config import TextEncoderConfig
from TextPromptSegLib.modeling.text_encoder import (
    CachedTextEncoder,
    TextEncoder,
    TextEncoderError,
    export_text_features,
)
from TextPromptSegLib.training.data import ClipSampler, FrameVolume, load_pack, save_pack


def _volume(case_id: str, n: int = 12, h: int = 40, w: int = 56, rgb: bool = False) -> FrameVolume:
    rng = np.random.default_rng(len(case_id))
    frames = rng.integers(0, 256, (n, h, w, 3) if rgb else (n, h, w), dtype=np.uint8)
    mask = np.zeros((n, h, w), bool)
    mask[4:8, 10:30, 20:45] = True
    return FrameVolume(case_id, frames, {"left atrium": mask, "sarcoma": np.roll(mask, 3, axis=2)}, 0.7, 1.4)


def test_pack_round_trip_and_crop(tmp_path):
    volumes = [_volume("la2018/a"), _volume("brats2013/b", rgb=True)]
    path = save_pack(volumes, tmp_path / "pack.npz")
    loaded = load_pack(path)
    assert [v.case_id for v in loaded] == ["la2018/a", "brats2013/b"]
    for before, after in zip(volumes, loaded):
        np.testing.assert_array_equal(before.frames, after.frames)
        assert list(after.masks) == list(before.masks)
        for key in before.masks:
            np.testing.assert_array_equal(before.masks[key], after.masks[key])
        assert (after.row_spacing, after.col_spacing) == (0.7, 1.4)
    cropped = loaded[0].cropped(2)  # the structures occupy slices 4..7
    assert len(cropped.frames) == 8 and cropped.masks["left atrium"][2:6].any(axis=(1, 2)).all()


def test_frame_volume_to_cases_keeps_the_aspect_ratio():
    cases = _volume("la2018/a").to_cases(64)
    assert [c.structure for c in cases] == ["left atrium", "sarcoma"]
    assert cases[0].frames.shape == (12, 3, 64, 64) and cases[0].frames.dtype == torch.float16
    # 40 rows x 0.7 mm = 28 mm, 56 cols x 1.4 mm = 78.4 mm: content is 64 wide and round(64 * 28 / 78.4) = 23 tall
    assert cases[0].frames[:, :, 23:].abs().max() == 0 and cases[0].frames[:, :, :23].abs().max() > 0
    assert cases[0].masks[5].any() and not cases[0].masks[0].any()


def test_cached_text_features_equal_the_encoder(tiny_text_encoder_dir, tmp_path):
    encoder = TextEncoder(TextEncoderConfig(model_id_or_path=str(tiny_text_encoder_dir), max_length=16))
    prompts = ["the left atrium", "a soft-tissue sarcoma in the thigh", "edema"]
    cached = CachedTextEncoder.load(export_text_features(encoder, prompts, tmp_path / "features.safetensors"))
    assert cached.hidden_size == encoder.hidden_size and cached.prompts == prompts
    batch = ["edema", "the left atrium", "edema"]
    want_feats, want_mask = encoder(batch)
    feats, mask = cached(batch)
    torch.testing.assert_close(feats, want_feats)
    assert torch.equal(mask, want_mask)
    with pytest.raises(TextEncoderError, match="no cached features"):
        cached(["the spleen"])


def test_spatial_augmentation_moves_image_and_mask_together():
    n, size = 6, 64
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, 20:44, 16:40] = True
    frames = masks[:, None].expand(-1, 3, -1, -1).half()  # the image is the mask: they must stay aligned
    from TextPromptSegLib.training.data import Case

    sampler = ClipSampler([Case("x", "left atrium", frames, masks, ["the left atrium"])], length=3, seed=0,
                          p_spatial=1.0)
    images, targets, _ = sampler.sample(8)
    moved = 0
    for image, target in zip(images.flatten(0, 1), targets.flatten(0, 1)):
        bright = image[0] > 0.5
        overlap = (bright & target).sum() / max(1, (bright | target).sum())
        assert overlap > 0.9
        moved += int(not torch.equal(target, masks[0]))
    assert moved > 0  # the augmentation did transform


def test_time_budget_stops_training_and_fits_the_schedule(tmp_path, tiny_text_encoder_dir, monkeypatch):
    from TextPromptSegLib.modeling.testing import build_tiny_model
    from TextPromptSegLib.training import trainer as trainer_module
    from TextPromptSegLib.training.data import Case
    from TextPromptSegLib.training.trainer import TrainConfig, Trainer

    clock = iter(np.arange(0, 1000, 1.0))  # each read of the clock advances one "second"
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: float(next(clock)))
    masks = torch.zeros(4, 128, 128, dtype=torch.bool)
    masks[:, 40:80, 40:80] = True
    case = Case("x", "left atrium", masks[:, None].expand(-1, 3, -1, -1).half(), masks, ["the left atrium"])
    config = TrainConfig(steps=10_000, batch_size=1, clip_length=2, lr=1e-3, decay_every=10_000, max_minutes=0.6,
                         checkpoint_every=10_000)
    trainer = Trainer(build_tiny_model(tiny_text_encoder_dir), ClipSampler([case], 2), config, tmp_path)
    trainer.fit(log_every=1000)
    # one clock read per step: 36 steps fit 36 "seconds"; the rate is measured from step 20 (after warm-up) to
    # step 30, which estimates 35 steps in all, and the lr then halves every quarter of that
    assert trainer.step == 36
    assert trainer.scheduler.step_size == 8  # the first halving after the fit is at step 32
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-3 / 2)
    assert (tmp_path / "last" / "model.safetensors").is_file()


def test_time_budget_halves_the_lr_at_most_three_times(tmp_path, tiny_text_encoder_dir, monkeypatch):
    """On a shared machine the rate measured after warm-up can be far too low (here 0.33 step/s, then 10 steps/s):
    the fitted schedule then halves every 7 steps, but never more than 3 times within the budget."""
    from TextPromptSegLib.modeling.testing import build_tiny_model
    from TextPromptSegLib.training import trainer as trainer_module
    from TextPromptSegLib.training.data import Case
    from TextPromptSegLib.training.trainer import TrainConfig, Trainer

    reads = iter(range(10_000))

    def clock() -> float:  # one read before the loop, then one per step
        n = next(reads)
        return 0.1 * min(n, 20) + 3.0 * min(max(n - 20, 0), 10) + 0.1 * max(n - 30, 0)

    monkeypatch.setattr(trainer_module.time, "perf_counter", clock)
    masks = torch.zeros(4, 64, 64, dtype=torch.bool)
    masks[:, 20:40, 20:40] = True
    case = Case("x", "left atrium", masks[:, None].expand(-1, 3, -1, -1).half(), masks, ["the left atrium"])
    config = TrainConfig(steps=10_000, batch_size=1, clip_length=2, lr=1e-3, decay_every=10_000, max_minutes=0.6,
                         checkpoint_every=10_000)
    trainer = Trainer(build_tiny_model(tiny_text_encoder_dir, image_size=64), ClipSampler([case], 2), config,
                      tmp_path)
    lrs = []
    real_step = trainer.train_step

    def step_and_record():
        loss = real_step()
        lrs.append(trainer.scheduler.get_last_lr()[0])
        return loss

    trainer.train_step = step_and_record
    trainer.fit(log_every=1000)
    assert trainer.step > 60  # ran on well past the fitted 31 steps
    assert min(lrs) == pytest.approx(1e-3 / 8) and lrs[-1] == pytest.approx(1e-3 / 8)
    assert sorted(set(lrs), reverse=True) == pytest.approx([1e-3, 1e-3 / 2, 1e-3 / 4, 1e-3 / 8])


def test_p_object_sets_how_often_clips_start_on_the_structure():
    from TextPromptSegLib.training.data import Case
    from TextPromptSegLib.training.trainer import TrainConfig

    n, size = 40, 16
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[18:22, 4:12, 4:12] = True  # the structure on 4 of 40 slices
    frames = masks[:, None].expand(-1, 3, -1, -1).half()
    case = Case("x", "left atrium", frames, masks, ["the left atrium"])

    def starts_on_object(p_object: float) -> float:
        sampler = ClipSampler([case], length=2, p_object=p_object, seed=1)
        _, targets, _ = sampler.sample(400)
        return float(targets[:, 0].flatten(1).any(1).float().mean())

    assert starts_on_object(1.0) == 1.0
    assert 0.35 < starts_on_object(0.5) < 0.65  # half on the structure, half anywhere (4/40 of those on it)
    assert starts_on_object(0.0) < 0.25
    assert TrainConfig().p_object == 0.9  # the default of every bundled recipe so far
