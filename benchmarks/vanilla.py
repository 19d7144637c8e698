"""Run sam2's own video predictor and our engine on the same weights and frames (equivalence + benchmark).

The vanilla predictor only reads JPEG folders, so frames are written as JPEGs and decoded by sam2's own loader;
our engine receives exactly those decoded frames (in memory). The benchmarks use a mask prompt on frame 0 and
forward propagation; the equivalence tests also prompt a later frame with a mask, clicks or a box and track
forward, backward (sam2's ``reverse=True``) or both ways (forward, then backward, as sam2's two calls do).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch


@dataclass
class Comparison:
    ours_masks: torch.Tensor  # (N, S, S) bool
    vanilla_masks: torch.Tensor  # (N, S, S) bool
    ours_seconds: float
    vanilla_seconds: float
    ours_encode_seconds: float
    estimated_seconds: float = float("nan")  # Session.estimate_seconds for this run, measured beforehand

    @property
    def disagreement(self) -> float:
        """Fraction of pixels where the two disagree."""
        return float((self.ours_masks ^ self.vanilla_masks).float().mean())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def synthetic_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 frames: a bright disc drifting over a textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    frames = []
    for t in range(n):
        img = 90 + 20 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 6, (size, size))
        cy, cx = size * (0.45 + 0.01 * t), size * (0.4 + 0.015 * t)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < (0.15 * size) ** 2] += 90
        frames.append(np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=-1))
    return np.stack(frames)


def first_frame_prompt(size: int) -> np.ndarray:
    """(size, size) bool: the disc of ``synthetic_frames``' first frame, the mask prompt on frame 0."""
    yy, xx = np.mgrid[:size, :size]
    return (yy - 0.45 * size) ** 2 + (xx - 0.4 * size) ** 2 < (0.15 * size) ** 2


@dataclass(frozen=True)
class VisualPrompt:
    """A visual prompt on one frame, in model pixels (frames are square at the model's size, so sam2's
    normalisation by the video size is the identity): a mask, or clicks (x, y) with labels (1 positive, 0
    negative), or a box (x0, y0, x1, y1)."""

    frame: int
    mask: Optional[np.ndarray] = None
    points: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    box: Optional[np.ndarray] = None

    def engine_prompts(self) -> dict:
        """Keyword arguments of ``Session.propagate`` (a box is SAM-2's corner pair, labels 2 and 3, first)."""
        if self.mask is not None:
            return {"mask_prompts": {self.frame: self.mask}}
        coords, labels = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
        if self.box is not None:
            coords, labels = np.asarray(self.box, np.float32).reshape(2, 2), np.array([2, 3])
        if self.points is not None:
            coords = np.concatenate([coords, np.asarray(self.points, np.float32)])
            labels = np.concatenate([labels, np.asarray(self.labels)])
        return {"point_prompts": {self.frame: {"coords": coords, "labels": labels}}}

    def add_to(self, predictor, state) -> None:
        """The same prompt through sam2's own API."""
        if self.mask is not None:
            predictor.add_new_mask(state, self.frame, 1, torch.as_tensor(self.mask))
        else:
            predictor.add_new_points_or_box(state, self.frame, 1, points=self.points, labels=self.labels,
                                            box=self.box)


def build_pair(config, seed: int = 0, device: str = "cpu"):
    """A TGSAM-2 with untrained adapters and sam2's SAM2VideoPredictor holding the same SAM-2 weights."""
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    from TextPromptSegLib.modeling.build import _sam2_components, build_model

    torch.manual_seed(seed)
    ours = build_model(config)
    vanilla = SAM2VideoPredictor(fill_hole_area=0, **_sam2_components(config))
    vanilla.load_state_dict(ours.sam2_state_dict(), strict=True)
    return ours.to(device).eval(), vanilla.to(device).eval()


