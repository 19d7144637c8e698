"""The ``textpromptseg`` command line: segment, demo, models, info.

Every user-caused failure ends with one line on stderr and exit status 2, and no output file is left behind.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from . import __version__

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("textpromptseg")

DEMO_PROMPT = "a soft-tissue sarcoma"
DEMO_SAMPLE = ("Samples", "STS_002", "CT_image.nii.gz")
DEMO_TRUTH = ("Samples", "STS_002", "CT_mask.nii.gz")
REFERENCE_COLOR = (0.2, 0.9, 0.3)
DEMO_VALIDATION_DICE = "0.56"  # tgsam2-medium, sarcoma validation mean (docs/MODEL_CARD.md)


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (exit status 2), like every other argument error of this tool."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _window(text: Optional[str]):
    """--window: a preset name or CENTRE,WIDTH, checked here (before any model loads)."""
    from .engine.preprocess import WINDOWS, resolve_window

    if text is None:
        return None
    if "," in text:
        try:
            centre, width = (float(v) for v in text.split(","))
        except ValueError as exc:
            raise UserError(f"--window takes a preset name ({', '.join(WINDOWS)}) or CENTRE,WIDTH, not {text!r}") \
                from exc
        window = (centre, width)
    else:
        window = text
    try:
        resolve_window(window)
    except ValueError as exc:
        raise UserError(f"--window: {exc}") from exc
    return window


def _slice_range(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        first, last = (int(v) for v in text.split(":"))
    except ValueError as exc:
        raise UserError(f"--slice-range takes FIRST:LAST slice indices (inclusive), not {text!r}") from exc
    if first > last:
        raise UserError(f"--slice-range {text} is reversed: FIRST must not be after LAST (e.g. {last}:{first})")
    if first < 0:
        raise UserError(f"--slice-range {text}: slice indices start at 0")
    return first, last


def _check_slices(count: int, slice_range: Optional[tuple[int, int]], start_slice: Optional[int],
                  what: str = "slices") -> None:
    """--slice-range and --start-slice against the ``count`` slices (or frames) along the slicing axis."""
    if slice_range is not None and not 0 <= slice_range[0] <= slice_range[1] < count:
        raise UserError(f"--slice-range {slice_range[0]}:{slice_range[1]} is outside the input: the slice range must "
                        f"lie within 0:{count - 1} (its {count} {what} along the slicing axis)")
    if start_slice is not None:
        first, last = slice_range or (0, count - 1)
        if not first <= start_slice <= last:
            where = f"the slice range {first}:{last}" if slice_range else f"the {count} {what} (0 to {count - 1})"
            raise UserError(f"--start-slice {start_slice} is outside {where}")


def _check_output_folder(path: Path, option: str = "--output") -> None:
    """The folder that will hold ``path`` exists or can be created, and is writable (nothing is created here)."""
    import os

    parent = path.parent if path.parent != Path("") else Path(".")
    probe = parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{option} {path}: {probe} is a file, so the folder {parent} cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {probe}")


def _progress_bar():
    """(close, callback) for engine progress events: one tqdm bar per phase on stderr, created at the first slice
    event (so nothing is drawn before the model runs); the CPU time estimate is logged as one line."""
    from tqdm import tqdm

    state: dict = {"phase": None, "bar": None}

    def callback(event) -> None:
        if event.phase == "estimate":
            log.info("%s", event.message)
            return
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = tqdm(total=event.total, desc=event.phase, unit="slice", dynamic_ncols=True,
                                      file=sys.stderr)
            state["phase"] = event.phase
        if event.phase != state["phase"]:
            state["phase"] = event.phase
            bar.reset(total=event.total)
        bar.set_description(event.phase)
        bar.n = event.done
        bar.refresh()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return close, callback


def _download_bar():
    """(close, progress(bytes done, total or None)) for model downloads: a byte bar, created at the first block."""
    from tqdm import tqdm

    state: dict = {"bar": None}

    def progress(done: int, total: Optional[int]) -> None:
        if state["bar"] is None:
            state["bar"] = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                                file=sys.stderr, desc="download")
        state["bar"].n = done
        state["bar"].refresh()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return close, progress


def quiet_loading() -> None:
    """No "Loading weights" bar from transformers for the text encoder's tensors: the CLI's bars show the model's
    work. Called just before a model is loaded (importing transformers earlier would slow every argument error)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _is_folder_output(output: Path, raw: Optional[str] = None) -> bool:
    """``-o masks/`` (a trailing slash) or an existing folder: one PNG mask per frame."""
    return (raw or str(output)).endswith(("/", "\\")) or output.is_dir()


