"""What the model knows (issue 17): checkpoints record their training (structures, modalities, prompts), prompts
are compared with it through the model's own text encoder (the calibration table of the bundled model: synonyms,
paraphrases and misspellings known, neighbouring anatomy related, unrelated anatomy unknown), untrained text modules
are detected, and the CLI prints the verdict and refuses unknown prompts with --strict."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from TextPromptSegLib.cli import main
from TextPromptSegLib.familiarity import (
    KNOWN,
    RELATED,
    TEXT_IGNORED,
    UNKNOWN,
    FamiliarityThresholds,
    PresenceRule,
    TrainingRecord,
    assess,
    familiarity_checker,
    read_checkpoint_info,
    record_of,
    text_ignored,
    training_record,
)
from TextPromptSegLib.modeling.testing import build_tiny_model
from TextPromptSegLib.registry import verify
from TextPromptSegLib.resources import resource_path

TABLE = Path(__file__).resolve().parents[1] / "fixtures" / "familiarity_tgsam2_medium.json"
ROWS = json.loads(TABLE.read_text(encoding="utf-8"))["prompts"]
MEDIUM = resource_path("Models", "tgsam2-medium")


@pytest.fixture(scope="module")
def checker():
    """The bundled model's checker: its training record, its MiniLM encoder, its calibrated thresholds."""
    return familiarity_checker(MEDIUM)


def test_bundled_checkpoints_record_their_training_and_still_verify():
    medium, tpp = record_of(MEDIUM), record_of(resource_path("Models", "tpp-small-la"))
    assert [s.name for s in medium.structures] == ["left atrium", "sarcoma", "necrosis", "edema", "enhancing tumour",
                                                   "whole tumour"]
    assert set(medium.modalities) == {"MR (LGE)", "CT", "MR (FLAIR + T1c)"}
    assert "the left atrium" in medium.structures[0].prompts
    assert [s.name for s in tpp.structures] == ["left atrium"] and tpp.modalities == ("MR (LGE)",)
    calibration = read_checkpoint_info(MEDIUM)["calibration"]
    assert set(calibration) == {"familiarity", "presence"}
    verify("tgsam2-medium")  # SHA256SUMS follows the edited config.json
    verify("tpp-small-la")


def test_calibration_table_has_20_plus_prompts_of_every_kind():
    levels = [row[1] for row in ROWS]
    assert len(ROWS) >= 20 and {KNOWN, RELATED, UNKNOWN} <= set(levels)
    assert {"synonym", "paraphrase", "misspelling", "unrelated anatomy"} <= {row[3] for row in ROWS}


@pytest.mark.parametrize("prompt, level, structure, kind", ROWS, ids=[row[0] for row in ROWS])
def test_calibration_prompt_gets_its_level(checker, prompt, level, structure, kind):
    verdict = checker.check(prompt)
    assert verdict.level == level, verdict
    if structure is not None:
        assert verdict.structure == structure


def test_thresholds_come_from_the_checkpoint(checker):
    stored = read_checkpoint_info(MEDIUM)["calibration"]["familiarity"]
    assert checker.thresholds == FamiliarityThresholds(stored["known"], stored["related"], stored["spelling"])
    # the cosine rule decides paraphrases: with the known threshold above their similarity they become related
    strict = dataclasses.replace(checker.thresholds, known=0.99)
    checker_copy = familiarity_checker(MEDIUM, encoder=checker.encoder)
    checker_copy.thresholds = strict
    assert checker_copy.check("a malignant soft-tissue tumour").level == RELATED


