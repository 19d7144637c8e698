"""What a model knows: the training record of a checkpoint, prompt familiarity, untrained text modules, and the
presence rule that turns a run whose object score never says "here" into an empty segment.

A checkpoint's ``config.json`` may hold, beside ``config`` and ``metadata``:

* ``training``: what it was trained on, ``{"structures": [{"name", "modalities", "prompts", "datasets"}, ...]}``
  (written by the trainer; see :func:`training_record`);
* ``calibration``: ``{"familiarity": {"known": cos, "related": cos, ...}, "presence": {"threshold": logit,
  "min_slices": n, ...}}`` (written by ``scripts/calibrate_familiarity.py`` and ``scripts/calibrate_presence.py``).

Reading them needs no torch (``read_checkpoint_info``); the familiarity check embeds prompts with the checkpoint's
own text encoder (torch, imported lazily).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

log = logging.getLogger(__name__)

KNOWN, RELATED, UNKNOWN, TEXT_IGNORED, NO_RECORD = "known", "related", "unknown", "text ignored", "no record"


# ------------------------------------------------------------------------------------------------ checkpoint info
def read_checkpoint_info(folder: Union[str, Path]) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict ({} when there is none or it is not JSON). No torch."""
    path = Path(folder)
    path = path / "config.json" if path.is_dir() else path.with_name("config.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_checkpoint_calibration(folder: Path, key: str, values: dict[str, Any]) -> Path:
    """Set ``calibration[key]`` in ``folder/config.json`` and refresh ``folder/SHA256SUMS`` when it exists."""
    return update_checkpoint_config(folder, lambda info: info.setdefault("calibration", {}).__setitem__(key, values))


def update_checkpoint_config(folder: Path, change) -> Path:
    """Apply ``change(info)`` to ``folder/config.json`` and rewrite the checksum of ``config.json`` in
    ``folder/SHA256SUMS`` (the registry verifies bundled models against it)."""
    from .registry import sha256

    folder = Path(folder)
    path = folder / "config.json"
    info = json.loads(path.read_text(encoding="utf-8"))
    change(info)
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    sums = folder / "SHA256SUMS"
    if sums.is_file():
        lines = []
        for line in sums.read_text(encoding="utf-8").splitlines():
            digest, name = line.split()
            lines.append(f"{sha256(folder / name) if name == 'config.json' else digest}  {name}")
        sums.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ training record
@dataclass(frozen=True)
class TrainedStructure:
    name: str
    prompts: tuple[str, ...]
    modalities: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "modalities": list(self.modalities), "datasets": list(self.datasets),
                "prompts": list(self.prompts)}


@dataclass(frozen=True)
class TrainingRecord:
    """What a checkpoint was trained on (``config.json`` key ``training``)."""

    structures: tuple[TrainedStructure, ...]
    note: str = ""

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for s in self.structures for m in s.modalities))

    @property
    def prompts(self) -> list[tuple[str, str]]:
        """(structure, prompt) for every training prompt."""
        return [(s.name, p) for s in self.structures for p in s.prompts]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"structures": [s.to_dict() for s in self.structures],
                               "modalities": list(self.modalities)}
        if self.note:
            out["note"] = self.note
        return out

    def merged(self, earlier: Optional[TrainingRecord]) -> TrainingRecord:
        """This record plus what ``earlier`` (the initial weights' record) holds: structures united by name,
        prompts, modalities and datasets by value."""
        if earlier is None:
            return self
        by_name = {s.name: s for s in earlier.structures}
        for s in self.structures:
            old = by_name.get(s.name)
            by_name[s.name] = s if old is None else TrainedStructure(
                s.name, tuple(dict.fromkeys((*old.prompts, *s.prompts))),
                tuple(dict.fromkeys((*old.modalities, *s.modalities))),
                tuple(dict.fromkeys((*old.datasets, *s.datasets))))
        return TrainingRecord(tuple(by_name.values()), self.note or earlier.note)

    @classmethod
    def from_dict(cls, data: Optional[dict[str, Any]]) -> Optional[TrainingRecord]:
        if not data or not data.get("structures"):
            return None
        structures = tuple(TrainedStructure(s["name"], tuple(s.get("prompts", ())), tuple(s.get("modalities", ())),
                                            tuple(s.get("datasets", ()))) for s in data["structures"])
        return cls(structures, data.get("note", ""))

    def summary(self) -> str:
        """One line: structures (modalities)."""
        return "; ".join(f"{s.name} ({', '.join(s.modalities) or 'modality not recorded'})" for s in self.structures)


