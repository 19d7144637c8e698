"""Evaluation through the inference path (``segment_volume``): per-case Dice, IoU, HD95 and, for every prompt mode,
a per-structure table laid out like the papers' Table 1 (Markdown + JSON).

Prompt modes (:data:`MODES`). The visual prompts are taken from the reference label on its *middle labelled
slice* along the engine's slicing axis (the middle one of the slices that hold the structure, the lower one of
the two middle slices for an even count), in the frame coordinates the engine uses (``SliceGeometry.to_frames``:
rows and columns after its transposition and flips), and that slice is the start slice of the propagation:

* ``text``: the text prompt alone (the start slice is found by the engine's coarse pass, or ``start_slice``);
* ``box``: the label's bounding box on that slice, no text (the model gets ``None``: SAM-2's visual prompts);
* ``box+text``: the same box with the text;
* ``clicks``: one positive click at the label's interior point farthest from its border (physical distance,
  the frame edge counting as border) and one negative click at the background point farthest from the label
  within its bounding box grown by a quarter of its size on each side (a click near the structure, clearly
  outside it); no text;
* ``clicks+text``: the same clicks with the text.

Data: :class:`EvalCase` lists (see ``training.commands.shared_eval_cases`` for the shared-data splits) or
:func:`folder_cases`, a folder of image/label pairs or an nnU-Net / MSD dataset with a prompt spec.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..engine.pipeline import PreparedVolume, SegmentRequest, segment_volume
from ..io.volumes import read_volume
from .metrics import dice, hd95, iou

log = logging.getLogger(__name__)

MODES = ("text", "box", "box+text", "clicks", "clicks+text")
MODE_TITLES = {
    "text": "text only",
    "box": "one box on the middle labelled slice, no text",
    "box+text": "one box on the middle labelled slice and the text",
    "clicks": "one positive and one negative click on the middle labelled slice, no text",
    "clicks+text": "one positive and one negative click on the middle labelled slice and the text",
}


def parse_modes(values: Optional[Sequence[str]]) -> list[str]:
    """``--mode`` values (repeatable, each may be a comma list) -> the modes in the order given, each once;
    ``["text"]`` when none are given. Raises ValueError naming an unknown mode."""
    modes: list[str] = []
    for value in values or ["text"]:
        for mode in (m.strip().lower() for m in value.split(",")):
            if not mode:
                continue
            if mode not in MODES:
                raise ValueError(f"unknown evaluation mode {mode!r}; use {', '.join(MODES)}")
            if mode not in modes:
                modes.append(mode)
    return modes or ["text"]


@dataclass
class EvalCase:
    case_id: str
    structure: str
    image: Path
    label: Path
    label_values: tuple[int, ...]
    prompt: str
    reader: Optional[Callable] = None  # image path -> Volume (default: read_volume), e.g. a multi-channel composite
    others: Optional[dict[str, tuple[int, ...]]] = None  # other structures in the same label map (selection test)
    label_reader: Optional[Callable] = None  # label path -> (z, y, x) integer array (default: read_volume's array)


@dataclass
class CaseScore:
    case_id: str
    structure: str
    prompt: str
    dice: float
    iou: float
    hd95: float
    seconds: float
    dice_vs_others: Optional[dict[str, float]] = None  # Dice of this prompt's output against the other structures
    mode: str = "text"
    start_slice: Optional[int] = None  # where the propagation started (index along the slicing axis)
    box: Optional[list[int]] = None  # (row0, col0, row1, col1) on start_slice, frame pixels, inclusive
    clicks: Optional[list[list[int]]] = None  # [[row, col, label], ...] on start_slice (1 positive, 0 negative)
    encoded_slices: Optional[int] = None  # slices this run passed through the image encoder (a case's modes share)


# --- visual prompts from a label ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelPrompts:
    """Visual prompts taken from a reference label on one slice, in frame (row, col) pixels (inclusive)."""

    slice_index: int
    box: tuple[int, int, int, int]  # (row0, col0, row1, col1)
    positive: tuple[int, int]
    negative: Optional[tuple[int, int]]  # None when the grown box holds no background


def middle_labelled_slice(frame_masks: np.ndarray) -> int:
    """The middle one of the slices of ``frame_masks`` (N, H, W) bool that hold the structure (the lower of the
    two middle ones for an even count). Raises ValueError for an empty mask."""
    labelled = np.flatnonzero(np.asarray(frame_masks, bool).reshape(len(frame_masks), -1).any(1))
    if not labelled.size:
        raise ValueError("the label is empty: no slice to prompt")
    return int(labelled[(labelled.size - 1) // 2])


def _signed_distance(mask: np.ndarray, row_spacing: float, col_spacing: float, pad: bool) -> np.ndarray:
    """Physical distance (mm) of every pixel of ``mask`` (H, W) bool to the label's border: positive inside,
    negative outside (SimpleITK's signed Maurer map: border pixels 0). ``pad``: beyond the frame's edge counts
    as outside the label."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.pad(mask, 1 if pad else 0).astype(np.uint8))
    image.SetSpacing((float(col_spacing), float(row_spacing)))  # SimpleITK (x, y) = (col, row)
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=True, squaredDistance=False, useImageSpacing=True))
    return distance[1:-1, 1:-1] if pad else distance