def test_sentence_embeddings_are_unit_mean_pooled_token_features(checker):
    import torch

    feats, mask = checker.encoder(["the left atrium", "a pizza"])
    expected = torch.nn.functional.normalize((feats * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    assert np.allclose(checker.embed(["the left atrium", "a pizza"]), expected.numpy(), atol=1e-6)


def test_untrained_text_modules_are_detected(tiny_text_encoder_dir, tmp_path):
    from TextPromptSegLib.modeling.checkpoint import save_checkpoint

    model = build_tiny_model(tiny_text_encoder_dir, seed=0)  # adapters at their zero initialisation
    assert text_ignored(model)
    folder = save_checkpoint(model, tmp_path / "untrained")
    assert text_ignored(folder)
    assert [v.level for v in assess(folder, ["the liver"])] == [TEXT_IGNORED]
    assert "add a box or points" in assess(folder, ["the liver"])[0].describe()
    assert text_ignored(Path("sam2.1_hiera_small.pt"))  # an official SAM-2 checkpoint: never reads text
    with __import__("torch").no_grad():
        model.text_prompt.gate.fill_(0.01)  # one trained gate is enough for the text to matter
    assert not text_ignored(model)
    assert not text_ignored(save_checkpoint(model, tmp_path / "trained"))
    assert not text_ignored(MEDIUM)


def test_trainer_records_structures_prompts_and_modalities_merged_with_its_init(la_cases, tiny_text_encoder_dir,
                                                                                tmp_path):
    from TextPromptSegLib.modeling.build import build_model
    from TextPromptSegLib.training.data import ClipSampler
    from TextPromptSegLib.training.trainer import TrainConfig, Trainer

    config = TrainConfig(steps=1, batch_size=1, clip_length=2, checkpoint_every=1000)
    model = build_tiny_model(tiny_text_encoder_dir, seed=0)
    Trainer(model, ClipSampler(la_cases, 2), config, tmp_path / "a").fit()
    first = record_of(tmp_path / "a" / "last")
    assert [s.name for s in first.structures] == ["left atrium"]
    assert first.structures[0].modalities == ("MR (LGE)",) and first.structures[0].datasets == ("la2018",)
    assert set(first.structures[0].prompts) == set(la_cases[0].prompts)

    sarcoma = [dataclasses.replace(la_cases[0], case_id="sts/STS_999", structure="sarcoma", prompts=["a sarcoma"])]
    init = build_model(tmp_path / "a" / "last")  # a second stage starts from the first one's weights
    Trainer(init, ClipSampler(sarcoma, 2), config, tmp_path / "b").fit()
    second = record_of(tmp_path / "b" / "last")
    assert [s.name for s in second.structures] == ["left atrium", "sarcoma"]
    assert second.modalities == ("MR (LGE)", "CT")
    assert "calibration" not in read_checkpoint_info(tmp_path / "b" / "last")  # thresholds belong to other weights


def test_training_record_round_trips():
    cases = [dataclasses.make_dataclass("C", ["case_id", "structure", "prompts"])("brats2013/x", "edema", ["edema"])]
    record = training_record(cases)
    assert TrainingRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert record.summary() == "edema (MR (FLAIR + T1c))"


def test_presence_rule_counts_confident_reached_slices():
    rule = PresenceRule(threshold=2.0, min_slices=2)
    assert rule.absent(np.array([-np.inf, 1.9, 2.5, -3.0]))  # one slice above 2
    assert not rule.absent(np.array([-np.inf, 2.1, 2.5, -np.inf]))
    assert rule.absent(np.full(5, -np.inf))  # nothing reached
    assert "add a box or points" in rule.message("Liver", np.array([1.0, -1.0]))


def test_models_list_shows_what_each_model_was_trained_on(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "trained on: left atrium (MR (LGE)); sarcoma (CT); necrosis (MR (FLAIR + T1c))" in out
    assert "trained on: left atrium (MR (LGE)); 8 training prompts" in out  # tpp-small-la
    assert "text is ignored, visual prompts (box, points) are needed" in out  # the official SAM-2.1 entries


def test_cli_prints_familiarity_and_strict_refuses_unknown_prompts_before_reading_input(tmp_path, capsys):
    missing = tmp_path / "not_read.nii.gz"  # --strict refuses before the input is read
    code = main(["segment", str(missing), "-p", "the left atrium", "-p", "the liver", "-o", str(tmp_path / "o.nii.gz"),
                 "--strict"])
    captured = capsys.readouterr()
    assert code == 2
    assert "'the left atrium': known: left atrium" in captured.out
    assert "'the liver': unknown to this model" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("textpromptseg:")]  # not the HF bar
    assert len(errors) == 1 and errors[0].startswith("textpromptseg: error: --strict: refusing 'the liver'")
    assert not (tmp_path / "o.nii.gz").exists()
    # without --strict the same prompts go on to the input (which is missing here)
    assert main(["segment", str(missing), "-p", "the liver", "-o", str(tmp_path / "o.nii.gz")]) == 2
    assert "not_read.nii.gz" in capsys.readouterr().err