# training datasets -> the modality their images are, by the case-id prefix of ``FrameVolume.case_id``
DATASET_MODALITIES = {"la2018": "MR (LGE)", "sts": "CT", "brats2013": "MR (FLAIR + T1c)", "totalseg": "CT",
                      "totalseg_small": "CT and MR", "recist_ct": "CT", "kvasir": "endoscopy (RGB)",
                      "ct_organs_2d": "CT", "corrections": "as corrected in Slicer"}


def training_record(cases: Iterable[Any]) -> TrainingRecord:
    """The record of a training run from its cases (objects with ``case_id``, ``structure`` and ``prompts``, e.g.
    ``training.data.Case``): every structure with the prompt variants it was trained with, the datasets (case-id
    prefixes) it came from and their modalities."""
    names: dict[str, dict[str, dict]] = {}
    for case in cases:
        entry = names.setdefault(case.structure, {"prompts": {}, "datasets": {}})
        entry["prompts"].update(dict.fromkeys(case.prompts))
        entry["datasets"][str(case.case_id).split("/")[0]] = None
    structures = []
    for name, entry in names.items():
        datasets = tuple(entry["datasets"])
        modalities = tuple(dict.fromkeys(DATASET_MODALITIES.get(d, "not recorded") for d in datasets))
        structures.append(TrainedStructure(name, tuple(entry["prompts"]), modalities, datasets))
    return TrainingRecord(tuple(structures))


def record_of(model_or_folder: Any) -> Optional[TrainingRecord]:
    """The training record of a built model (``model.checkpoint_info``) or a checkpoint folder."""
    return TrainingRecord.from_dict(_info(model_or_folder).get("training"))


def _info(model_or_folder: Any) -> dict[str, Any]:
    if model_or_folder is None:
        return {}
    if isinstance(model_or_folder, (str, Path)):
        return read_checkpoint_info(model_or_folder)
    return getattr(model_or_folder, "checkpoint_info", None) or {}


# ------------------------------------------------------------------------------------------------ presence
@dataclass(frozen=True)
class PresenceRule:
    """A run is *absent* when fewer than ``min_slices`` of the slices it reached have an object-score logit above
    ``threshold``. The default is the calibrated value of the bundled ``tgsam2-medium`` (see ``calibration`` in its
    config.json); a checkpoint's own ``calibration.presence`` overrides it."""

    threshold: float = 0.0
    min_slices: int = 1

    def absent(self, scores: np.ndarray) -> bool:
        """``scores``: (N,) object-score logits; -inf marks slices never reached (ignored)."""
        scores = np.asarray(scores, np.float64)
        return int(np.count_nonzero(np.isfinite(scores) & (scores > self.threshold))) < self.min_slices

    def message(self, name: str, scores: np.ndarray) -> str:
        scores = np.asarray(scores, np.float64)
        reached = scores[np.isfinite(scores)]
        best = f"{reached.max():.1f}" if reached.size else "none"
        return (f"{name}: not found in this volume (object score above {self.threshold:g} on "
                f"{int(np.count_nonzero(reached > self.threshold))} of {reached.size} slices, best {best}); the "
                f"segment is left empty. If it is there, add a box or points on one slice.")

    @classmethod
    def for_model(cls, model_or_folder: Any) -> PresenceRule:
        values = _info(model_or_folder).get("calibration", {}).get("presence", {})
        default = cls()
        return cls(float(values.get("threshold", default.threshold)), int(values.get("min_slices", default.min_slices)))


# ------------------------------------------------------------------------------------------------ untrained text
# the parameters through which text reaches a TGSAM-2's masks; all start at exactly zero (``modeling/tgsam2.py``)
_TEXT_OUTPUT_KEYS = ("text_prompt.gate", "tcvp.out.", "tcvp.proj1.", "tcvp.proj2.")


def _is_text_output_key(key: str) -> bool:
    return key.startswith(_TEXT_OUTPUT_KEYS) or ".tg_text." in key or ".tg_concat." in key


def text_ignored(model_or_path: Any) -> bool:
    """True when a model's masks cannot depend on the text: an official SAM-2 ``.pt`` (its text adapters keep their
    zero initialisation), or a TGSAM-2 whose text gate and text output projections are all exactly zero (or whose
    text modules are switched off). TPP always reads its prompts. A path is read without torch (safetensors as
    numpy)."""
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if path.suffix == ".pt":
            return True
        info = read_checkpoint_info(path)
        if info.get("format") != "textpromptseg-tgsam2":
            return False
        cfg = info.get("config", {})
        if not any(cfg.get(k, True) for k in ("use_text_prompt", "use_tcvp", "use_ttme")):
            return True
        from safetensors import SafetensorError, safe_open

        weights = path / "model.safetensors" if path.is_dir() else path
        try:
            with safe_open(str(weights), framework="numpy") as fh:
                keys = [k for k in fh.keys() if _is_text_output_key(k)]
                return not any(np.any(fh.get_tensor(k) != 0) for k in keys)
        except (OSError, ValueError, SafetensorError):  # missing or corrupt: the model loader says so
            return False
    if getattr(model_or_path, "checkpoint_format", "textpromptseg-tgsam2") != "textpromptseg-tgsam2":
        return False  # TPP
    cfg = getattr(model_or_path, "config", None)
    if cfg is not None and not any(getattr(cfg, k, True) for k in ("use_text_prompt", "use_tcvp", "use_ttme")):
        return True
    values = [v for k, v in model_or_path.state_dict().items() if _is_text_output_key(k)]
    return not any(bool((v != 0).any()) for v in values)


