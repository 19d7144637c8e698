"""Refinement latency: from "Refine" (a corrected slice) or a click to the first updated slice and to the end.

    python benchmarks/bench_refine.py --models tiny medium hiera_s:512 --slices 24

For each model a real LA2018 MRI crop (``--slices`` slices around the left atrium) is segmented once from its
middle slice with "the left atrium" (encoding every slice, as the Segment button does); then, reusing that
session (no re-encoding, which the benchmark checks):

* refine: slice k = middle + 3 gets a corrected mask (the model's mask dilated by 4 pixels, or a disc where the
  model found nothing) and :func:`refine_volume` re-propagates from it;
* click: a positive point at the centre of that disc on slice middle - 3 (the mask as the dense prompt).

Times come from the progress callback, which is how the panel learns of them: "first decided" is the first
propagated neighbour (k +- 1) decided, "first updated" the first neighbour whose mask changed (the event carries
the new mask, so the panel draws it at once); "done" is the call's return. Medians of ``--repeats`` runs of the
same refinement from the same previous result. Model weights: ``tiny`` and ``hiera_s`` random (speed does not
depend on the weights, but how far a refinement runs does), ``medium`` the bundled trained checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_model(spec: str, text_dir: Path):
    """tiny | medium | hiera_s[:size] -> a TGSAM-2 in eval mode."""
    from TextPromptSegLib.modeling.build import build_model
    from TextPromptSegLib.modeling.config import TextEncoderConfig, get_config

    name, _, size = spec.partition(":")
    if name == "medium":
        return build_model(ROOT / "Resources" / "Models" / "tgsam2-medium")
    config = get_config(name, image_size=int(size) if size else None)
    config.text = TextEncoderConfig(model_id_or_path=str(text_dir), max_length=16)
    torch.manual_seed(0)
    return build_model(config)


def la_crop(data: Path, slices: int):
    from TextPromptSegLib.io.volumes import read_volume

    case = sorted((data / "la2018" / "train").iterdir())[0]
    volume = read_volume(case / "image.nii.gz")
    label = read_volume(case / "label.nii.gz").array > 0 if (case / "label.nii.gz").exists() else None
    centre = int(np.argmax(label.reshape(len(label), -1).sum(1))) if label is not None else len(volume.array) // 2
    lo = max(0, centre - slices // 2)
    volume.array = volume.array[lo : lo + slices].copy()
    return volume, case.name


def timed(run, start_slice: int):
    """Run ``run(progress=...)``; return (first decided s, first updated s or None, total s, result)."""
    marks: dict[str, float] = {}
    t0 = time.perf_counter()

    def progress(event) -> None:
        now = time.perf_counter() - t0
        if event.slice_index >= 0 and event.slice_index != start_slice:
            marks.setdefault("decided", now)
            if event.mask is not None:
                marks.setdefault("updated", now)

    result = run(progress=progress)
    return marks.get("decided"), marks.get("updated"), time.perf_counter() - t0, result


def disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(pixels):
        padded = np.pad(out, 1)
        out = out | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return out


def ms(value) -> str:
    return "-" if value is None else f"{1000 * value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "medium"])
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--unchanged-iou", type=float, default=0.95, help="the Slicer Logic's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from TextPromptSegLib.engine.pipeline import PreparedVolume, SegmentRequest, refine_volume, segment_volume
    from TextPromptSegLib.engine.propagation import Propagator
    from TextPromptSegLib.modeling.testing import make_tiny_text_encoder

    text_dir = make_tiny_text_encoder(Path(tempfile.mkdtemp()) / "bert")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    volume, case = la_crop(args.data, args.slices)
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, device {device}{gpu}; LA2018 {case}, {volume.shape} (z, y, x)")
    print("| model | size | slices | segment s | refine: first decided ms | first updated ms | done ms | "
          "visited / changed | click: first decided ms | first updated ms | done ms | visited / changed | "
          "re-encoded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for spec in args.models:
        model = load_model(spec, text_dir)
        propagator = Propagator(model, device)
        prepared = PreparedVolume(volume, model.image_size)
        session = propagator.start_session(prepared.frame_source())
        middle = len(prepared) // 2
        t0 = time.perf_counter()
        first = segment_volume(volume, [SegmentRequest("the left atrium")], propagator=propagator, session=session,
                               prepared=prepared, start_slice=middle).segments[0]
        segment_seconds = time.perf_counter() - t0
        encoded = session.encode_count
        frames = prepared.geometry.to_frames(first.mask)
        shape = frames.shape[1:]
        k, c = min(middle + 3, len(prepared) - 1), max(middle - 3, 0)
        fallback = disc(shape, (shape[0] * 0.45, shape[1] * 0.5), min(shape) * 0.12)
        correction = dilate(frames[k], 4) if frames[k].any() else fallback
        rows, cols = np.nonzero(fallback)
        click = ([(float(rows.mean()), float(cols.mean()))], [1])

        refine = functools.partial(refine_volume, prepared, session, "the left atrium", first.propagation, k,
                                   mask=correction, unchanged_iou=args.unchanged_iou)
        point = functools.partial(refine_volume, prepared, session, "the left atrium", first.propagation, c,
                                  points=click, unchanged_iou=args.unchanged_iou)
        rows_out = []
        for run, start in ((refine, k), (point, c)):
            timed(run, start)  # warm-up (allocations, autotuning)
            runs = [timed(run, start) for _ in range(args.repeats)]
            decided = statistics.median(r[0] for r in runs if r[0] is not None) if runs[0][0] is not None else None
            updated = [r[1] for r in runs if r[1] is not None]
            result = runs[-1][3]
            rows_out.append((decided, statistics.median(updated) if updated else None,
                             statistics.median(r[2] for r in runs), len(result.visited), len(result.changed)))
        reencoded = session.encode_count - encoded
        (rd, ru, rt, rv, rc), (cd, cu, ct, cv, cc) = rows_out
        name, _, size = spec.partition(":")
        print(f"| {name} | {model.image_size} | {len(prepared)} | {segment_seconds:.1f} | {ms(rd)} | {ms(ru)} | "
              f"{ms(rt)} | {rv} / {rc} | {ms(cd)} | {ms(cu)} | {ms(ct)} | {cv} / {cc} | {reencoded} |", flush=True)


if __name__ == "__main__":
    main()