def label_prompts(frame_masks: np.ndarray, row_spacing: float = 1.0, col_spacing: float = 1.0) -> LabelPrompts:
    """The box and clicks of the evaluation modes from a label's frames (N, H, W) bool (see the module docstring).
    Ties go to the first pixel in row-major order."""
    n = middle_labelled_slice(frame_masks)
    mask = np.asarray(frame_masks[n], bool)
    rows, cols = np.nonzero(mask)
    box = (int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max()))
    inside = np.where(mask, _signed_distance(mask, row_spacing, col_spacing, pad=True), -np.inf)
    positive = tuple(int(v) for v in np.unravel_index(int(np.argmax(inside)), mask.shape))
    h, w = mask.shape
    grow_r, grow_c = max(1, (box[2] - box[0] + 1) // 4), max(1, (box[3] - box[1] + 1) // 4)
    r0, c0 = max(0, box[0] - grow_r), max(0, box[1] - grow_c)
    r1, c1 = min(h - 1, box[2] + grow_r), min(w - 1, box[3] + grow_c)
    outside = np.full(mask.shape, -np.inf)  # distance to the label, on the background of the grown box
    outside[r0 : r1 + 1, c0 : c1 + 1] = -_signed_distance(mask, row_spacing, col_spacing, pad=False)[
        r0 : r1 + 1, c0 : c1 + 1]
    outside[mask] = -np.inf
    negative = None
    if np.isfinite(outside).any():
        negative = tuple(int(v) for v in np.unravel_index(int(np.argmax(outside)), mask.shape))
    return LabelPrompts(n, box, positive, negative)


def mode_request(mode: str, case: EvalCase, visual: Optional[LabelPrompts]) -> tuple[SegmentRequest, bool]:
    """The request of one mode and whether the model gets the text. Visual-only requests keep the text as the
    segment's name; the engine is run without it (:class:`_WithoutText`)."""
    if mode == "text":
        return SegmentRequest(case.prompt, name=case.structure), True
    if visual is None:
        raise ValueError(f"mode {mode!r} needs a non-empty label")
    n = visual.slice_index
    request = SegmentRequest(case.prompt, name=case.structure)
    if mode.startswith("box"):
        request.box_prompts = {n: visual.box}
    elif mode.startswith("clicks"):
        points, labels = [visual.positive], [1]
        if visual.negative is not None:
            points.append(visual.negative)
            labels.append(0)
        request.point_prompts = {n: (points, labels)}
    else:
        raise ValueError(f"unknown evaluation mode {mode!r}; use {', '.join(MODES)}")
    return request, mode.endswith("+text")


class _WithoutText:
    """A session view that runs every propagation without text (the model gets ``None``: SAM-2's visual prompts
    only). ``segment_volume`` needs a text for the segment's name; this keeps it away from the model."""

    def __init__(self, session) -> None:
        self.session = session

    def propagate(self, prompt, *args, **kwargs):
        return self.session.propagate(None, *args, **kwargs)


# --- running -----------------------------------------------------------------------------------------------------


def _read_labels(case: EvalCase) -> np.ndarray:
    if case.label_reader is not None:
        return np.asarray(case.label_reader(case.label))
    return np.round(read_volume(case.label).array).astype(np.int32)


def evaluate_cases(model, cases: list[EvalCase], device: Optional[str] = None, modes: Sequence[str] = ("text",),
                   propagator=None, **segment_kwargs) -> list[CaseScore]:
    """Segment every case in every mode and score it against its label.

    Give a built ``model`` (and ``device``) or a ``propagator`` (``engine.tpp_engine.make_propagator``).
    ``segment_kwargs`` go to ``segment_volume`` (axis, window, direction, ...); ``start_slice`` applies to the
    ``text`` mode only (the visual modes start on the middle labelled slice). Consecutive cases of the same image
    share one engine session, so the slices are encoded once for all their structures and modes. A case whose label
    holds none of its values is skipped (logged).
    """
    from ..engine.tpp_engine import make_propagator

    modes = list(modes)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown evaluation mode {mode!r}; use {', '.join(MODES)}")
    if propagator is None:
        propagator = make_propagator(model, device)
    text_start = segment_kwargs.pop("start_slice", None)
    axis, window = segment_kwargs.get("axis"), segment_kwargs.get("window")
    scores: list[CaseScore] = []
    i = 0
    while i < len(cases):
        group = [cases[i]]
        while i + len(group) < len(cases) and (cases[i + len(group)].image, cases[i + len(group)].reader) == (
                cases[i].image, cases[i].reader):
            group.append(cases[i + len(group)])
        i += len(group)
        volume = (group[0].reader or read_volume)(group[0].image)
        prepared = PreparedVolume(volume, propagator.model.image_size, axis, window)
        session = propagator.start_session(prepared.frame_source())
        labels_by_path: dict[Path, np.ndarray] = {}
        for case in group:
            if case.label not in labels_by_path:
                labels_by_path[case.label] = _read_labels(case)
            labels = labels_by_path[case.label]
            if labels.shape != volume.shape:
                raise ValueError(f"{case.case_id}: the label {case.label} is {labels.shape} (z, y, x), the image "
                                 f"{case.image} {volume.shape}")
            truth = np.isin(labels, case.label_values)
            if not truth.any():
                log.warning("%s: no voxels of %s (label values %s): skipped", case.case_id, case.structure,
                            case.label_values)
                continue
            visual = None
            if any(m != "text" for m in modes):
                geometry = prepared.geometry
                visual = label_prompts(geometry.to_frames(truth), geometry.row_spacing, geometry.col_spacing)
            for mode in modes:
                scores.append(_run_mode(mode, case, visual, volume, truth, labels, propagator, session, prepared,
                                        text_start, segment_kwargs))
    return scores


def _run_mode(mode: str, case: EvalCase, visual: Optional[LabelPrompts], volume, truth: np.ndarray,
              labels: np.ndarray, propagator, session, prepared: PreparedVolume, text_start: Optional[int],
              segment_kwargs: dict) -> CaseScore:
    request, with_text = mode_request(mode, case, visual)
    start = text_start if mode == "text" else visual.slice_index
    encoded = getattr(session, "encode_count", None)
    begin = time.perf_counter()
    result = segment_volume(volume, [request], propagator=propagator,
                            session=session if with_text else _WithoutText(session), prepared=prepared,
                            start_slice=start, **segment_kwargs)
    seconds = time.perf_counter() - begin
    segment = result.segments[0]
    mask = segment.mask
    score = CaseScore(case.case_id, case.structure, case.prompt if with_text else "", dice(mask, truth),
                      iou(mask, truth), hd95(mask, truth, volume.spacing), seconds, mode=mode,
                      start_slice=int(segment.start_slice))
    if request.box_prompts:
        score.box = [int(v) for v in visual.box]
    if request.point_prompts:
        points, point_labels = request.point_prompts[visual.slice_index]
        score.clicks = [[int(p[0]), int(p[1]), int(lab)] for p, lab in zip(points, point_labels)]
    if encoded is not None:
        score.encoded_slices = session.encode_count - encoded
    if case.others:
        score.dice_vs_others = {name: dice(mask, np.isin(labels, values)) for name, values in case.others.items()}
    log.info("%s %s [%s]: Dice %.3f IoU %.3f HD95 %.1f mm", case.case_id, case.structure, mode, score.dice,
             score.iou, score.hd95)
    return score


# --- report ------------------------------------------------------------------------------------------------------


def _modes_in(scores: list[CaseScore]) -> list[str]:
    return list(dict.fromkeys(s.mode for s in scores))


def structure_table(scores: list[CaseScore]) -> tuple[str, dict]:
    """Markdown table (structure rows, mean +- sd Dice / IoU, median HD95) of one mode's scores, and the same as a
    dict."""
    by_structure: dict[str, list[CaseScore]] = {}
    for s in scores:
        by_structure.setdefault(s.structure, []).append(s)
    rows, data = [], {}
    for structure, items in by_structure.items():
        d = np.array([s.dice for s in items]) * 100
        j = np.array([s.iou for s in items]) * 100
        h = np.array([s.hd95 for s in items])
        data[structure] = {"cases": len(items), "dice_mean": float(d.mean()), "dice_sd": float(d.std()),
                           "iou_mean": float(j.mean()), "hd95_median_mm": float(np.median(h))}
        rows.append(f"| {structure} | {len(items)} | {d.mean():.2f} ± {d.std():.2f} | {j.mean():.2f} | "
                    f"{np.median(h):.1f} |")
    table = "| structure | cases | DSC (%) | IoU (%) | HD95 (mm, median) |\n|---|---|---|---|---|\n" + "\n".join(rows)
    selection = selection_table(scores)
    if selection:
        table += "\n\nText selection (mean Dice %, rows: the prompt's structure, columns: the reference it is scored " \
                 "against):\n\n" + selection
    return table, data


def case_table(scores: list[CaseScore]) -> str:
    """One Markdown row per case and mode: start slice, the visual prompts given, DSC / IoU / HD95, seconds."""
    lines = ["| case | structure | mode | start slice | visual prompt (row, col) | DSC (%) | IoU (%) | HD95 (mm) | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in scores:
        visual = []
        if s.box:
            visual.append("box ({}, {})-({}, {})".format(*s.box))
        for row, col, label in s.clicks or []:
            visual.append(f"{'+' if label else '-'}({row}, {col})")
        lines.append(f"| {s.case_id} | {s.structure} | {s.mode} | {s.start_slice} | {' '.join(visual) or '-'} | "
                     f"{100 * s.dice:.2f} | {100 * s.iou:.2f} | {s.hd95:.1f} | {s.seconds:.1f} |")
    return "\n".join(lines)


def summary_table(scores: list[CaseScore]) -> tuple[str, dict]:
    """The report: one per-structure table per mode (in the order the modes were run), then the per-case rows;
    and the per-structure numbers as {mode: {structure: {...}}}."""
    parts, data = [], {}
    for mode in _modes_in(scores):
        table, data[mode] = structure_table([s for s in scores if s.mode == mode])
        parts.append(f"### Mode `{mode}`: {MODE_TITLES.get(mode, mode)}\n\n{table}")
    parts.append("### Per case\n\n" + case_table(scores))
    return "\n\n".join(parts), data


def selection_table(scores: list[CaseScore]) -> str:
    """Prompt x reference-structure Dice matrix over the cases that carry ``dice_vs_others``."""
    rows: dict[str, list[dict[str, float]]] = {}
    for s in scores:
        if s.dice_vs_others is not None:
            rows.setdefault(s.structure, []).append(s.dice_vs_others)
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for items in rows.values() for d in items for k in d))
    lines = ["| prompt \\ reference | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for structure, items in rows.items():
        cells = [f"{100 * np.mean([d[c] for d in items if c in d]):.1f}" for c in columns]
        lines.append(f"| {structure} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(scores: list[CaseScore], out_dir: Path) -> Path:
    """``results.md`` (the tables of :func:`summary_table`) and ``results.json`` ({"modes", "summary": {mode:
    {structure: ...}}, "cases": [...]}) in ``out_dir``; returns the Markdown file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, data = summary_table(scores)
    (out_dir / "results.md").write_text(table + "\n", encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps(
        {"modes": _modes_in(scores), "summary": data, "cases": [asdict(s) for s in scores]}, indent=2,
        default=float), encoding="utf-8")
    return out_dir / "results.md"


# --- data: a folder of image/label pairs, or an nnU-Net / MSD dataset ------------------------------------------------

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_IMAGE_NAME = re.compile(r"^(?P<prefix>.*?)[_\-.]?(image|img)$", re.IGNORECASE)
_LABEL_NAME = re.compile(r"^(?P<prefix>.*?)[_\-.]?(label|labels|mask|seg|segmentation)$", re.IGNORECASE)
_PAIR_FOLDERS = (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs"), ("images", "labels"))


def _stem(path: Path) -> Optional[str]:
    """The name without its volume suffix, or None for a file that is not a volume."""
    lower = path.name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix) and path.is_file():
            return path.name[: -len(suffix)]
    return None


def _volumes(folder: Path) -> dict[str, Path]:
    return {stem: p for p in sorted(folder.iterdir()) if (stem := _stem(p)) is not None}


@dataclass
class Pair:
    case_id: str
    image: Path
    label: Path


def find_pairs(folder: Path, channel: int = 0) -> list[Pair]:
    """Image/label pairs of ``folder``, sorted by case id. Layouts, tried in this order:

    1. ``imagesTr/`` + ``labelsTr/`` (also ``imagesTs/`` + ``labelsTs/``, ``images/`` + ``labels/``): label
       ``CASE.ext`` with image ``CASE_0000.ext`` (nnU-Net v2, channel ``channel``) or ``CASE.ext`` (MSD, plain);
    2. names ending in ``image`` / ``img`` beside names with the same beginning ending in ``label`` / ``mask`` /
       ``seg``, in the folder itself (``CASE_image.nii.gz`` + ``CASE_label.nii.gz``) or in its subfolders
       (``CASE/image.nii.gz`` + ``CASE/label.nii.gz``, ``CASE/CT_image.nii.gz`` + ``CASE/CT_mask.nii.gz``).

    Volumes: NIfTI, NRRD, MHA/MHD. A label without its image is an error; images without labels are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no such folder: {folder}")
    for images_name, labels_name in _PAIR_FOLDERS:
        images, labels = folder / images_name, folder / labels_name
        if images.is_dir() and labels.is_dir():
            image_files = _volumes(images)
            pairs = []
            for case, label in _volumes(labels).items():
                image = image_files.get(f"{case}_{channel:04d}") or image_files.get(case)
                if image is None:
                    raise ValueError(f"{label}: no image {case}_{channel:04d} or {case} in {images}")
                pairs.append(Pair(case, image, label))
            if not pairs:
                raise ValueError(f"{labels} holds no label volumes ({', '.join(VOLUME_SUFFIXES)})")
            return pairs
    pairs = []
    for sub in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        files = _volumes(sub)
        images = {m["prefix"]: p for stem, p in files.items() if (m := _IMAGE_NAME.match(stem))}
        for stem, label in files.items():
            found = _LABEL_NAME.match(stem)
            if not found or found["prefix"] not in images:
                continue
            prefix = found["prefix"]
            parts = ([] if sub == folder else [sub.name]) + ([prefix] if prefix else [])
            pairs.append(Pair("/".join(parts) or sub.name, images[prefix], label))
    if not pairs:
        raise ValueError(f"no image/label pairs in {folder}: use imagesTr/ + labelsTr/, CASE/image.nii.gz + "
                         "CASE/label.nii.gz, or CASE_image.nii.gz + CASE_label.nii.gz")
    return sorted(pairs, key=lambda p: p.case_id)


def read_spec(spec: Union[Path, str, dict]):
    """A prompt spec: the training format of ``datasets.load_prompt_spec`` (``{"labels": {value: structure or
    {"structure", "prompts", "values"}}}``), or a flat ``{value: prompt}`` mapping whose prompt is used as given
    (and names the structure). Returns ``datasets.StructureSpec`` list; the evaluation prompt is the first one."""
    from .datasets import StructureSpec, load_prompt_spec

    if not isinstance(spec, dict):
        path = Path(spec)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
    if isinstance(spec, dict) and "labels" not in spec and spec and all(
            str(k).strip().lstrip("-").isdigit() and isinstance(v, str) for k, v in spec.items()):
        out = [StructureSpec(prompt.strip(), (int(value),), [prompt.strip()])
               for value, prompt in spec.items() if int(value) != 0]
        if not out or any(not s.name for s in out):
            raise ValueError("a prompt spec maps label values to non-empty prompts, e.g. {\"1\": \"the liver\"}")
        return out
    return load_prompt_spec(spec)


def folder_cases(folder: Path, spec: Union[Path, str, dict, None] = None, structures: Optional[Sequence[str]] = None,
                 channel: int = 0) -> list[EvalCase]:
    """Evaluation cases of a folder of image/label pairs (:func:`find_pairs`) or an nnU-Net v2 / MSD dataset
    (``dataset.json`` + ``imagesTr`` + ``labelsTr``), one per pair and structure of the prompt ``spec``
    (:func:`read_spec`); without a spec, the structures are the label names of ``dataset.json`` with their
    prompt-library prompts. ``structures`` keeps only the named ones. Labels without a structure's voxels are
    skipped when evaluated."""
    from .datasets import _label_names, load_prompt_spec

    folder = Path(folder)
    meta_path = folder / "dataset.json"
    if spec is not None:
        specs = read_spec(spec)
    elif meta_path.is_file():
        names = _label_names(json.loads(meta_path.read_text(encoding="utf-8")))
        specs = load_prompt_spec({"labels": {v: n for v, n in names.items() if int(v) != 0}})
    else:
        raise ValueError(f"{folder} has no dataset.json: give a prompt spec (JSON: label value -> prompt)")
    if structures:
        unknown = sorted(set(structures) - {s.name for s in specs})
        if unknown:
            raise ValueError(f"no structure {unknown} in the prompt spec; it has {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in structures]
    cases = []
    for pair in find_pairs(folder, channel):
        for s in specs:
            cases.append(EvalCase(pair.case_id, s.name, pair.image, pair.label, s.values, s.prompts[0]))
    return cases