# ------------------------------------------------------------------------------------------------ familiarity
@dataclass(frozen=True)
class FamiliarityThresholds:
    """Cosine similarity (mean-pooled sentence embeddings of the checkpoint's text encoder) to the nearest training
    prompt at or above which a prompt is *known*, or *related*; below ``related`` it is *unknown*. The defaults are
    those calibrated for the bundled ``tgsam2-medium`` (``scripts/calibrate_familiarity.py``); a checkpoint's
    ``calibration.familiarity`` overrides them."""

    known: float = 0.656
    related: float = 0.524
    spelling: float = 0.85  # difflib ratio to a training prompt or structure name that counts as a misspelling

    @classmethod
    def for_model(cls, model_or_folder: Any) -> FamiliarityThresholds:
        values = _info(model_or_folder).get("calibration", {}).get("familiarity", {})
        default = cls()
        return cls(float(values.get("known", default.known)), float(values.get("related", default.related)),
                   float(values.get("spelling", default.spelling)))


@dataclass(frozen=True)
class Familiarity:
    """How a prompt relates to what the model was trained on.

    level: "known", "related", "unknown", "text ignored" (the model's text modules are untrained) or "no record"
    (the checkpoint does not say what it was trained on). structure: the nearest trained structure; similarity:
    cosine to the nearest training prompt (``nearest_prompt``); how: what decided the level; library: the prompt
    library's reading of the prompt (``prompts.describe``)."""

    prompt: str
    level: str
    structure: Optional[str] = None
    similarity: float = float("nan")
    nearest_prompt: str = ""
    how: str = ""
    library: str = ""

    @property
    def needs_visual_prompt(self) -> bool:
        return self.level in (UNKNOWN, TEXT_IGNORED)

    def describe(self) -> str:
        """One line for the panel and the CLI."""
        if self.level == TEXT_IGNORED:
            return "text ignored: this model's text modules are untrained; add a box or points"
        if self.level == NO_RECORD:
            return "familiarity not known: the checkpoint does not record what it was trained on"
        sim = f"similarity {self.similarity:.2f}" if np.isfinite(self.similarity) else ""
        detail = ", ".join(x for x in (self.how, sim) if x)
        if self.level == KNOWN:
            return f"known: {self.structure} ({detail})"
        if self.level == RELATED:
            return f"related to {self.structure}, not trained on it ({detail}); check the result"
        return (f"unknown to this model (nearest trained structure: {self.structure}, {detail}); "
                f"add a box or points")


_SIDES = {"left": "right", "right": "left"}


