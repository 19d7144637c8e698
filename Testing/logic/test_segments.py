"""The segments the module makes (issue 16): one naming and styling path for volumes and sequences, matched by their
prompt tag only, and an undo stack that keeps a bounded number of steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def test_a_tpp_line_is_named_and_tagged_from_its_structure_text():
    """A ``name; shape; colour`` line is named after its library entry and gets its terminology, in both paths (the
    sequence path used to name it by the whole line and leave the terminology out)."""
    import slicer
    import TextPromptSegLogic as tl

    line = "the left atrium; a round chamber; dark"
    request = tl.build_requests([f"  {line} ", "", "a thing no library names; small"])
    assert [r.name for r in request] == ["Left atrium", "a thing no library names"]
    segment = slicer.vtkSegment()
    seg = SimpleNamespace(prompt=line, name=request[0].name, color=(0.8, 0.2, 0.2))  # what a SegmentResult has
    tl.style_segment(segment, seg)
    assert segment.GetName() == "Left atrium" and tl.segment_prompt(segment) == line
    assert "SCT" in tl.segment_tag(segment, segment.GetTerminologyEntryTagName())
    with pytest.raises(ValueError, match="at least one prompt"):
        tl.build_requests(["  ", ""])


def test_the_undo_stack_keeps_the_last_steps_only():
    import TextPromptSegLogic as tl

    stack = tl.UndoStack(limit=3)
    for step in range(5):
        stack.append(step)
    assert len(stack) == 3 and list(stack) == [2, 3, 4]
    assert [stack.pop() for _ in range(3)] == [4, 3, 2] and not stack
    assert isinstance(tl.TextPromptSegLogic().undo_stack, tl.UndoStack)
    assert tl.TextPromptSegLogic().undo_stack.limit == 20
