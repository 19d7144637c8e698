"""Copy a trained checkpoint into Resources/Models/<name> as fp16 safetensors with SHA256SUMS.

    python scripts/bundle_model.py runs/medium/last tgsam2-medium
    python scripts/bundle_model.py runs/tpp_small_la/last tpp-small-la      (a TPP checkpoint works the same way)
"""

from __future__ import annotations

import sys
from pathlib import Path

from TextPromptSegLib.modeling.checkpoint import save_checkpoint
from TextPromptSegLib.registry import load_model, sha256

source, name = Path(sys.argv[1]), sys.argv[2]
target = Path(__file__).resolve().parents[1] / "Resources" / "Models" / name
model = load_model(str(source))  # TGSAM-2 or TPP, by the checkpoint's format
save_checkpoint(model, target, half=True, metadata={"source": str(source)})
sums = "".join(f"{sha256(target / f)}  {f}\n" for f in ("model.safetensors", "config.json"))
(target / "SHA256SUMS").write_text(sums)
print(f"bundled {name}: {(target / 'model.safetensors').stat().st_size / 1e6:.1f} MB")
