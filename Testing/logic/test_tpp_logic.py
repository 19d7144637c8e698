"""TPP through the module's Logic on real MRML (issue 6): the Logic's default model path (the registry's
``load_model``) loads a TPP checkpoint, a prompt line with ';' gives TPP its 1 to 3 prompts (profile, shape,
colour) for one structure, and the segment lands on the volume as one named segment tagged with the whole line.
The panel's echo shows how such a line was understood."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import vtk
from test_logic import _segment_array
from vtkmodules.util import numpy_support

LINE = "the left atrium; a rounded sac behind the left ventricle; a bright blood pool"


def _volume_node(mrml, array: np.ndarray, spacing=(0.625, 0.625, 0.625)):
    node = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
    node.SetAndObserveImageData(image)
    node.SetSpacing(*spacing)
    node.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)
    return node


def test_logic_segments_a_real_volume_with_a_tpp_checkpoint_and_a_three_prompt_line(
        mrml, shared_data, tiny_text_encoder_dir, tmp_path):
    import TextPromptSegLogic as tl

    from TextPromptSegLib.modeling.testing import build_tiny_tpp
    from TextPromptSegLib.modeling.tpp import save_tpp
    from TextPromptSegLib.registry import load_model

    model = build_tiny_tpp(tiny_text_encoder_dir, seed=0)
    with torch.no_grad():  # a random TPP whose masks are clearly non-empty, so that the voxels can be checked
        model.controller[-1].weight.mul_(0.01)
        model.controller[-1].bias.zero_()
        model.controller[-1].bias[-1] = 5.0
        model.class_head.bias.fill_(5.0)
    folder = save_tpp(model, tmp_path / "tpp")

    seen_prompts: list[int] = []

    def loader(name, device):  # the Logic's default path (registry load_model), with a probe on the text input
        loaded = load_model(name, device=device)
        loaded.text_proj.register_forward_hook(lambda mod, inputs, out: seen_prompts.append(inputs[0].shape[0]))
        return loaded

    case = sorted((shared_data / "la2018" / "train").iterdir())[0]
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "image.nii.gz")))[40:48].copy()
    volume_node = _volume_node(mrml, array)
    seg_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic = tl.TextPromptSegLogic(model_loader=loader)
    outcomes = logic.process(volume_node, seg_node, [LINE], model=str(folder), device="cpu", timeout=300)
    logic.shutdown()

    assert seen_prompts and set(seen_prompts) == {3}  # one structure, three prompts, each encoded separately
    (outcome,) = outcomes
    segment = seg_node.GetSegmentation().GetSegment(outcome.segment_id)
    assert segment.GetName() == "Left atrium" and outcome.matched == "Left atrium (name)"
    tag = vtk.reference("")
    assert segment.GetTag(tl.PROMPT_TAG, tag) and str(tag) == LINE
    voxels = _segment_array(seg_node, outcome.segment_id, volume_node, mrml)
    assert voxels.shape == array.shape and outcome.slices_with_object == 8
    assert voxels.reshape(8, -1).any(1).all()

    # the panel's echo: the line's structure and, for the TPP checkpoint, the three prompts it reads
    echo = tl.TextPromptSegLogic.describe_prompts(f"{LINE}\nthe left atrium", str(folder))
    assert echo[0].splitlines()[0].endswith(  # the familiarity line follows it
        "Left atrium (name); TPP reads 3 prompt(s) (as typed): the left atrium | a rounded sac behind the left "
        "ventricle | a bright blood pool")
    assert "TPP reads 3 prompt(s) (name + library descriptions): the left atrium | the left atrium, the chamber" \
        in echo[1]
    plain = tl.TextPromptSegLogic.describe_prompts(LINE, "tgsam2-medium")
    assert plain[0].splitlines()[0].endswith(
        "Left atrium (name); ';' separates TPP prompts: this model reads the whole line as one text")


def test_logic_runs_the_bundled_tpp_by_its_registry_name(mrml, shared_data):
    """The panel's model menu lists registry names: the Logic's own loader (no injected model) runs the bundled
    TPP ``tpp-small-la`` on a held-out LA2018 volume, and the echo shows the prompts TPP reads."""
    import TextPromptSegLogic as tl

    from TextPromptSegLib.registry import entries
    from TextPromptSegLib.training.data import default_splits

    assert entries()["tpp-small-la"].kind == "tpp"
    case = shared_data / "la2018" / "train" / default_splits(shared_data)["la2018"]["val"][1]
    image, label = (sitk.GetArrayFromImage(sitk.ReadImage(str(case / f))) for f in ("image.nii.gz", "label.nii.gz"))
    z = np.flatnonzero(label.reshape(len(label), -1).any(1))
    mid = int(z[len(z) // 2])
    volume_node = _volume_node(mrml, image[mid - 4:mid + 4].copy())
    seg_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic = tl.TextPromptSegLogic()
    (outcome,) = logic.process(volume_node, seg_node, [LINE], model="tpp-small-la", device="cpu", timeout=300)
    logic.shutdown()
    voxels = _segment_array(seg_node, outcome.segment_id, volume_node, mrml)
    truth = label[mid - 4:mid + 4] > 0
    assert 2 * (voxels & truth).sum() / (voxels.sum() + truth.sum()) > 0.75  # held-out atrium, 3 prompts (0.91)
    echo = tl.TextPromptSegLogic.describe_prompts(LINE, "tpp-small-la")
    assert "TPP reads 3 prompt(s) (as typed)" in echo[0]