def run_segment(input_path: Path, prompts: list[str], output: Path, model_name: Optional[str], device: Optional[str],
                axis: Optional[str], start_slice: Optional[int], window, overlay: Optional[Path],
                names: Optional[list[str]] = None, first_mask_model: Optional[str] = None,
                slice_range: Optional[tuple[int, int]] = None, direction: str = "both",
                overlay_reference: Optional[np.ndarray] = None, sequence: bool = False, precision: str = "auto",
                output_raw: Optional[str] = None, strict: bool = False, channels: Optional[list[Path]] = None):
    """Segment one file; returns the VolumeSegmentation. Raises UserError for anything the user can fix: every
    argument (device, output and overlay folders, window, slice range, start slice) is checked before the model loads.

    Each prompt's familiarity to the model is printed first; ``strict`` refuses prompts the model does not know
    (or any prompt, when the model's text modules are untrained) before the model is loaded. A
    structure the model finds absent gets an empty segment and a message.

    overlay_reference: a (z, y, x) reference mask drawn in green on the overlay beside the segments.
    sequence: read the input as a 2D+t sequence (frames along k) even when it is a plain 3D file; frame folders,
    ``.seq.nrrd``, multi-page TIFF and ``.npy`` inputs are sequences anyway. Sequences can also be written as a
    ``.seq.nrrd`` label sequence or as one PNG mask per frame (``-o FOLDER/``).
    channels: further co-registered sequences after ``input_path`` (e.g. FLAIR, then contrast T1), read together as
    the composite the model's checkpoint states (``"inputs"``/``"channels"``), built as training builds it.
    """
    from .engine.device import DeviceError, pick_device
    from .engine.geometry import SliceGeometry
    from .engine.pipeline import PreparedVolume, SegmentRequest, segment_volume
    from .io.volumes import InputError, read_channels, read_sequence, read_volume
    from .io.writers import (
        SegmentSpec,
        write_frame_masks,
        write_label_sequence,
        write_labelmap,
        write_overlay_png,
        write_seg_nrrd,
    )
    from .modeling.checkpoint import CheckpointError
    from .registry import RegistryError, load_model, model_inputs

    prompts = [p.strip() for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise UserError("every --prompt must be a non-empty description of what to segment")
    folder_output = _is_folder_output(output, output_raw)
    suffixes = "".join(output.suffixes).lower()
    if not folder_output and suffixes not in (".seg.nrrd", ".seq.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha"):
        raise UserError(f"output must end with .seg.nrrd, .nii.gz, .nii, .nrrd or .mha, or for a sequence "
                        f".seq.nrrd or a folder (FOLDER/) of per-frame PNG masks: {output}")
    _check_output_folder(output / "x" if folder_output else output, "--output")
    if overlay is not None:
        if overlay.suffix.lower() != ".png":
            raise UserError(f"--overlay writes a PNG image: give a .png file, not {overlay}")
        _check_output_folder(overlay, "--overlay")
    if start_slice is not None and start_slice < 0:
        raise UserError(f"--start-slice {start_slice}: slice indices start at 0")
    quiet_loading()
    encoder, familiarity = check_prompts(prompts, model_name, strict)  # --strict refuses before reading input
    if channels and sequence:
        raise UserError("--channel combines co-registered volumes; it does not apply to a 2D+t --sequence")
    try:
        dev = pick_device(device)
        inputs = model_inputs(model_name)
        if channels:
            wanted = inputs.channel_set(1 + len(channels))
            if wanted is None:
                stated = "; ".join(" + ".join(c.sequences) for c in inputs.channels) or "one image"
                raise UserError(f"the model reads {stated}, not {1 + len(channels)} sequences: leave --channel out "
                                "or pick a model trained on these sequences")
            log.info("reading %s as the model's %s composite", " + ".join(p.name for p in [input_path, *channels]),
                     " + ".join(wanted.sequences))
            volume = read_channels([input_path, *channels])
        else:
            volume = read_sequence(input_path) if sequence else read_volume(input_path)
            for channel_set in inputs.channels:
                covered = [p for p in prompts if channel_set.covers(p)]
                if covered and not volume.is_rgb:
                    log.warning("the model read %r from a %s composite in training: for comparable results pass the "
                                "sequences in that order, e.g. INPUT=%s --channel %s", covered[0],
                                " + ".join(channel_set.sequences), channel_set.sequences[0],
                                " --channel ".join(channel_set.sequences[1:]))
    except (InputError, DeviceError, RegistryError, CheckpointError) as exc:
        raise UserError(str(exc)) from exc
    if (folder_output or suffixes == ".seq.nrrd") and not volume.is_sequence:
        raise UserError(f"{output} is a sequence output (per-frame masks): the input is a volume; write .seg.nrrd "
                        "or .nii.gz, or pass --sequence if its k axis is time")
    if volume.is_sequence and axis is not None:
        raise UserError(f"--axis {axis}: a 2D+t sequence is segmented frame by frame; leave --axis out")
    try:
        geometry = (SliceGeometry.for_sequence(volume.spacing) if volume.is_sequence
                    else SliceGeometry.for_volume(volume.direction, volume.spacing, axis))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    _check_slices(geometry.num_frames(volume.shape), slice_range, start_slice,
                  "frames" if volume.is_sequence else "slices")
    quiet_loading()
    for line in familiarity:  # printed once every argument has been checked
        print(line)
    try:
        model = load_model(model_name, device=str(dev), text_encoder=encoder)
        first_mask = load_model(first_mask_model, device=str(dev)) if first_mask_model else None
    except (RegistryError, CheckpointError) as exc:
        raise UserError(str(exc)) from exc
    requests = [SegmentRequest(p, name=(names[i] if names and i < len(names) else None)) for i, p in enumerate(prompts)]
    close_bar, callback = _progress_bar()
    try:
        prepared = PreparedVolume.for_model(volume, model, axis, window)
        from .engine.tpp_engine import make_propagator

        propagator = make_propagator(model, str(dev), first_mask_model=first_mask, precision=precision)
        result = segment_volume(volume, requests, propagator=propagator, start_slice=start_slice,
                                slice_range=slice_range, direction=direction, progress=callback, prepared=prepared,
                                estimate=dev.type == "cpu")
    except (ValueError, IndexError) as exc:
        raise UserError(str(exc)) from exc
    finally:
        close_bar()
    if folder_output:
        stems = list(volume.sequence.values) if input_path.is_dir() else None
        write_frame_masks(prepared.geometry.to_frames(result.labelmap()), output, stems)
    elif suffixes == ".seq.nrrd":
        write_label_sequence(volume, result.labelmap(), output)
    elif suffixes == ".seg.nrrd":
        write_seg_nrrd(volume, [SegmentSpec(s.mask, s.name, s.color, s.prompt) for s in result.segments], output)
    else:
        write_labelmap(volume, result.labelmap(), output)
    if overlay is not None:
        masks, colors = [s.mask for s in result.segments], [s.color for s in result.segments]
        labels = [s.name for s in result.segments]
        if overlay_reference is not None:
            masks, colors, labels = [*masks, overlay_reference], [*colors, REFERENCE_COLOR], [*labels, "reference"]
        write_overlay_png(masks, colors, overlay, frames=prepared.frames, frames_of=prepared.geometry.to_frames,
                          names=labels, spacing=(prepared.geometry.row_spacing, prepared.geometry.col_spacing))
    for seg in result.segments:
        if seg.absent:
            print(seg.message)
        if volume.is_sequence:
            print(f"{seg.name}: the object in {seg.slices_with_object} of {len(prepared)} frames "
                  f"(start frame {seg.start_slice})")
        else:
            print(f"{seg.name}: {seg.slices_with_object} slices with the object, {seg.volume_ml:.1f} mL "
                  f"(start slice {seg.start_slice})")
    return result


def check_prompts(prompts: list[str], model_name: Optional[str], strict: bool = False):
    """Print each prompt's familiarity to the model (``familiarity.assess``); with ``strict``, raise UserError for
    a prompt it does not know. Returns the text encoder it loaded (to share with the model), or None. Runs before
    the model and the volume are loaded: it reads the checkpoint's config.json and its text encoder only."""
    from .familiarity import UNKNOWN, assess, familiarity_checker, text_ignored
    from .modeling.checkpoint import CheckpointError
    from .modeling.text_encoder import TextEncoderError
    from .registry import RegistryError, resolve

    try:
        _, local, _ = resolve(model_name)
        checker = None if text_ignored(local) else familiarity_checker(local)
        verdicts = assess(local, prompts, checker)
    except (RegistryError, CheckpointError, TextEncoderError, OSError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    refused = [v for v in verdicts if v.needs_visual_prompt]
    if strict and refused:
        for verdict in verdicts:  # what was judged, then the refusal
            print(f"{verdict.prompt!r}: {verdict.describe()}")
        v = refused[0]
        what = ("this model ignores text (its text modules are untrained)" if v.level != UNKNOWN else
                f"this model does not know it (nearest trained structure: {v.structure}, similarity "
                f"{v.similarity:.2f})")
        raise UserError(f"--strict: refusing {v.prompt!r}: {what}; see 'textpromptseg models list' for what it "
                        "was trained on")
    return (checker.encoder if checker is not None else None), [f"{v.prompt!r}: {v.describe()}" for v in verdicts]


def cmd_segment(args) -> int:
    paths = ([args.input] if args.input else []) + (args.channel or [])
    if not paths:
        raise UserError("segment needs an input image (or --channel FILE for each co-registered sequence)")
    run_segment(Path(paths[0]), args.prompt, Path(args.output), args.model, args.device, args.axis,
                args.start_slice, _window(args.window), Path(args.overlay) if args.overlay else None, args.name,
                args.first_mask_model, _slice_range(args.slice_range), args.direction, sequence=args.sequence,
                output_raw=args.output, precision=args.precision, strict=args.strict,
                channels=[Path(p) for p in paths[1:]])
    print(f"wrote {args.output}")
    return 0


def cmd_demo(args) -> int:
    import numpy as np
    import SimpleITK as sitk

    from .engine.device import DeviceError, pick_device
    from .resources import resource_path

    sample = resource_path(*DEMO_SAMPLE)
    out = Path(args.output)
    _check_output_folder(out / "sarcoma.seg.nrrd", "--output")
    try:
        pick_device(args.device)
    except DeviceError as exc:
        raise UserError(str(exc)) from exc
    seg_path, png_path = out / "sarcoma.seg.nrrd", out / "sarcoma_overlay.png"
    print(f"segmenting the bundled sample {sample.name} (TCIA soft-tissue sarcoma, CC BY 3.0) with "
          f"'{DEMO_PROMPT}'")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(resource_path(*DEMO_TRUTH)))) > 0
    result = run_segment(sample, [DEMO_PROMPT], seg_path, args.model, args.device, None, None, None, png_path,
                         ["Sarcoma"], overlay_reference=truth)
    mask = result.segments[0].mask
    dice = 2 * np.logical_and(mask, truth).sum() / max(1, mask.sum() + truth.sum())
    truth_ml = truth.sum() * np.prod(result.volume.spacing) / 1000
    print(f"Dice against the reference tumour outline: {dice:.3f} (reference {truth_ml:.1f} mL)")
    print("  Dice is the overlap of the model's outline with the expert's reference outline: 1 means identical, "
          "0 no overlap.")
    if args.model is None:
        print(f"  The bundled research model (trained from scratch on CPUs) averages {DEMO_VALIDATION_DICE} over its "
              "7 sarcoma validation cases, this one among them (docs/MODEL_CARD.md).")
    print(f"wrote {seg_path} and {png_path} (segment outline in its colour, reference outline in green)")
    return 0


