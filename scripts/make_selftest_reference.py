"""Store the bundled model's own result on the bundled sample: the reference of the self-test's prompt check.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/make_selftest_reference.py

runs the self-test's path (slicer-core scene, Volumes logic, ``TextPromptSegLogic`` on the CPU) for each prompt of
``selftest.REFERENCE_PROMPTS`` with the model named by ``selftest.REFERENCE_MODEL`` and writes, next to the sample,

- ``TextPromptSeg_reference.nii.gz``: one bit per prompt (bit i set where prompt i's segment is), on the CT's grid;
- ``TextPromptSeg_reference.json``: the model, the SHA-256 of its weights, the prompts and what was measured.

Run it again whenever the bundled model changes: the self-test refuses a reference made by other weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TextPromptSeg"))
sys.path.insert(0, str(ROOT / "Testing"))
sys.path.insert(0, str(ROOT))


def main() -> None:
    import SimpleITK as sitk
    import TextPromptSegLogic as tl
    import torch
    from mrml import make_scene
    from TextPromptSegLogic import selftest

    scene = make_scene()
    logic = tl.TextPromptSegLogic()
    env = selftest.SelfTestEnvironment(scene.scene, scene.volumes, logic, ROOT / "Resources", device="cpu")
    try:
        masks = selftest.segment_reference_prompts(env)
    finally:
        logic.shutdown()
    truth = selftest.volume_array(selftest.load_volume(env, selftest.REFERENCE, "truth")) > 0
    bits = np.zeros(truth.shape, np.uint8)
    for i, mask in enumerate(masks.values()):
        bits |= mask.astype(np.uint8) << i
    ct = sitk.ReadImage(str(ROOT / "Resources" / Path(*selftest.SAMPLE)))
    image = sitk.GetImageFromArray(bits)
    image.CopyInformation(ct)
    folder = ROOT / "Resources" / Path(*selftest.SAMPLE).parent
    sitk.WriteImage(image, str(folder / selftest.STORED_RESULT), useCompression=True)
    prompts = list(masks)
    record = {
        "model": selftest.REFERENCE_MODEL,
        "weights_sha256": selftest.weights_sha256(selftest.REFERENCE_MODEL),
        "prompts": prompts,
        "made_with": f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads",
        "dice_vs_reference_outline": {p: round(selftest.dice(m, truth), 3) for p, m in masks.items()},
        "dice_between_prompts": round(selftest.dice(masks[prompts[0]], masks[prompts[1]]), 3),
    }
    (folder / selftest.STORED_RESULT_INFO).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
