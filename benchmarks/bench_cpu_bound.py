"""How fast can any engine be at equal arithmetic? The FLOPs of a propagation against this machine's matmul rate.

    python benchmarks/bench_cpu_bound.py --configs tiny hiera_s --sizes 512 1024 --frames 8

For each config and size, on the same weights and frames as bench_propagation.py:

* counts the matmul, convolution and attention FLOPs of sam2's video predictor and of our engine over the run
  (``torch.utils.flop_counter``; equal counts mean equal arithmetic);
* measures the best float32 (or ``--precision``) matmul rate of this machine over GEMM shapes the model uses;
* times sam2's predictor and prints the floor ``FLOPs / matmul rate`` per slice, the share of that rate sam2
  already reaches, and the largest speed-up over sam2 that any engine doing the same arithmetic could reach
  (sam2's time over the floor; the floor ignores every non-matmul operation, so the true bound is lower).

PERFORMANCE.md asks for 1.2x over sam2 on the CPU at equal output; this shows where that is out of reach.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vanilla import compare, run_predictor, scenes, write_jpeg_frames  # noqa: E402

# (m, k, n) GEMMs of Hiera-S / memory attention: MLP of stage 1 at 1024 px, stage 3 MLP, attention scores
GEMM_SHAPES = ((65536, 96, 384), (4096, 384, 1536), (4096, 256, 4096), (2048, 2048, 2048))


def matmul_rate(dtype: torch.dtype, repeats: int = 3) -> tuple[float, tuple[int, int, int]]:
    """The best matmul rate (FLOP/s) over ``GEMM_SHAPES`` and the shape that reached it."""
    best = (0.0, GEMM_SHAPES[0])
    for m, k, n in GEMM_SHAPES:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        torch.mm(a, b)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        rate = 2 * m * k * n * repeats / (time.perf_counter() - start)
        best = max(best, (rate, (m, k, n)))
    return best


def counted_flops(run) -> int:
    """FLOPs of ``run()``: matmuls, convolutions and attention (the CPU flash-attention kernel included)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    aten = torch.ops.aten

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run()
    return counter.get_total_flops()


def run_ours(model, unit: torch.Tensor, prompt: np.ndarray, batch: int, precision: str) -> None:
    """Our engine: encode and propagate forward from a mask on frame 0."""
    from TextPromptSegLib.engine.propagation import Propagator

    session = Propagator(model, "cpu", encode_batch_size=batch, precision=precision).start_session(unit)
    session.propagate(None, start_index=0, direction="forward", mask_prompts={0: prompt})


def run_vanilla(predictor, frames: np.ndarray, prompt: np.ndarray, precision: str) -> None:
    """sam2's video predictor as shipped: JPEG folder, mask on frame 0, propagate."""
    with tempfile.TemporaryDirectory() as tmp:
        write_jpeg_frames(frames, tmp)
        run_predictor(predictor, tmp, prompt, "cpu", precision)


def main() -> None:
    from TextPromptSegLib.engine.device import PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "hiera_s"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=[p for p in PRECISIONS if p != "auto"],
                        help="arithmetic of both sides and of the matmul rate")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from TextPromptSegLib.engine.propagation import default_encode_batch_size

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    rate, shape = matmul_rate(dtype)
    batch = default_encode_batch_size("cpu")
    gemm = "x".join(map(str, shape))
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, cpu, {args.precision}: best matmul rate {rate / 1e9:.0f} GFLOP/s (GEMM {gemm})")
    print("| config | size | frames | sam2 GFLOP/slice | ours GFLOP/slice | sam2 ms/slice | sam2 GFLOP/s | "
          "share of matmul rate | floor ms/slice | largest ratio at equal arithmetic |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, size, ours, vanilla, frames, prompt in scenes(args.configs, args.sizes, args.frames):
        unit = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255
        n = args.frames

        vanilla_flops = counted_flops(partial(run_vanilla, vanilla, frames, prompt, args.precision)) / n
        ours_flops = counted_flops(partial(run_ours, ours, unit, prompt, batch, args.precision)) / n
        compare(ours, vanilla, frames[:2], prompt, batch, "cpu", args.precision, args.precision)  # warm-up
        timed = compare(ours, vanilla, frames, prompt, batch, "cpu", args.precision, args.precision)
        vanilla_ms = 1000 * timed.vanilla_seconds / n
        floor_ms = 1000 * vanilla_flops / rate
        achieved = vanilla_flops / (vanilla_ms / 1000)
        print(f"| {name} | {size} | {n} | {vanilla_flops / 1e9:.1f} | {ours_flops / 1e9:.1f} | {vanilla_ms:.0f} | "
              f"{achieved / 1e9:.0f} | {achieved / rate:.0%} | {floor_ms:.0f} | {vanilla_ms / floor_ms:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
