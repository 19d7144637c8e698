"""The MRML side of TextPromptSeg: volume node -> library Volume, results -> segments, the worker thread.

No Qt is imported here, so the same code runs in Slicer, in batch scripts and in pytest on slicer-core. The
module file (TextPromptSeg.py) keeps only the GUI and delegates every action to :class:`TextPromptSegLogic`.

One module per concern; this package face only re-exports:

* ``nodes``: volume and segmentation nodes <-> numpy (geometry, metadata, voxels, labelmaps);
* ``segments``: prompt tags, naming and styling of the segments we make, and the requests they come from;
* ``jobs``: worker-thread jobs, outcomes, per-segment state, the bounded undo stack, the worker;
* ``logic``: :class:`TextPromptSegLogic` (models, runs, results, undo), with the mixins ``refinement`` (engine
  sessions, "refine from this slice", click updates) and ``views`` (quality strip, slice jumps, points and box);
* ``familiarity``: how familiar the model is with each prompt line;
* ``interactive``, ``sequences``, ``selftest``: slice-view geometry and QA tables, 2D+t sequences, self-test checks.
"""

from __future__ import annotations

from .familiarity import prompt_familiarity
from .interactive import SliceQuality, VisualPrompts
from .jobs import RefineOutcome, SegmentationJob, SegmentState, UndoStack
from .logic import TextPromptSegLogic
from .nodes import (
    LPS_FROM_RAS,
    geometry_from_node,
    mask_to_oriented_image,
    node_metadata,
    segment_labelmap_copy,
    volume_from_node,
    vtk_matrix_to_numpy,
)
from .segments import (
    PROMPT_TAG,
    SegmentOutcome,
    build_requests,
    library_entry,
    segment_id_for_prompt,
    segment_prompt,
    segment_tag,
    structure_text,
    style_segment,
)

__all__ = [
    "LPS_FROM_RAS", "PROMPT_TAG", "RefineOutcome", "SegmentOutcome", "SegmentState", "SegmentationJob",
    "SliceQuality", "TextPromptSegLogic", "UndoStack", "VisualPrompts", "build_requests", "geometry_from_node",
    "library_entry", "mask_to_oriented_image", "node_metadata", "prompt_familiarity", "segment_id_for_prompt",
    "segment_labelmap_copy", "segment_prompt", "segment_tag", "structure_text", "style_segment",
    "volume_from_node", "vtk_matrix_to_numpy",
]