def cmd_models(args) -> int:
    from . import registry

    if args.action == "list":
        default = registry.default_model_name()
        for name, entry in registry.entries().items():
            mark = "*" if name == default else " "
            where = "bundled" if entry.bundled else f"download ({', '.join(f['name'] for f in entry.files)})"
            folder = registry.checkpoint_folder(name)
            if folder is not None and folder.exists():
                files = [folder] if folder.is_file() else [f for f in folder.iterdir() if f.is_file()]
                where += f", {sum(f.stat().st_size for f in files) / 1e6:.1f} MB"
            if entry.cpu_seconds_per_slice is not None:
                where += f", {entry.cpu_seconds_per_slice:.2f} s per slice on a 2-core CPU"
            print(f"{mark} {name:26s} {entry.kind:14s} {where}\n    {entry.description}\n    licence: {entry.licence}")
            print(f"    trained on: {_trained_on(name, entry.kind)}")
        return 0
    if not args.name:
        raise UserError(f"models {args.action} needs a model name (see: textpromptseg models list)")
    try:
        if args.action == "download":
            close_bar, progress = _download_bar()
            try:
                registry.resolve(args.name, download_missing=True, progress=progress)
            finally:
                close_bar()
        paths = registry.verify(args.name)
    except registry.RegistryError as exc:
        raise UserError(str(exc)) from exc
    for p in paths:
        print(f"ok {p} (SHA-256 matches)")
    return 0


