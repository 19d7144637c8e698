"""CLI subcommands for training and evaluation on the ../shared/data layout (registered by cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


SHARED_EVAL_STRUCTURES = ("left atrium", "sarcoma", "necrosis", "edema", "enhancing tumour", "whole tumour",
                          "liver", "spleen", "right kidney", "left kidney", "aorta", "stomach", "lesion")
TOTALSEG_CT_ORGANS = {"liver": 5, "spleen": 1, "right kidney": 2, "left kidney": 3, "aorta": 52, "stomach": 6}


def _npz_gts(path: Path):
    import numpy as np

    with np.load(path) as data:
        return (np.asarray(data["gts"]) > 0).astype(np.uint8)


def _ids(root: Path, dataset: str, split: str, all_ids: list[str]) -> list[str]:
    """The ``split`` of a shared dataset when ``default_splits`` defines one; otherwise every case (logged: such a
    dataset may also be in the training data)."""
    from .data import default_splits

    splits = default_splits(root).get(dataset)
    if splits is not None and split in splits:
        return [i for i in splits[split] if i in all_ids]
    log.warning("%s has no %s split: evaluating all its %d case(s), which training may also use", dataset, split,
                len(all_ids))
    return all_ids


def shared_eval_cases(root: Path, split: str, structures: list[str]):
    """Evaluation cases of ../shared/data: LA2018, sarcoma and BraTS by their fixed split; the TotalSegmentator CT
    organs (liver, spleen, kidneys, aorta, stomach; labels made by a model) and the RECIST lesions by their split
    when ``default_splits`` has one, else all of their cases."""
    from functools import partial

    from ..io.volumes import read_volume
    from .data import BRATS_LABELS, PROMPTS, brats_volume, default_splits
    from .datasets import structure_prompts
    from .evaluate import EvalCase

    splits = default_splits(root)
    cases = []
    if "left atrium" in structures:
        for case_id in splits["la2018"][split]:
            folder = root / "la2018" / "train" / case_id
            cases.append(EvalCase(f"la2018/{case_id}", "left atrium", folder / "image.nii.gz",
                                  folder / "label.nii.gz", (1,), PROMPTS["left atrium"][0]))
    if "sarcoma" in structures:
        for case_id in splits["sts_sarcoma"][split]:
            folder = root / "sts_sarcoma" / case_id
            cases.append(EvalCase(f"sts/{case_id}", "sarcoma", folder / "CT_image.nii.gz", folder / "CT_mask.nii.gz",
                                  (1,), PROMPTS["sarcoma"][0]))
    if any(s in BRATS_LABELS for s in structures):
        for case_id in splits["brats2013"][split]:
            folder = root / "brats2013" / case_id
            for structure in (s for s in structures if s in BRATS_LABELS):
                cases.append(EvalCase(f"brats2013/{case_id}", structure, folder, folder / "label.nii.gz",
                                      BRATS_LABELS[structure], PROMPTS[structure][0], reader=brats_volume,
                                      others=BRATS_LABELS))
    organs = [s for s in structures if s in TOTALSEG_CT_ORGANS]
    if organs:
        base = root / "totalseg_small"
        for case_id in _ids(root, "totalseg_small", split, ["example_ct_sm"]):
            for organ in organs:  # one image: its organs share one engine session
                cases.append(EvalCase(f"totalseg_small/{case_id}", organ, base / f"{case_id}.nii.gz",
                                      base / "example_seg.nii.gz", (TOTALSEG_CT_ORGANS[organ],),
                                      structure_prompts(organ)[0], reader=partial(read_volume, modality="CT")))
    if "lesion" in structures:
        files = {p.stem: p for p in sorted((root / "recist_ct").glob("*.npz"))}
        for case_id in _ids(root, "recist_ct", split, list(files)):
            # uint8 already windowed: percentile scaling as in training (datasets.recist_volumes), no CT window
            cases.append(EvalCase(f"recist_ct/{case_id}", "lesion", files[case_id], files[case_id], (1,),
                                  structure_prompts("lesion")[0], reader=partial(read_volume, modality="unknown"),
                                  label_reader=_npz_gts))
    return cases


def cmd_evaluate(args) -> int:
    from ..cli import UserError, quiet_loading
    from ..engine.device import DeviceError, pick_device
    from ..engine.tpp_engine import make_propagator
    from ..modeling.checkpoint import CheckpointError
    from ..registry import RegistryError, load_model
    from .evaluate import evaluate_cases, folder_cases, parse_modes, write_report

    try:
        modes = parse_modes(args.mode)
        if args.folder:
            cases = folder_cases(Path(args.folder), args.spec, args.structures)
        else:
            if args.spec:
                raise ValueError("--spec goes with --folder (the shared data has its own prompts)")
            if not Path(args.data).is_dir():
                raise ValueError(f"--data {args.data}: no such folder (the shared data: la2018/, sts_sarcoma/, "
                                 "brats2013/)")
            unknown = sorted(set(args.structures or []) - set(SHARED_EVAL_STRUCTURES))
            if unknown:
                raise ValueError(f"unknown --structure {unknown} for the shared data; use {SHARED_EVAL_STRUCTURES}")
            cases = shared_eval_cases(Path(args.data), args.split, args.structures or ["left atrium", "sarcoma"])
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.limit:
        cases = cases[: args.limit]
    try:
        device = str(pick_device(args.device or "cpu"))
        quiet_loading()
        model = load_model(args.model, device=device)
        # the TPP -> SAM-2 pipeline when a first-mask model is given: its start-slice mask prompts --model's propagation
        first = load_model(args.first_mask_model, device=device) if args.first_mask_model else None
    except (DeviceError, RegistryError, CheckpointError) as exc:
        raise UserError(str(exc)) from exc
    propagator = make_propagator(model, device, first_mask_model=first, precision=args.precision)
    scores = evaluate_cases(None, cases, modes=modes, propagator=propagator)
    report = write_report(scores, Path(args.out))
    print(report.read_text(encoding="utf-8"))
    return 0


def _training_volumes(spec: dict, root: Path, base: Path):
    """Frame volumes named by a training config: ``packed`` files (paths relative to the config), ``datasets``
    read from the shared data folder (train split), ``shared_adapters`` (whole folders of the shared data, e.g.
    ``totalseg_small``), ``nnunet`` folders (``{"folder": ..., "spec": optional prompt spec}``) and
    ``sequences`` (``{"frames": ..., "masks": ..., "structure": ...}``), each repeated ``repeat[prefix]`` times
    (the prefix of the case id, e.g. ``la2018``)."""
    from .data import DATASETS, default_splits, load_pack
    from .datasets import SHARED_ADAPTERS, nnunet_volumes, sequence_volume

    volumes = []
    for name in spec.get("packed", []):
        volumes += load_pack(base / name)
    for name in spec.get("shared_adapters", []):
        volumes += SHARED_ADAPTERS[name](root)
    for item in spec.get("nnunet", []):
        volumes += nnunet_volumes(base / item["folder"], base / item["spec"] if item.get("spec") else None)
    for item in spec.get("sequences", []):
        volumes.append(sequence_volume(base / item["frames"], base / item["masks"], item["structure"],
                                       item.get("prompts")))
    others = ("packed", "shared_adapters", "nnunet", "sequences")
    datasets = spec.get("datasets", [] if any(spec.get(k) for k in others) else ["la2018", "sts_sarcoma"])
    if datasets:
        splits = default_splits(root)
        for name in datasets:
            ids = splits[name]["train"][: spec.get(f"{name}_cases")]
            volumes += DATASETS[name](root, ids)
    margin = spec.get("crop_margin")
    if margin is not None:
        volumes = [v.cropped(int(margin)) for v in volumes]
    repeat = spec.get("repeat", {})
    return [v for v in volumes for _ in range(int(repeat.get(v.case_id.split("/")[0], 1)))]


def _init_distributed(device: str | None) -> tuple[int, str | None]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA (one GPU per local rank),
    gloo on CPU. Returns (rank, device)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, device
    import torch
    import torch.distributed as dist

    cuda = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), device or "cpu"


def build_training_model(spec: dict, base: Path, device: str | None):
    """The model a training config names, and its input size. ``"model"`` is a TGSAM-2 preset name (``"small"``,
    ``"medium"``, ...) or ``{"type": "tgsam2" | "tpp", "preset": NAME, ...}`` where the other keys override fields
    of the preset (TPP: ``TPPConfig`` fields, e.g. ``"encoder_layers"`` or ``"text"``); ``"image_size"`` overrides
    the input size, ``"init"`` (relative to the config) starts from a checkpoint's weights, ``"text_features"``
    uses cached text features instead of the text encoder."""
    from ..modeling.build import build_model
    from ..modeling.config import get_config

    model_spec = spec.get("model", "small")
    if isinstance(model_spec, str):
        model_spec = {"type": "tgsam2", "preset": model_spec}
    kind = model_spec.get("type", "tgsam2")
    overrides = {k: v for k, v in model_spec.items() if k not in ("type", "preset")}
    text_encoder = None
    if spec.get("text_features"):
        from ..modeling.text_encoder import CachedTextEncoder

        text_encoder = CachedTextEncoder.load(base / spec["text_features"])
    init = base / spec["init"] if spec.get("init") else None  # start from these weights
    if kind == "tpp":
        from ..modeling.tpp import build_tpp, tpp_config

        if spec.get("image_size"):
            overrides["image_size"] = int(spec["image_size"])
        cfg = tpp_config(model_spec.get("preset", "small"), **overrides)
        model = build_tpp(cfg, text_encoder=text_encoder, device=device or "cpu", checkpoint=init)
        return model, cfg.image_size
    if kind != "tgsam2":
        raise ValueError(f"unknown model type {kind!r} in the training config; use 'tgsam2' or 'tpp'")
    if overrides:
        raise ValueError(f"a TGSAM-2 model entry takes only 'type' and 'preset', not {sorted(overrides)}")
    model_cfg = get_config(model_spec.get("preset", "small"), image_size=spec.get("image_size"))
    model = build_model(model_cfg, checkpoint=init, device=device or "cpu", text_encoder=text_encoder)
    return model, model_cfg.image_size


def read_training_config(path: Path) -> dict:
    """A training config (JSON), checked before any data is read: an unknown top-level key (a misspelt
    ``"repeat"``, say) or ``train`` entry raises ValueError instead of being ignored for a whole run."""
    from .data import DATASETS
    from .trainer import TrainConfig

    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    known = {"model", "init", "packed", "text_features", "repeat", "train", "datasets", "data", "crop_margin",
             "image_size", "shared_adapters", "nnunet", "sequences", "features", "feature_weights",
             *(f"{name}_cases" for name in DATASETS)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"{Path(path).name}: unknown training config key(s) {unknown}; known: {sorted(known)}")
    try:
        TrainConfig(**spec.get("train", {}))
    except TypeError as exc:
        raise ValueError(f"{Path(path).name}: bad 'train' entry: {exc}") from exc
    return spec


def cmd_train(args) -> int:
    import torch

    rank, args.device = _init_distributed(args.device)
    from ..engine.preprocess import BRATS_CHANNELS, TRAINING_INPUTS, InputSpec
    from ..modeling.tpp import TPP
    from .data import ClipSampler
    from .trainer import TrainConfig, Trainer

    config_path = Path(args.config)
    spec = read_training_config(config_path)
    root = Path(spec.get("data", args.data))
    model, image_size = build_training_model(spec, config_path.parent, args.device)
    if spec.get("features"):
        return _train_on_features(spec, config_path.parent, model, args, rank)
    volumes = _training_volumes(spec, root, config_path.parent)
    # what the data is normalised with, and the BraTS composite when BraTS is among it; saved in every checkpoint
    brats = any(v.case_id.startswith("brats2013/") for v in volumes)
    model.inputs = InputSpec(TRAINING_INPUTS.intensity, (BRATS_CHANNELS,) if brats else ())
    device = next(model.parameters()).device
    cases = [c for v in volumes for c in v.to_cases(image_size)]
    if device.type == "cuda":  # clips are cut on the GPU
        shared: dict[int, torch.Tensor] = {}
        for c in cases:
            c.frames = shared.setdefault(id(c.frames), c.frames.to(device))
            c.masks = c.masks.to(device)
    log.info("training %s on %d structure-volumes from %d volumes", type(model).__name__, len(cases), len(volumes))
    train_spec = dict(spec.get("train", {}))
    if isinstance(model, TPP):
        train_spec.setdefault("prompts_per_clip", model.config.num_prompts)
    config = TrainConfig(**train_spec)
    sampler = ClipSampler(cases, config.clip_length, p_object=config.p_object, seed=config.seed + rank,
                          p_spatial=config.augment_spatial, prompts_per_clip=config.prompts_per_clip)
    trainer = Trainer(model, sampler, config, Path(args.out))
    trainer.resume()
    trainer.fit(progress_bar=sys.stderr.isatty())
    if trainer.world > 1:
        torch.distributed.destroy_process_group()
    if rank == 0:
        print(f"checkpoint: {Path(args.out) / 'last'}")
    return 0


def _train_on_features(spec: dict, base: Path, model, args, rank: int) -> int:
    """Training on cached encoder features (``"features"``: cache files or glob patterns relative to the config;
    ``"feature_weights"``: {case-id prefix: sampling weight}, e.g. ``{"la2018/": 1.0, "kvasir/": 3.0}``)."""
    import glob

    import torch

    from ..engine.preprocess import BRATS_CHANNELS, TRAINING_INPUTS, InputSpec
    from .features import CachedClipForward, FeatureClipSampler, encoder_id, load_cache
    from .trainer import TrainConfig, Trainer

    paths = sorted({Path(p) for pattern in spec["features"] for p in glob.glob(str(base / pattern))})
    if not paths:
        raise ValueError(f"no feature cache matches {spec['features']} under {base}")
    cases = [c for p in paths for c in load_cache(p, expect_encoder=encoder_id(model))]
    # what the cached frames were normalised with, and the BraTS composite when BraTS is among them; saved
    brats = any(c.case_id.startswith("brats2013/") for c in cases)
    model.inputs = InputSpec(TRAINING_INPUTS.intensity, (BRATS_CHANNELS,) if brats else ())
    weights = []
    for case in cases:
        w = [v for k, v in spec.get("feature_weights", {}).items() if case.case_id.startswith(k)]
        weights.append(float(w[0]) if w else 1.0)
    config = TrainConfig(**spec.get("train", {}))
    log.info("training on %d cached structure-volumes from %d files", len(cases), len(paths))
    sampler = FeatureClipSampler(cases, config.clip_length, p_object=config.p_object, seed=config.seed + rank,
                                 p_box=config.p_box, p_clicks=config.p_clicks, p_no_text=config.p_no_text,
                                 weights=weights)
    trainer = Trainer(model, sampler, config, Path(args.out), objective=CachedClipForward(model))
    if not spec.get("init") and model.config.use_text_prompt:
        # a fresh model: open the decoder's text gate (0 keeps an untrained model exactly SAM-2; from 0, Adam's
        # lr-sized steps would take hundreds of steps to let the text tokens be read at all)
        with torch.no_grad():
            model.text_prompt.gate.fill_(1.0)
    trainer.resume()
    trainer.fit(progress_bar=sys.stderr.isatty())
    if rank == 0:
        print(f"checkpoint: {Path(args.out) / 'last'}")
    return 0


def cmd_pack(args) -> int:
    """Pack training volumes (and the text features of every training prompt) for a machine without the data
    or the text encoder."""
    from .data import DATASETS, PROMPTS, default_splits, save_pack

    root = Path(args.data)
    splits = default_splits(root)
    volumes = []
    for name in args.dataset:
        ids = splits[name][args.split][args.offset:][: args.limit]
        volumes += [v.cropped(args.margin) for v in DATASETS[name](root, ids)]
    path = save_pack(volumes, Path(args.out))
    print(f"{path}: {len(volumes)} volumes, {path.stat().st_size / 1e6:.1f} MB")
    if args.text_features:
        from ..modeling.config import TextEncoderConfig
        from ..modeling.text_encoder import TextEncoder, export_text_features
        from ..prompts import prompt_set

        # every training variant, and the library descriptions TPP adds to a single structure prompt
        prompts = [q for variants in PROMPTS.values() for p in variants for q in prompt_set(p, 4)]
        print(export_text_features(TextEncoder(TextEncoderConfig()), prompts, Path(args.text_features)))
    return 0


def cmd_features(args) -> int:
    """Encode training volumes once with a frozen-encoder model (LiteMedSAM) into feature caches, one file per
    volume; files that already exist are kept (the command resumes)."""
    from ..modeling.build import build_model
    from .data import DATASETS, default_splits
    from .datasets import SHARED_ADAPTERS
    from .features import cache_volume

    root, out = Path(args.data), Path(args.out)
    model = build_model(args.model, device=args.device or "cpu")
    if model.config.backbone != "litemedsam":
        raise SystemExit("feature caches are for a frozen pretrained encoder (a litemedsam model)")
    for name in args.dataset:
        if name in DATASETS:
            ids = default_splits(root)[name][args.split][args.offset:][: args.limit]
            volumes = DATASETS[name](root, ids)
        else:
            volumes = SHARED_ADAPTERS[name](root)
            keep = set(args.case or [])
            volumes = [v for v in volumes if not keep or v.case_id in keep][args.offset:][: args.limit]
        for volume in volumes:
            path = out / (volume.case_id.replace("/", "__") + ".safetensors")
            if path.is_file():
                continue
            if not volume.masks:
                print(f"{volume.case_id}: no labelled structure, skipped", flush=True)
                continue
            volume = volume.cropped(args.margin) if args.margin is not None else volume
            cache_volume(model, volume, path, z_stride=args.z_stride, batch=args.batch)
            print(f"{path}: {len(volume.frames[::args.z_stride])} frames, {len(volume.masks)} structures", flush=True)
    return 0


def cmd_corrections(args) -> int:
    """Corrected segmentations saved from Slicer -> a training pack (then ``"packed": [...]`` in a config)."""
    from .corrections import corrections_volumes
    from .data import save_pack

    volumes = corrections_volumes(Path(args.folder), args.axis)
    if args.margin is not None:
        volumes = [v.cropped(args.margin) for v in volumes]
    path = save_pack(volumes, Path(args.out))
    for v in volumes:
        print(f"{v.case_id}: " + ", ".join(f"{name} ({v.prompts[name][0]!r})" for name in v.masks))
    print(f"{path}: {len(volumes)} volumes, {path.stat().st_size / 1e6:.1f} MB")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from ..engine.device import PRECISIONS

    co = sub.add_parser("corrections", help="turn corrected .seg.nrrd files saved from Slicer into a training pack")
    co.add_argument("folder", help="folder of NAME.seg.nrrd files, each beside its image NAME.nrrd/.nii.gz")
    co.add_argument("-o", "--out", required=True, help="the .npz pack to write")
    co.add_argument("--axis", help="slicing axis (default: the acquisition axis)")
    co.add_argument("--margin", type=int, help="keep only slices within this many of a segment")
    co.set_defaults(func=cmd_corrections)

    ev = sub.add_parser(
        "evaluate", help="Dice / IoU / HD95 per case and a per-structure table per prompt mode",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Segment labelled volumes and score them against their labels: one Table-1 style table per "
        "prompt mode, and per-case rows (OUT/results.md, OUT/results.json, also printed).",
        epilog="""data:
  the shared data (default): --data ../shared/data --split val [--structure NAME ...]
      left atrium, sarcoma, BraTS sub-regions by their fixed split; TotalSegmentator CT organs (liver, spleen,
      right kidney, left kidney, aorta, stomach) and RECIST lesions (lesion): all their cases (no split yet)
  a folder: --folder DIR [--spec SPEC.json]
      DIR/imagesTr + DIR/labelsTr (nnU-Net v2 CASE_0000 images, or MSD / plain CASE images), or
      CASE_image.nii.gz + CASE_label.nii.gz (also _img; _mask, _seg), or CASE/image.nii.gz + CASE/label.nii.gz;
      NIfTI, NRRD, MHA. SPEC: {"1": "the liver", "2": "the spleen"} (label value -> prompt), or the training
      format {"labels": {"1": {"structure": "liver", "prompts": [...]}}} (first prompt); optional when DIR has
      an nnU-Net/MSD dataset.json (its label names, with the prompt library's prompts)

modes (--mode, repeatable or a comma list; default text):
  text         the text prompt alone; the start slice is the model's most confident one
  box          the label's bounding box on its middle labelled slice (the start slice), no text
  box+text     that box and the text
  clicks       a positive click at the label's point farthest from its border and a negative click at the
               background point farthest from it within its box grown by 1/4 on each side, on that slice; no text
  clicks+text  those clicks and the text""")
    ev.add_argument("--model", help="registered model name or checkpoint folder")
    ev.add_argument("--data", default="../shared/data", help="the shared data folder")
    ev.add_argument("--split", default="val", choices=("train", "val"), help="shared data split (default: val)")
    ev.add_argument("--folder", help="a folder of image/label pairs or an nnU-Net/MSD dataset (instead of --data)")
    ev.add_argument("--spec", help="JSON/YAML prompt spec for --folder: label value -> prompt")
    ev.add_argument("--structure", dest="structures", action="append", default=None, metavar="NAME",
                    help="evaluate only this structure (repeatable; shared data default: left atrium, sarcoma)")
    ev.add_argument("--mode", action="append", metavar="MODE",
                    help="text, box, box+text, clicks, clicks+text (repeatable or comma list; default text)")
    ev.add_argument("--limit", type=int, help="evaluate at most this many cases (case-structure pairs)")
    ev.add_argument("--first-mask-model", help="a TPP whose start-slice mask prompts --model (TPP -> SAM-2)")
    ev.add_argument("--out", default="evaluation")
    ev.add_argument("--device")
    ev.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="auto: bf16 on CUDA, float32 elsewhere")
    ev.set_defaults(func=cmd_evaluate)

    pk = sub.add_parser("pack", help="pack training volumes of the shared data into one compact .npz")
    pk.add_argument("--data", default="../shared/data")
    pk.add_argument("--dataset", action="append", required=True, choices=("la2018", "sts_sarcoma", "brats2013"))
    pk.add_argument("--split", default="train", choices=("train", "val"))
    pk.add_argument("--limit", type=int, help="at most this many volumes per dataset")
    pk.add_argument("--offset", type=int, default=0, help="skip this many volumes of each dataset first")
    pk.add_argument("--margin", type=int, default=8, help="keep slices within this many of the structures")
    pk.add_argument("--text-features", help="also export the training prompts' text features to this file")
    pk.add_argument("-o", "--out", required=True)
    pk.set_defaults(func=cmd_pack)

    fe = sub.add_parser("features", help="cache a frozen encoder's features of training volumes (litemedsam)")
    fe.add_argument("--model", default="litemedsam", help="preset name or checkpoint folder")
    fe.add_argument("--data", default="../shared/data")
    fe.add_argument("--dataset", action="append", required=True,
                    choices=("la2018", "sts_sarcoma", "brats2013", "totalseg_small", "recist_ct", "kvasir_polyp_2d",
                             "ct_organs_2d"))
    fe.add_argument("--split", default="train", choices=("train", "val"))
    fe.add_argument("--case", action="append", help="only these case ids (whole-folder datasets)")
    fe.add_argument("--limit", type=int)
    fe.add_argument("--offset", type=int, default=0)
    fe.add_argument("--margin", type=int, help="keep slices within this many of the structures")
    fe.add_argument("--z-stride", type=int, default=1, help="cache every N-th slice")
    fe.add_argument("--batch", type=int, default=4)
    fe.add_argument("--device")
    fe.add_argument("-o", "--out", required=True, help="folder of .safetensors caches")
    fe.set_defaults(func=cmd_features)

    tr = sub.add_parser("train", help="train TGSAM-2 or TPP from a JSON config (resumes from OUT/last)")
    tr.add_argument("config")
    tr.add_argument("--data", default="../shared/data")
    tr.add_argument("--out", default="runs/tgsam2")
    tr.add_argument("--device")
    tr.set_defaults(func=cmd_train)
