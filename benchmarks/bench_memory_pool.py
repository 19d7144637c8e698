"""At which resolution should memory attention run on LiteMedSAM's 64 x 64 embedding? FLOPs and CPU time per slice.

    python benchmarks/bench_memory_pool.py --pools 1 2 4 --frames 8

For each ``memory_pool`` (1: SAM-2's 64 x 64 token map; 2: 32 x 32; 4: 16 x 16) the litemedsam preset (LiteMedSAM's
weights, random memory modules: the cost does not depend on their values) tracks a box through ``--frames`` frames
of a real LA2018 slice stack. Printed per pool: the FLOPs of one tracking step with a full memory bank (matmuls,
convolutions and attention, counted with ``torch.utils.flop_counter``), its median CPU time, the encoder's time per
slice (the same for every pool) and the seconds per slice of a whole run (encoding + tracking). The choice and the
measured table are in docs/DESIGN.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_bound import counted_flops  # noqa: E402


def frames_of_a_real_volume(count: int) -> torch.Tensor:
    from TextPromptSegLib.engine.pipeline import PreparedVolume
    from TextPromptSegLib.io.volumes import read_volume

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "la2018" / "train"
    case = sorted(root.iterdir())[-1]
    prepared = PreparedVolume(read_volume(case / "image.nii.gz"), 256)
    mid = len(prepared) // 2
    return torch.stack([prepared.transform.frames_to_model(prepared.frames[i:i + 1])[0]
                        for i in range(mid, mid + count)]).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from TextPromptSegLib.modeling.build import build_model
    from TextPromptSegLib.modeling.config import get_config

    images = frames_of_a_real_volume(args.frames)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"{args.frames} frames")
    print("| memory_pool | token map | tracking GFLOP/slice | tracking s/slice | encoder s/slice | s/slice |")
    print("|---|---|---|---|---|---|")
    for pool in args.pools:
        model = build_model(get_config("litemedsam", memory_pool=pool))
        with torch.inference_mode():
            start = time.perf_counter()
            feats = [model.prepare_frame_features(model.condition_backbone(
                model.encode_backbone(model.normalize_images(images[i:i + 1])), None)) for i in range(len(images))]
            encode = (time.perf_counter() - start) / len(images)
            state = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
            box = {"point_coords": torch.tensor([[[80.0, 80.0], [170.0, 170.0]]]),
                   "point_labels": torch.tensor([[2, 3]], dtype=torch.int32)}
            state["cond_frame_outputs"][0] = model.step(0, True, *feats[0], state, len(images), point_inputs=box)
            times = []
            for i in range(1, len(images)):
                start = time.perf_counter()
                state["non_cond_frame_outputs"][i] = model.step(i, False, *feats[i], state, len(images))
                times.append(time.perf_counter() - start)
            last = len(images) - 1
            flops = counted_flops(partial(model.step, last, False, *feats[last], state, len(images)))
        track = statistics.median(times[len(times) // 2:])  # a full bank
        side = 64 // pool
        print(f"| {pool} | {side} x {side} | {flops / 1e9:.1f} | {track:.3f} | {encode:.3f} | {encode + track:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