def _trained_on(name: str, kind: str) -> str:
    """What a registered model's checkpoint records it was trained on, in one line."""
    from . import registry
    from .familiarity import record_of, text_ignored

    if kind == "sam2-official":
        return "nothing with text (SAM-2 weights; the text modules are untrained): text is ignored, visual prompts " \
               "(box, points) are needed"
    folder = registry.checkpoint_folder(name)
    if folder is None:
        return "not recorded until downloaded"
    record = record_of(folder)
    if text_ignored(folder):
        return "text modules untrained: text is ignored, visual prompts (box, points) are needed"
    if record is None:
        return "not recorded in its config.json"
    prompts = sum(len(s.prompts) for s in record.structures)
    return f"{record.summary()}; {prompts} training prompts"


def cmd_info(args) -> int:
    import platform

    print(f"textpromptseg {__version__}, Python {platform.python_version()} on {platform.platform()}")
    from importlib.metadata import PackageNotFoundError, version

    for package in ("torch", "sam2", "transformers", "SimpleITK", "numpy"):
        try:
            print(f"  {package} {version(package)}")
        except PackageNotFoundError:
            print(f"  {package}: not installed")
    from .engine.device import keep_freed_host_memory, pick_device

    print(f"  default device: {pick_device(None)}")
    kept = keep_freed_host_memory()
    print("  host memory: " + ("freed tensors' memory is kept for reuse (TEXTPROMPTSEG_MALLOC=system: off)" if kept
                               else "the system allocator's default"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .engine.device import PRECISIONS
    from .engine.preprocess import WINDOWS

    parser = _Parser(prog="textpromptseg", description="Text-prompted segmentation of medical "
                                     "volumes and sequences (TGSAM-2).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment a volume, one segment per prompt")
    seg.add_argument("input", nargs="?", help="NIfTI, NRRD, MHA, a DICOM series folder, or a 2D+t sequence: a "
                     "folder of frames, a Slicer .seq.nrrd, a multi-page TIFF or a .npy (t, y, x[, 3]) array")
    seg.add_argument("--channel", action="append", metavar="FILE", help="a co-registered sequence of the same "
                     "patient, in the order the model states (repeat; the input, if given, comes first): "
                     "tgsam2-medium reads BraTS sub-regions from --channel FLAIR.nii.gz --channel T1C.nii.gz")
    seg.add_argument("--prompt", "-p", action="append", required=True, help="what to segment (repeatable)")
    seg.add_argument("--name", action="append", help="segment name for the prompt at the same position")
    seg.add_argument("-o", "--output", required=True, help="output .seg.nrrd (Slicer) or label volume (.nii.gz); "
                     "for a sequence also a .seq.nrrd label sequence or FOLDER/ (one PNG label mask per frame)")
    seg.add_argument("--sequence", action="store_true", help="read INPUT as a 2D+t sequence (its k axis is time) "
                     "and segment it frame by frame")
    seg.add_argument("--model", help="registered model name or a checkpoint path (default: the bundled model)")
    seg.add_argument("--device", help="cuda, cuda:N, mps, cpu or auto (default)")
    seg.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="auto (default): bf16 on CUDA, float32 elsewhere; bf16 on a CPU with AVX512-BF16 or AMX "
                     "runs about 2x faster with masks within bf16 rounding of float32")
    seg.add_argument("--axis", choices=("axial", "coronal", "sagittal"), help="slicing axis (default: acquisition)")
    seg.add_argument("--start-slice", type=int, help="slice (or frame of a sequence) to start from (default: the "
                     "most confident one)")
    seg.add_argument("--slice-range", metavar="FIRST:LAST",
                     help="segment only these slices or frames (inclusive indices along the slicing axis)")
    seg.add_argument("--direction", choices=("both", "forward", "backward"), default="both",
                     help="propagate both ways from the start slice (default) or only towards higher/lower indices")
    seg.add_argument("--window", help=f"CT window preset ({', '.join(WINDOWS)}) or CENTRE,WIDTH in HU (default: "
                     "what the model was trained with: soft_tissue for CT, percentiles for other images)")
    seg.add_argument("--overlay", help="also write a PNG with the outline on a few slices")
    seg.add_argument("--first-mask-model", help="a TPP model whose start-slice mask prompts the --model's "
                     "propagation (the TPP -> SAM-2 pipeline)")
    seg.add_argument("--strict", action="store_true", help="refuse prompts the model does not know (exit status "
                     "2) instead of segmenting them anyway; prompts are always checked and the verdict printed")
    seg.set_defaults(func=cmd_segment)

    demo = sub.add_parser("demo", help="segment the bundled sarcoma CT with the bundled model")
    demo.add_argument("--output", default="textpromptseg-demo", help="output folder")
    demo.add_argument("--model", help="model (default: the bundled model)")
    demo.add_argument("--device", help="cuda, cuda:N, mps, cpu or auto (default)")
    demo.set_defaults(func=cmd_demo)

    models = sub.add_parser("models", help="list, download or verify models")
    models.add_argument("action", choices=("list", "download", "verify"))
    models.add_argument("name", nargs="?", help="a registered model name; verify also takes a checkpoint folder path "
                        "(checked against its SHA256SUMS)")
    models.set_defaults(func=cmd_models)

    info = sub.add_parser("info", help="versions and devices")
    info.set_defaults(func=cmd_info)

    from .training.commands import add_parsers

    add_parsers(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "structure", "unset") is None:
        args.structure = ["left atrium", "sarcoma"]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    for noisy in ("transformers", "huggingface_hub", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from .engine.device import keep_freed_host_memory

    keep_freed_host_memory()  # large CPU tensors reuse freed pages instead of faulting in fresh ones
    start = time.perf_counter()
    try:
        code = args.func(args)
    except UserError as exc:
        print(f"textpromptseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("textpromptseg: interrupted; no output written", file=sys.stderr)
        return 130
    log.debug("done in %.1f s", time.perf_counter() - start)
    return code


if __name__ == "__main__":  # python -m TextPromptSegLib.cli: run the imported module's main, so that the UserError
    from TextPromptSegLib.cli import main as package_main  # that subcommand modules raise is the one main catches

    sys.exit(package_main())
