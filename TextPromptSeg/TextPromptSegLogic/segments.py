"""Segments TextPromptSeg makes: prompt tag, name, colour and terminology, and the requests they come from.

One place for what the volume path (``logic.apply_results``) and the sequence path (``sequences``) both need, so a
``name; shape; colour`` line (TPP) is named and tagged from its structure text in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

PROMPT_TAG = "TextPromptSeg.Prompt"


def segment_tag(segment, tag: str) -> str:
    """A segment's tag value ('' when absent)."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(tag, value) else ""


def segment_prompt(segment) -> str:
    """The text prompt a segment was made from ('' for segments TextPromptSeg did not make)."""
    return segment_tag(segment, PROMPT_TAG)




@dataclass
class SegmentOutcome:
    """What happened to one prompt: the segment it landed in and a short summary for the panel."""

    prompt: str
    segment_id: str
    name: str
    slices_with_object: int
    volume_ml: float
    matched: str
    absent: bool = False  # the model found the structure absent: the segment is empty and ``message`` says why
    message: str = ""




def structure_text(prompt: str) -> str:
    """The text of a prompt line that names the structure (before any ``;`` of TPP's extra prompts)."""
    from TextPromptSegLib.prompts import structure_text as text

    return text(prompt)


def library_entry(prompt: str):
    """The prompt-library entry a prompt line refers to (name, colour, terminology), or None for free text."""
    from TextPromptSegLib.prompts import match_prompt

    return match_prompt(structure_text(prompt)).entry


def clean_prompts(prompts: Sequence[str]) -> list[str]:
    """The non-empty prompt lines, stripped; ValueError when there is none."""
    lines = [p.strip() for p in prompts if p and p.strip()]
    if not lines:
        raise ValueError("Type at least one prompt (one line per structure).")
    return lines


def build_requests(prompts: Sequence[str]) -> list[Any]:
    """One ``SegmentRequest`` per prompt line, named and coloured from its library entry (else named by its
    structure text)."""
    from TextPromptSegLib.engine.pipeline import SegmentRequest

    requests = []
    for prompt in clean_prompts(prompts):
        entry = library_entry(prompt)
        requests.append(SegmentRequest(prompt, name=entry.name if entry else structure_text(prompt),
                                       color=entry.color if entry else None))
    return requests


def style_segment(segment, seg) -> None:
    """Name, colour, prompt tag and terminology of a segment made from ``seg`` (a ``SegmentResult``)."""
    segment.SetName(seg.name)
    segment.SetColor(*seg.color)
    segment.SetTag(PROMPT_TAG, seg.prompt)
    entry = library_entry(seg.prompt)
    if entry is not None:
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry.terminology_tag)


def segment_id_for_prompt(segmentation_node, prompt: str) -> Optional[str]:
    """The segment TextPromptSeg made for ``prompt`` (by its prompt tag, never by name), or None."""
    segmentation = segmentation_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        if segment_prompt(segmentation.GetNthSegment(i)) == prompt:
            return segmentation.GetNthSegmentID(i)
    return None