class FamiliarityChecker:
    """Compares prompts with a checkpoint's training prompts (:class:`TrainingRecord`).

    ``encoder(prompts) -> (features (P, L, C), mask (P, L) bool)``: the model's own frozen text encoder (a built
    model's ``text_encoder``); sentence embeddings are the mean of the real tokens' features, L2-normalised
    (all-MiniLM-L6-v2's own sentence pooling).

    Order of the rules (the first that applies decides):
    1. the normalised prompt (``prompts.normalize``: case, punctuation, articles, plurals, British spelling) equals a
       training prompt or a structure name: known;
    2. the prompt library reads it (by name, synonym or description) as the library entry of a trained structure:
       known; as an entry of another structure: at most related;
    3. it is within ``thresholds.spelling`` (difflib ratio, lengths within 2 characters) of a training prompt or
       structure name: known;
    4. it is a phrase of two or more words inside a training prompt: known;
    5. cosine similarity to the nearest training prompt: >= known, >= related, else unknown; a prompt that names the
       other side (left / right) than its nearest structure's prompts (they name only the other) is at most
       related.
    """

    def __init__(self, record: TrainingRecord, encoder, thresholds: Optional[FamiliarityThresholds] = None) -> None:
        from .prompts import match_prompt, normalize

        self.record, self.encoder = record, encoder
        self.thresholds = thresholds or FamiliarityThresholds()
        self._pairs = record.prompts
        self._embeddings = self.embed([p for _, p in self._pairs])
        self._normalised = {}
        for structure in record.structures:
            for text in (structure.name, *structure.prompts):
                self._normalised.setdefault(normalize(text), structure.name)
        self._entries: dict[str, str] = {}  # library entry id -> trained structure
        for structure in record.structures:
            for text in (structure.name, *structure.prompts):
                m = match_prompt(text)
                if m.entry is not None and m.how in ("name", "synonym", "prompt"):
                    self._entries.setdefault(m.entry.id, structure.name)

    def embed(self, prompts: Sequence[str]) -> np.ndarray:
        """(P, C) float32 unit-norm sentence embeddings."""
        import torch

        with torch.inference_mode():
            feats, mask = self.encoder(list(prompts))
            weights = mask.to(feats.dtype).unsqueeze(-1)
            pooled = (feats * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return pooled.cpu().numpy()

    def check(self, prompt: str) -> Familiarity:
        import difflib

        from .prompts import describe, match_prompt, normalize, structure_text

        text = structure_text(prompt) or prompt.strip()
        key = normalize(text)
        library = match_prompt(text)
        sims = self._embeddings @ self.embed([text])[0]
        best = int(np.argmax(sims))
        structure, nearest, sim = self._pairs[best][0], self._pairs[best][1], float(sims[best])
        result = dict(prompt=prompt, structure=structure, similarity=sim, nearest_prompt=nearest,
                      library=describe(library))
        if key in self._normalised:
            return Familiarity(level=KNOWN, how="a training prompt", **{**result, "structure": self._normalised[key]})
        cap = None
        if library.entry is not None:
            trained = self._entries.get(library.entry.id)
            if trained is not None and library.how in ("name", "synonym", "prompt"):
                return Familiarity(level=KNOWN, how=f"library {library.how} of {library.entry.name}",
                                   **{**result, "structure": trained})
            if trained is None and library.how in ("name", "synonym", "prompt"):
                cap = f"the library reads it as {library.entry.name}, which the model was not trained on"
        if cap is None:
            close = max(((difflib.SequenceMatcher(None, key, k).ratio(), s) for k, s in self._normalised.items()
                         if abs(len(k) - len(key)) <= 2), default=(0.0, None))
            if close[0] >= self.thresholds.spelling:
                return Familiarity(level=KNOWN, how="spelling variant", **{**result, "structure": close[1]})
            if len(key.split()) >= 2:
                for k, s in self._normalised.items():
                    if f" {key} " in f" {k} ":
                        return Familiarity(level=KNOWN, how="part of a training prompt", **{**result, "structure": s})
            sides = [w for w in key.split() if w in _SIDES]
            prompts_of = [normalize(p).split() for s, p in self._pairs if s == structure]
            if any(any(_SIDES[w] in words for words in prompts_of) and not any(w in words for words in prompts_of)
                   for w in sides):
                cap = f"names the other side than the trained {structure}"
        if sim >= self.thresholds.known and cap is None:
            return Familiarity(level=KNOWN, how="close to a training prompt", **result)
        if sim >= self.thresholds.related:
            return Familiarity(level=RELATED, how=cap or "similar to a training prompt", **result)
        return Familiarity(level=UNKNOWN, how=cap or "far from every training prompt", **result)


def familiarity_checker(model_or_folder: Any, encoder=None) -> Optional[FamiliarityChecker]:
    """A checker for a built model (its ``text_encoder`` and ``checkpoint_info``) or a checkpoint folder (the text
    encoder its config names is loaded); None when the checkpoint records no training."""
    record = record_of(model_or_folder)
    if record is None:
        return None
    if encoder is None:
        encoder = getattr(model_or_folder, "text_encoder", None)
    if encoder is None:
        from .modeling.config import TextEncoderConfig
        from .modeling.text_encoder import TextEncoder

        text = _info(model_or_folder).get("config", {}).get("text", {})
        encoder = TextEncoder(TextEncoderConfig(**{k: v for k, v in text.items() if k in ("model_id_or_path",
                                                                                           "max_length")}))
    return FamiliarityChecker(record, encoder, FamiliarityThresholds.for_model(model_or_folder))


def assess(model_or_folder: Any, prompts: Sequence[str], checker: Optional[FamiliarityChecker] = None
           ) -> list[Familiarity]:
    """Familiarity of each prompt for a model or checkpoint (text ignored / no record / the checker's verdict)."""
    if text_ignored(model_or_folder):
        return [Familiarity(p, TEXT_IGNORED) for p in prompts]
    checker = checker or familiarity_checker(model_or_folder)
    if checker is None:
        return [Familiarity(p, NO_RECORD) for p in prompts]
    return [checker.check(p) for p in prompts]
