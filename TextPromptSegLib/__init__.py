"""TextPromptSeg: text-prompted segmentation of medical volumes and sequences.

Importing this package is cheap and side-effect free: no torch, sam2/Hydra or transformers import, no
threads, no downloads. Heavy dependencies load when a model is built (``modeling.build.build_model``).
"""

__version__ = "0.1.0"
