"""The prompt library (``Resources/prompt_library.json``): structure names, descriptive prompts, synonyms,
terminology and colours, and matching of typed text to an entry so the panel can echo what it understood.
No torch import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

from .resources import resource_path

_SPELLING = {"tumor": "tumour", "tumors": "tumours", "edema": "oedema", "esophagus": "oesophagus",
             "hemorrhage": "haemorrhage", "color": "colour"}
_ARTICLES = {"the", "a", "an", "of", "in", "on"}


def normalize(text: str) -> str:
    """Lower case, no punctuation, British spelling, singular nouns, articles dropped."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    out = []
    for w in words:
        w = _SPELLING.get(w, w)
        if len(w) > 4 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        if w not in _ARTICLES:
            out.append(w)
    return " ".join(out)


@dataclass(frozen=True)
class PromptEntry:
    id: str
    name: str
    prompts: dict[str, str]
    synonyms: tuple[str, ...]
    terminology: dict = field(hash=False, compare=False)
    color: tuple[float, float, float] = (1.0, 1.0, 0.0)
    modality: str = "any"
    window: Optional[str] = None
    tpp_benchmark: bool = False

    @property
    def default_prompt(self) -> str:
        return self.prompts["profile"]

    @property
    def terminology_tag(self) -> str:
        """Slicer's serialised terminology entry (segment tag ``TerminologyEntry``)."""
        cat, typ = self.terminology["category"], self.terminology["type"]
        return (f"Segmentation category and type - 3D Slicer General Anatomy list~{cat['scheme']}^{cat['code']}^"
                f"{cat['meaning']}~{typ['scheme']}^{typ['code']}^{typ['meaning']}~^^~Anatomic codes - DICOM master "
                f"list~^^~^^")


@dataclass(frozen=True)
class Match:
    entry: Optional[PromptEntry]
    how: str  # "name", "synonym", "prompt", "contains", "free text"


@lru_cache(maxsize=1)
def load_library() -> tuple[PromptEntry, ...]:
    data = json.loads(resource_path("prompt_library.json").read_text(encoding="utf-8"))
    return tuple(PromptEntry(e["id"], e["name"], dict(e["prompts"]), tuple(e.get("synonyms", ())),
                             e["terminology"], tuple(e["color"]), e.get("modality", "any"), e.get("window"),
                             bool(e.get("tpp_benchmark", False))) for e in data["entries"])


def match_prompt(text: str) -> Match:
    """The library entry a typed prompt refers to, and how it was recognised."""
    key = normalize(text)
    if not key:
        return Match(None, "free text")
    library = load_library()
    for entry in library:
        if key in (normalize(entry.name), normalize(entry.id.replace("_", " "))):
            return Match(entry, "name")
    for entry in library:
        if key in (normalize(s) for s in entry.synonyms):
            return Match(entry, "synonym")
    for entry in library:
        if key in (normalize(p) for p in entry.prompts.values()):
            return Match(entry, "prompt")
    # a sentence naming a structure: the longest name or synonym found as whole words wins
    best, best_len = None, 0
    padded = f" {key} "
    for entry in library:
        for term in (entry.name, *entry.synonyms):
            t = normalize(term)
            if t and f" {t} " in padded and len(t) > best_len:
                best, best_len = entry, len(t)
    return Match(best, "contains") if best else Match(None, "free text")


def describe(match: Match) -> str:
    """One line for the panel: what the prompt was understood as."""
    if match.entry is None:
        return "free text"
    return f"{match.entry.name} ({match.how})"


TPP_MAX_PROMPTS = 3


def prompt_set(line: str, max_prompts: int = TPP_MAX_PROMPTS) -> list[str]:
    """The 1 to ``max_prompts`` prompts of one structure for TPP (profile, shape, colour): ``;``-separated in the
    line, else the line plus the prompt library's descriptions of the structure it names (unknown text: the line
    alone). Raises ValueError for an empty line or more than ``max_prompts`` typed prompts."""
    parts = [p.strip() for p in line.split(";") if p.strip()]
    if not parts:
        raise ValueError("a text prompt must not be empty")
    if len(parts) > max_prompts:
        raise ValueError(f"TPP reads 1 to {max_prompts} prompts per structure (profile; shape; colour), got "
                         f"{len(parts)} in {line!r}")
    if len(parts) == 1:
        entry = match_prompt(parts[0]).entry
        if entry is not None:
            parts += [p for p in entry.prompts.values() if p and p != parts[0]]
    return parts[:max_prompts]


def structure_text(line: str) -> str:
    """The part of a prompt line that names the structure: the text before the first ``;``."""
    return line.split(";", 1)[0].strip()


def describe_line(line: str, tpp: bool = False) -> str:
    """The panel's echo of one prompt line: the structure it was understood as (from the text before any ``;``)
    and, for a TPP model, the prompts it will read; a line with ``;`` for another model is read as one text."""
    text = describe(match_prompt(structure_text(line)))
    if tpp:
        try:
            parts = prompt_set(line)
        except ValueError as exc:
            return f"{text}; {exc}"
        typed = len([p for p in line.split(";") if p.strip()])
        how = "name + library descriptions" if typed == 1 and len(parts) > 1 else "as typed"
        return f"{text}; TPP reads {len(parts)} prompt(s) ({how}): " + " | ".join(parts)
    if ";" in line:
        return f"{text}; ';' separates TPP prompts: this model reads the whole line as one text"
    return text
