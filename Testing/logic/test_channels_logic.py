"""Multi-sequence input in the Logic (issue 19): extra input volume nodes are combined with the input exactly as the
CLI and training combine the files (the model's stated channel order), only for a model that reads them, only on
one voxel grid; the run and its refinements read the same composite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _load(mrml, path: Path):
    node = mrml.volumes.AddArchetypeScalarVolume(str(path), path.name.split(".")[0], 0, None)
    assert node is not None, path
    return node


def test_the_panel_is_offered_extra_inputs_only_for_models_that_read_them():
    import TextPromptSegLogic as tl

    sets = tl.TextPromptSegLogic.channel_sets("tgsam2-medium")
    assert [c.sequences for c in sets] == [("FLAIR", "T1c")]
    assert "enhancing tumour" in sets[0].structures
    assert tl.TextPromptSegLogic.channel_sets("tpp-small-la") == []
    assert tl.TextPromptSegLogic.channel_sets("no such model") == []


def test_extra_input_volumes_make_the_clis_composite(mrml, brats_small):
    import TextPromptSegLogic as tl

    from TextPromptSegLib.io.volumes import read_channels

    flair, t1c = _load(mrml, brats_small / "flair.nii.gz"), _load(mrml, brats_small / "t1c.nii.gz")
    composite = tl.TextPromptSegLogic.input_volume(flair, [t1c], "tgsam2-medium")
    expected = read_channels([brats_small / "flair.nii.gz", brats_small / "t1c.nii.gz"])
    assert composite.array.shape == expected.array.shape == (6, 160, 160, 3)
    assert np.array_equal(composite.array, expected.array)  # the same model input, bit for bit
    assert np.allclose(composite.spacing, expected.spacing) and np.allclose(composite.direction, expected.direction)
    swapped = tl.TextPromptSegLogic.input_volume(t1c, [flair], "tgsam2-medium")
    assert not np.array_equal(swapped.array, expected.array)  # the order is the model's channel order

    with pytest.raises(ValueError, match="different voxel grids"):
        tl.TextPromptSegLogic.input_volume(flair, [_load(mrml, brats_small / "t1c_moved.nii.gz")], "tgsam2-medium")
    with pytest.raises(ValueError, match="does not read 2 sequences"):
        tl.TextPromptSegLogic.input_volume(flair, [t1c], "tpp-small-la")
    with pytest.raises(ValueError, match="does not read 3 sequences"):
        tl.TextPromptSegLogic.input_volume(flair, [t1c, t1c], "tgsam2-medium")


def test_a_run_and_its_refinement_read_the_composite(mrml, brats_small, tiny_model, monkeypatch):
    import TextPromptSegLogic as tl

    flair, t1c = _load(mrml, brats_small / "flair.nii.gz"), _load(mrml, brats_small / "t1c.nii.gz")
    read = []
    input_volume = tl.TextPromptSegLogic.input_volume

    def recording(volume_node, channel_nodes=(), model=None):
        volume = input_volume(volume_node, channel_nodes, model or "tgsam2-medium")
        read.append(volume.array.shape)
        return volume

    monkeypatch.setattr(tl.TextPromptSegLogic, "input_volume", staticmethod(recording))
    logic = tl.TextPromptSegLogic(model_loader=lambda name, device: tiny_model)
    seg_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    outcome = logic.process(flair, seg_node, ["the enhancing tumour"], device="cpu", start_slice=3,
                            channel_nodes=[t1c])[0]
    state = logic.segment_state(seg_node, outcome.segment_id)
    assert state.channels == (t1c.GetID(),)
    logic.shutdown()  # the encoded composite is released: the refinement must build it again
    logic.refine_from_slice(flair, seg_node, outcome.segment_id, 3, device="cpu")
    assert read == [(6, 160, 160, 3), (6, 160, 160, 3)]
    assert logic.segment_state(seg_node, outcome.segment_id).channels == (t1c.GetID(),)
    logic.shutdown()
