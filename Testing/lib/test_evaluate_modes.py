"""``textpromptseg evaluate`` on any data, with prompt modes (issue 15, item 4).

Shown: the visual prompts come from the label's middle labelled slice in the engine's frame coordinates (a
synthetic label whose box and deepest points are known, on a permuted and flipped direction matrix, derived by
hand); each mode reaches the engine with the right text, start slice, box corners and clicks (a recording
session); the report has one table per mode; the folder, nnU-Net v2 and MSD readers pick up the pairs and the
prompt spec (a real LA2018 case, cropped small); the shared-data mode adds the TotalSegmentator CT organs and the
RECIST lesions; and the command, on a folder with the tiny interactive model (trained to follow boxes and clicks
on synthetic discs), segments the boxed / clicked disc and not the other one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from TextPromptSegLib.engine.geometry import SliceGeometry
from TextPromptSegLib.engine.propagation import PropagationResult
from TextPromptSegLib.io.volumes import Volume
from TextPromptSegLib.training.evaluate import (
    MODES,
    CaseScore,
    EvalCase,
    evaluate_cases,
    folder_cases,
    label_prompts,
    parse_modes,
    write_report,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from interactive_model import FIXTURE, make_scene  # noqa: E402

# Columns = the i, j, k axis directions in LPS: i -> anterior (-P), j -> inferior (-S), k -> left (+L). With k the
# coarsest axis the engine slices k in the sagittal plane: frame rows follow j (superior -> inferior: not flipped),
# frame columns follow i reversed (anterior -> posterior), so frame[n, row, col] = array[n, row, W - 1 - col].
DIRECTION = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
SPACING = (0.8, 0.8, 3.0)  # (x, y, z)
SHAPE = (10, 40, 50)  # (k, j, i)
W = SHAPE[2]


def _label() -> np.ndarray:
    """(k, j, i) uint8, label 1 on slices 2, 3, 4, 8 and 9 (middle labelled slice: 4). On slice 4, in frame
    coordinates: a bar rows 10..14 x cols 20..45 and a 13 x 13 square rows 10..22 x cols 30..42; elsewhere small
    blobs far from it (a wrong slice gives another box)."""
    label = np.zeros(SHAPE, np.uint8)

    def frame_rect(k, rows, cols):  # frame (row, col) ranges, inclusive -> voxels: j = row, i = W - 1 - col
        label[k, rows[0] : rows[1] + 1, W - 1 - cols[1] : W - cols[0]] = 1

    frame_rect(4, (10, 14), (20, 45))
    frame_rect(4, (10, 22), (30, 42))
    for k in (2, 3, 8, 9):
        frame_rect(k, (30, 33), (2, 6))
    return label


BOX = (10, 20, 22, 45)  # (row0, col0, row1, col1) on slice 4
POSITIVE = (16, 36)  # the square's centre: 7 px from every side, the only point that deep
# the background point of rows 7..25 x cols 14..49 (the box grown by 13 // 4 = 3 rows and 26 // 4 = 6 columns,
# clipped to the 50 columns) farthest from the label: 11 rows and 6 columns from the bar's corner (14, 20)
NEGATIVE = (25, 14)


def test_the_prompts_come_from_the_middle_labelled_slice_in_frame_coordinates():
    geometry = SliceGeometry.for_volume(DIRECTION, SPACING)
    assert (geometry.plane, geometry.slice_axis, geometry.row_axis, geometry.col_axis) == ("sagittal", 2, 1, 0)
    assert (geometry.flip_rows, geometry.flip_cols) == (False, True)  # the hand derivation above holds
    prompts = label_prompts(geometry.to_frames(_label()), geometry.row_spacing, geometry.col_spacing)
    assert prompts.slice_index == 4
    assert prompts.box == BOX
    assert prompts.positive == POSITIVE
    assert prompts.negative == NEGATIVE
    # the same points through the engine's voxel -> frame mapping of their voxels
    for row, col in (POSITIVE, NEGATIVE):
        assert geometry.voxel_to_frame((W - 1 - col, row, 4), SHAPE) == (4.0, row, col)


def test_even_slice_counts_and_labels_at_the_frame_edge():
    # labelled slices 1, 2, 5, 6: the lower middle one is 2; a 9 x 9 square in the frame's corner: its centre
    # (4, 4) is the deepest point because the frame's edge counts as its border
    frames = np.zeros((8, 20, 40), bool)
    frames[[1, 5, 6], 10:12, 10:12] = True
    frames[2, 0:9, 0:9] = True
    prompts = label_prompts(frames)
    assert prompts.slice_index == 2 and prompts.box == (0, 0, 8, 8) and prompts.positive == (4, 4)
    # the grown box (2 more rows and columns) holds background: the far corner (10, 10) of it
    assert prompts.negative == (10, 10)


def test_modes_parse_from_repeated_and_comma_lists():
    assert parse_modes(None) == ["text"]
    assert parse_modes(["box, clicks", "text", "box"]) == ["box", "clicks", "text"]
    with pytest.raises(ValueError, match="unknown evaluation mode 'boxes'"):
        parse_modes(["boxes"])


class _Recording:
    """A propagator whose sessions record what ``segment_volume`` asks of the engine and return empty masks."""

    def __init__(self, image_size: int = 64):
        self.model = type("Model", (), {"image_size": image_size})()
        self.calls: list[dict] = []
        self.sessions = 0

    def start_session(self, frames):
        self.sessions += 1
        recording = self

        class Session:
            def propagate(self, prompt, start_index=None, point_prompts=None, mask_prompts=None, **kwargs):
                recording.calls.append({"prompt": prompt, "start": start_index, "points": point_prompts,
                                        "masks": mask_prompts})
                n, low = len(frames), recording.model.image_size // 4
                return PropagationResult(torch.full((n, low, low), -10.0, dtype=torch.float16),
                                         np.full(n, -1.0, np.float32), list(range(n)), start_index, low * 4)

        return Session()


def _write(array: np.ndarray, path: Path, direction=DIRECTION, spacing=SPACING) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    sitk.WriteImage(image, str(path))
    return path


def test_each_mode_reaches_the_engine_with_its_prompts(tmp_path):
    rng = np.random.default_rng(0)
    image = _write(rng.uniform(0, 100, SHAPE).astype(np.float32), tmp_path / "case_image.nii.gz")
    label = _write(_label(), tmp_path / "case_label.nii.gz")
    recording = _Recording(64)
    case = EvalCase("case", "square", image, label, (1,), "the square")
    scores = evaluate_cases(None, [case], modes=MODES, propagator=recording, start_slice=7)
    assert recording.sessions == 1  # the slices of one image are encoded once for every mode

    # frames are 40 x 50 (rows j, columns i): 64 / 50 scales them into a 51 x 64 content box at 64 px, and the
    # engine takes (x, y) = ((col + 0.5) * 64 / 50, (row + 0.5) * 51 / 40)
    def model_xy(row, col):
        return [(col + 0.5) * 64 / 50, (row + 0.5) * 51 / 40]

    corners = [model_xy(BOX[0], BOX[1]), model_xy(BOX[2], BOX[3])]
    clicks = [model_xy(*POSITIVE), model_xy(*NEGATIVE)]
    want = {"text": ("the square", 7, None), "box": (None, 4, (corners, [2, 3])),
            "box+text": ("the square", 4, (corners, [2, 3])), "clicks": (None, 4, (clicks, [1, 0])),
            "clicks+text": ("the square", 4, (clicks, [1, 0]))}
    assert [s.mode for s in scores] == list(MODES)
    for score, call in zip(scores, recording.calls):
        prompt, start, points = want[score.mode]
        assert call["prompt"] == prompt, score.mode
        assert call["start"] == start == score.start_slice, score.mode
        assert not call["masks"]
        if points is None:
            assert not call["points"], score.mode
        else:
            assert list(call["points"]) == [4], score.mode
            np.testing.assert_allclose(call["points"][4]["coords"], points[0], atol=1e-4, err_msg=score.mode)
            assert list(call["points"][4]["labels"]) == points[1], score.mode
    by_mode = {s.mode: s for s in scores}
    assert by_mode["box"].box == list(BOX) and by_mode["box"].clicks is None
    assert by_mode["clicks"].clicks == [[*POSITIVE, 1], [*NEGATIVE, 0]] and by_mode["clicks"].box is None
    assert by_mode["box"].prompt == "" and by_mode["box+text"].prompt == "the square"


def test_the_report_has_one_table_per_mode(tmp_path):
    def score(case, structure, mode, d):
        return CaseScore(case, structure, "p", d, d / 2, 3.0, 1.0, mode=mode, start_slice=4)

    scores = [score("a", "liver", "text", 0.5), score("a", "liver", "box", 0.9), score("b", "liver", "text", 0.7),
              score("b", "liver", "box", 0.8), score("a", "spleen", "box", 0.6)]
    report = write_report(scores, tmp_path).read_text(encoding="utf-8")
    sections = report.split("### ")[1:]
    assert [s.splitlines()[0].split(":")[0] for s in sections] == ["Mode `text`", "Mode `box`", "Per case"]
    text, box, cases = sections
    assert "| liver | 2 | 60.00 ± 10.00 | 30.00 | 3.0 |" in text and "spleen" not in text
    assert "| liver | 2 | 85.00 ± 5.00 | 42.50 | 3.0 |" in box and "| spleen | 1 | 60.00 ± 0.00 |" in box
    assert cases.count("| box |") == 3 and cases.count("| text |") == 2
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert data["modes"] == ["text", "box"]
    assert data["summary"]["box"]["liver"]["dice_mean"] == pytest.approx(85.0)
    assert data["summary"]["text"]["liver"]["dice_mean"] == pytest.approx(60.0)
    assert [c["mode"] for c in data["cases"]] == ["text", "box", "text", "box", "box"]


# --- readers -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def la_small(shared_data, tmp_path_factory):
    """A real LA2018 case cut to 4 slices x 48 x 48 around the atrium: (image, label) SimpleITK images."""
    from TextPromptSegLib.training.data import default_splits

    case = default_splits(shared_data)["la2018"]["val"][0]
    folder = shared_data / "la2018" / "train" / case
    image = sitk.ReadImage(str(folder / "image.nii.gz"))
    label = sitk.ReadImage(str(folder / "label.nii.gz"))
    array = sitk.GetArrayFromImage(label)
    z, y, x = (int(np.mean(v)) for v in np.nonzero(array))
    region = (slice(x - 24, x + 24), slice(y - 24, y + 24), slice(z - 2, z + 2))  # SimpleITK (x, y, z)
    return image[region], label[region]


def _save(image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def test_folder_layouts_pick_up_pairs_and_the_spec(la_small, tmp_path):
    image, label = la_small
    # CASE_image + CASE_label in the folder, with a flat spec (label value -> prompt, used as given)
    flat = tmp_path / "flat"
    for case in ("p1", "p2"):
        _save(image, flat / f"{case}_image.nii.gz")
        _save(label, flat / f"{case}_label.nii.gz")
    _save(image, flat / "p3_image.nii.gz")  # no label: ignored
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"0": "background", "1": "the left atrium of the heart"}))
    cases = folder_cases(flat, spec)
    assert [(c.case_id, c.image.name, c.label.name) for c in cases] == [
        ("p1", "p1_image.nii.gz", "p1_label.nii.gz"), ("p2", "p2_image.nii.gz", "p2_label.nii.gz")]
    assert {(c.structure, c.prompt, c.label_values) for c in cases} == {
        ("the left atrium of the heart", "the left atrium of the heart", (1,))}

    # CASE/image + CASE/label (and CT_image + CT_mask) with the training spec format: the first prompt
    nested = tmp_path / "nested"
    _save(image, nested / "c1" / "image.nii.gz")
    _save(label, nested / "c1" / "label.nii.gz")
    _save(image, nested / "c2" / "CT_image.nrrd")
    _save(label, nested / "c2" / "CT_mask.nrrd")
    training = {"labels": {"1": {"structure": "left atrium", "prompts": ["the LA", "a bright sac"]}}}
    cases = folder_cases(nested, training)
    assert [(c.case_id, c.image.name, c.label.name, c.structure, c.prompt) for c in cases] == [
        ("c1", "image.nii.gz", "label.nii.gz", "left atrium", "the LA"),
        ("c2/CT", "CT_image.nrrd", "CT_mask.nrrd", "left atrium", "the LA")]

    # nnU-Net v2: dataset.json {"name": value}, images CASE_0000, no spec: the label names and the library prompts
    v2 = tmp_path / "Dataset001_LA"
    _save(image, v2 / "imagesTr" / "la_001_0000.nii.gz")
    _save(label, v2 / "labelsTr" / "la_001.nii.gz")
    (v2 / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "left atrium": 1},
                                                 "channel_names": {"0": "MRI"}, "file_ending": ".nii.gz"}))
    (case,) = folder_cases(v2)
    assert (case.case_id, case.image.name, case.label.name) == ("la_001", "la_001_0000.nii.gz", "la_001.nii.gz")
    assert (case.structure, case.label_values, case.prompt) == ("left atrium", (1,), "the left atrium")

    # MSD: dataset.json {"value": "name"}, images named as their labels; a spec overrides the names
    msd = tmp_path / "Task02_Heart"
    _save(image, msd / "imagesTr" / "la_003.nii.gz")
    _save(label, msd / "labelsTr" / "la_003.nii.gz")
    (msd / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "left atrium"}}))
    (case,) = folder_cases(msd)
    assert (case.image.parent.name, case.image.name, case.structure) == ("imagesTr", "la_003.nii.gz", "left atrium")
    (case,) = folder_cases(msd, {"1": "the atrium"})
    assert case.prompt == "the atrium"

    with pytest.raises(ValueError, match="no dataset.json: give a prompt spec"):
        folder_cases(flat)
    with pytest.raises(ValueError, match="no image/label pairs"):
        folder_cases(tmp_path / "Dataset001_LA" / "imagesTr", spec)


def test_shared_data_adds_ct_organs_and_lesions(shared_data):
    from TextPromptSegLib.training.commands import shared_eval_cases
    from TextPromptSegLib.training.evaluate import _read_labels

    cases = shared_eval_cases(shared_data, "val", ["liver", "left kidney", "aorta", "lesion"])
    organs = [c for c in cases if c.case_id.startswith("totalseg_small/")]
    names = json.loads((shared_data / "totalseg_small" / "class_map_total_v2.json").read_text())["total"]
    assert [(c.structure, names[str(c.label_values[0])], c.prompt) for c in organs] == [
        ("liver", "liver", "liver"), ("left kidney", "kidney_left", "left kidney"), ("aorta", "aorta", "aorta")]
    ct = organs[0].reader(organs[0].image)
    assert ct.modality == "CT" and len({c.image for c in organs}) == 1  # one image: one session for its organs
    labels = _read_labels(organs[0])
    assert labels.shape == ct.shape and all((labels == c.label_values[0]).any() for c in organs)
    lesions = [c for c in cases if c.structure == "lesion"]
    assert len(lesions) == len(list((shared_data / "recist_ct").glob("*.npz")))
    with np.load(lesions[0].label) as data:
        gts = np.asarray(data["gts"])
    lesion = _read_labels(lesions[0])
    assert lesion.shape == lesions[0].reader(lesions[0].image).shape and lesion.sum() == (gts > 0).sum() > 0


# --- the command on a folder, with a model that follows boxes and clicks -------------------------------------------


def test_evaluate_command_segments_the_boxed_and_clicked_disc(tmp_path, capsys):
    """Discs A (label 1) and B (label 2, same kind) and a square on 8 slices of 128 x 128, written on the permuted,
    flipped matrix: the box and the clicks on A's middle slice must give A, not B (text alone takes both)."""
    from TextPromptSegLib import cli

    scene = make_scene(8, 128, np.random.default_rng(7), present=(0, 7))
    volume = Volume(scene.images, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), DIRECTION, "unknown")
    folder = tmp_path / "discs"
    folder.mkdir()
    _save(volume.to_sitk(), folder / "scene_image.nii.gz")
    _save(volume.to_sitk((scene.a * 1 + scene.b * 2).astype(np.uint8)), folder / "scene_label.nii.gz")
    (tmp_path / "spec.json").write_text(json.dumps({"1": "the bright disc"}))
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--folder", str(folder), "--spec", str(tmp_path / "spec.json"), "--mode", "box",
                     "--mode", "clicks", "--model", str(FIXTURE), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "### Mode `box`" in printed and "### Mode `clicks`" in printed
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    scores = {c["mode"]: c for c in data["cases"]}
    print({m: round(c["dice"], 3) for m, c in scores.items()})
    assert set(scores) == {"box", "clicks"} and scores["box"]["start_slice"] == 3  # slices 0..7: the middle is 3
    for mode in ("box", "clicks"):
        assert scores[mode]["dice"] >= 0.85, mode