def scenes(configs, sizes, n_frames: int, device: str = "cpu"):
    """For each named config and image size: (name, size, ours, vanilla, frames, prompt), the pair built on
    ``device`` with random weights and a tiny random text encoder, ``n_frames`` synthetic frames and the mask
    prompt of frame 0."""
    from TextPromptSegLib.modeling.config import TextEncoderConfig, get_config
    from TextPromptSegLib.modeling.testing import make_tiny_text_encoder

    text_dir = make_tiny_text_encoder(Path(tempfile.mkdtemp()) / "bert")
    for name in configs:
        for size in sizes:
            config = get_config(name, image_size=size)
            config.text = TextEncoderConfig(model_id_or_path=str(text_dir), max_length=16)
            ours, vanilla = build_pair(config, device=device)
            yield name, size, ours, vanilla, synthetic_frames(n_frames, size), first_frame_prompt(size)


def write_jpeg_frames(frames: np.ndarray, folder) -> None:
    """The frames as the JPEG folder sam2's video predictor reads (00000.jpg, 00001.jpg, ...)."""
    from PIL import Image

    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(Path(folder) / f"{i:05d}.jpg", quality=95)


def run_predictor(predictor, folder, prompt, device: str = "cpu", precision: str = "auto",
                  direction: str = "forward") -> torch.Tensor:
    """sam2's video predictor as shipped on a JPEG folder; returns the (N, S, S) bool masks (frames not reached stay
    empty). prompt: a ``VisualPrompt``, or a bool mask for frame 0. direction: "forward", "backward" (sam2's
    ``reverse=True``) or "both" (forward, then backward from the same frame)."""
    from TextPromptSegLib.engine.device import autocast

    if not isinstance(prompt, VisualPrompt):
        prompt = VisualPrompt(0, mask=np.asarray(prompt))
    size = predictor.image_size
    runs = {"forward": (False,), "backward": (True,), "both": (False, True)}[direction]
    with torch.inference_mode(), autocast(torch.device(device), precision):
        state = predictor.init_state(video_path=str(folder))
        prompt.add_to(predictor, state)
        masks_out = torch.zeros(state["num_frames"], size, size, dtype=torch.bool)
        for reverse in runs:
            for index, _, masks in predictor.propagate_in_video(state, start_frame_idx=prompt.frame, reverse=reverse):
                masks_out[index] = masks[0, 0].cpu() > 0
    return masks_out


def compare(ours, vanilla, frames: np.ndarray, prompt_mask, encode_batch_size: Optional[int] = None,
            device: str = "cpu", precision: str = "auto", vanilla_precision: str = "auto",
            direction: str = "forward") -> Comparison:
    """Both sides on ``device``; on CUDA both run under bf16 autocast (sam2's recommended inference setting, and
    our engine's), so small bf16 rounding differences between the outputs are expected there. ``precision``
    is our engine's and ``vanilla_precision`` sam2's (see ``engine.device.resolve_precision``; "auto" is how sam2 is
    run as shipped: bf16 autocast on CUDA, float32 on CPU). prompt_mask: a ``VisualPrompt`` or a bool mask for
    frame 0; ``direction`` as in :func:`run_predictor`."""
    from sam2.utils.misc import load_video_frames

    from TextPromptSegLib.engine.propagation import Propagator

    size = ours.image_size
    with tempfile.TemporaryDirectory() as tmp:
        write_jpeg_frames(frames, tmp)
        decoded, _, _ = load_video_frames(tmp, size, offload_video_to_cpu=True)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        unit = decoded * std + mean  # back to [0, 1]: our engine normalises itself

        _sync(device)
        start = time.perf_counter()
        vanilla_masks = run_predictor(vanilla, tmp, prompt_mask, device, vanilla_precision, direction)
        _sync(device)
        vanilla_seconds = time.perf_counter() - start

    propagator = Propagator(ours, device, encode_batch_size=encode_batch_size, precision=precision)
    estimated = propagator.start_session(unit).estimate_seconds(1, locate=False)  # a separate session: not timed
    start = time.perf_counter()
    session = propagator.start_session(unit)
    session.encode_all()
    _sync(device)
    encode_seconds = time.perf_counter() - start
    prompt = prompt_mask if isinstance(prompt_mask, VisualPrompt) else VisualPrompt(0, mask=np.asarray(prompt_mask))
    result = session.propagate(None, start_index=prompt.frame, direction=direction, **prompt.engine_prompts())
    ours_masks = result.masks(size)
    _sync(device)
    ours_seconds = time.perf_counter() - start
    return Comparison(ours_masks, vanilla_masks, ours_seconds, vanilla_seconds, encode_seconds, estimated)
