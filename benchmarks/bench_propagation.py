"""Propagation speed: our engine vs sam2's video predictor on the same weights and frames, in one run.

    python benchmarks/bench_propagation.py --configs tiny hiera_s --sizes 512 1024 --frames 8

Prints slices/s, ms/slice, peak host RSS and peak GPU memory, the speed ratio, and the fraction of pixels where
the two outputs differ (equal output is part of the measurement). Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vanilla import compare, scenes  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from TextPromptSegLib.engine.device import PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "hiera_s"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=None,
                        help="frames per encoder call (default: the engine's for the device)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="our engine's precision (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--vanilla-precision", default="auto", choices=PRECISIONS,
                        help="sam2's predictor's precision (auto: as shipped, bf16 autocast on CUDA, fp32 on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="apply the command-line tool's malloc setting (engine.device.keep_freed_host_memory) "
                             "to this process, so to both sides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from TextPromptSegLib.engine.device import keep_freed_host_memory

    malloc = "freed memory kept (both sides)" if args.keep_freed_memory and keep_freed_host_memory() else "system"

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    from TextPromptSegLib.engine.propagation import default_encode_batch_size

    batch = args.batch or default_encode_batch_size(device)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, device {device}{gpu}, {batch} frames per encoder call, "
          f"precision ours {args.precision}, sam2's {args.vanilla_precision}, malloc {malloc}")
    print("| config | size | frames | ours ms/slice | ours slices/s | vanilla ms/slice | ratio | differ | "
          "estimate / actual | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, size, ours, vanilla, frames, prompt in scenes(args.configs, args.sizes, args.frames, device):
        compare(ours, vanilla, frames[:2], prompt, batch, device, args.precision, args.vanilla_precision)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        result = compare(ours, vanilla, frames, prompt, batch, device, args.precision, args.vanilla_precision)
        n = args.frames
        print(f"| {name} | {size} | {n} | {1000 * result.ours_seconds / n:.0f} | {n / result.ours_seconds:.2f} | "
              f"{1000 * result.vanilla_seconds / n:.0f} | {result.vanilla_seconds / result.ours_seconds:.2f}x | "
              f"{result.disagreement:.4%} | {result.estimated_seconds / result.ours_seconds:.2f} | "
              f"{peak_rss_mb():.0f} |", flush=True)
        if device == "cuda":
            print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
