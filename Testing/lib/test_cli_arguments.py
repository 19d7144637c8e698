"""Every bad argument of the command line (issue 19): exit status 2, one line on stderr, no output file, and no model
built. Checksums: a checkpoint folder with a SHA256SUMS is verified whether it is named or given by path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from TextPromptSegLib import registry
from TextPromptSegLib.cli import main
from TextPromptSegLib.resources import resource_path

BUNDLED = resource_path("Models", "tgsam2-medium")


@pytest.fixture(scope="module")
def small_ct(shared_data, tmp_path_factory) -> Path:
    """A real float32 sarcoma CT cut to 10 slices."""
    image = sitk.ReadImage(str(shared_data / "sts_sarcoma" / "STS_002" / "CT_image.nii.gz"))[:, :, 20:30]
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def flipped_copy(tmp_path_factory) -> Path:
    """The bundled checkpoint copied with one byte of its weights flipped (its SHA256SUMS unchanged)."""
    folder = tmp_path_factory.mktemp("flipped") / "tgsam2-medium"
    shutil.copytree(BUNDLED, folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    return folder


@pytest.fixture(scope="module")
def unsummed_copy(tmp_path_factory) -> Path:
    """The bundled checkpoint without its SHA256SUMS (as a training run's folder is)."""
    folder = tmp_path_factory.mktemp("unsummed") / "ckpt"
    shutil.copytree(BUNDLED, folder)
    (folder / "SHA256SUMS").unlink()
    return folder


@pytest.fixture()
def no_model_builds(monkeypatch):
    """Building any model fails the test: argument errors must come before a model is loaded."""
    from TextPromptSegLib.modeling import build, tpp

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were checked")

    monkeypatch.setattr(build, "build_model", refuse)
    monkeypatch.setattr(tpp, "build_tpp", refuse)


SEGMENT = ["segment", "{ct}", "-p", "a soft-tissue sarcoma", "-o", "{out}/o.seg.nrrd"]
CASES = [  # (argv, part of the message)
    (SEGMENT + ["--device", "gpu"], "unknown device 'gpu'"),
    (SEGMENT + ["--device", "xla"], "not supported"),
    (SEGMENT + ["--device", "cuda:99"], "CUDA"),
    (SEGMENT + ["--precision", "fp64"], "invalid choice"),
    (SEGMENT + ["--slice-range", "30:10"], "reversed"),
    (SEGMENT + ["--slice-range", "8:30"], "must lie within 0:9 (its 10 slices"),
    (SEGMENT + ["--slice-range", "3-8"], "FIRST:LAST"),
    (SEGMENT + ["--start-slice", "50"], "--start-slice 50 is outside the 10 slices"),
    (SEGMENT + ["--start-slice", "-1"], "start at 0"),
    (SEGMENT + ["--start-slice", "2", "--slice-range", "4:7"], "outside the slice range 4:7"),
    (SEGMENT + ["--window", "cerebellum"], "unknown window 'cerebellum'"),
    (SEGMENT + ["--window", "40,0"], "width must be positive"),
    (SEGMENT + ["--window", "40,400,2"], "CENTRE,WIDTH"),
    (["segment", "{ct}", "-p", "a soft-tissue sarcoma", "-o", "{blocker}/sub/o.seg.nrrd"], "cannot be created"),
    (SEGMENT + ["--overlay", "{blocker}/o.png"], "cannot be created"),
    (SEGMENT + ["--overlay", "{out}/o.jpg"], ".png"),
    (SEGMENT + ["--model", "{flipped}"], "model.safetensors does not match its SHA256SUMS"),
    (["demo", "--output", "{blocker}"], "cannot be created"),
    (["demo", "--device", "gpu", "--output", "{out}/demo"], "unknown device"),
    (["models", "verify", "nosuch"], "unknown model 'nosuch'"),
    (["models", "verify", "{flipped}"], "model.safetensors does not match its SHA256SUMS"),
    (["models", "verify", "{unsummed}"], "no SHA256SUMS"),
    (["models", "verify"], "needs a model name"),
    (["evaluate", "--model", "nosuch", "--data", "{data}", "--out", "{out}/ev"], "unknown model"),
    (["evaluate", "--device", "gpu", "--data", "{data}", "--out", "{out}/ev"], "unknown device"),
    (["evaluate", "--model", "{flipped}", "--data", "{data}", "--out", "{out}/ev"], "does not match"),
    (["segment", "{brats}/flair.nii.gz", "--channel", "{brats}/t1c_moved.nii.gz", "-p", "the enhancing tumour", "-o",
      "{out}/o.seg.nrrd"], "t1c_moved.nii.gz and flair.nii.gz lie on different voxel grids (spacing"),
    (["segment", "--channel", "{brats}/flair.nii.gz", "--channel", "{brats}/t1c.nii.gz", "--channel",
      "{brats}/t1c.nii.gz", "-p", "the enhancing tumour", "-o", "{out}/o.seg.nrrd"], "reads FLAIR + T1c, not 3"),
    (["segment", "--channel", "{brats}/flair.nii.gz", "--channel", "{brats}/t1c.nii.gz", "-p", "the left atrium",
      "-o", "{out}/o.seg.nrrd", "--model", "tpp-small-la"], "the model reads one image, not 2 sequences"),
    (["segment", "-p", "the enhancing tumour", "-o", "{out}/o.seg.nrrd"], "needs an input image"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a[1:] if a[0] == "segment" else a)[-48:]
                                                     for a, _ in CASES])
def test_bad_argument_exit_2_one_line_no_file_no_model(args, message, small_ct, flipped_copy, unsummed_copy,
                                                       brats_small, shared_data, tmp_path, capsys, no_model_builds):
    out = tmp_path / "out"
    out.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is needed")
    before = sorted(tmp_path.rglob("*"))
    argv = [a.format(ct=small_ct, out=out, blocker=blocker, flipped=flipped_copy, unsummed=unsummed_copy,
                     data=shared_data, brats=brats_small) for a in args]
    code = _run(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    print(f"| `{' '.join(args)}` | {code} | {lines[0] if lines else ''} |")  # the note's table (pytest -s)
    assert code == 2, captured.err
    assert len(lines) == 1 and message in lines[0], lines
    assert "Traceback" not in captured.err
    assert sorted(tmp_path.rglob("*")) == before  # no output file, folder or partial file
    assert not captured.out


def _run(argv: list[str]) -> int:
    """main's exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_a_flipped_byte_is_caught_wherever_the_folder_comes_from(flipped_copy, monkeypatch):
    """The same copy is rejected by path (resolve and verify) and as a registered bundled model."""
    with pytest.raises(registry.RegistryError, match="model.safetensors does not match its SHA256SUMS"):
        registry.resolve(str(flipped_copy))
    with pytest.raises(registry.RegistryError, match="does not match"):
        registry.verify(str(flipped_copy))
    monkeypatch.setenv("TEXTPROMPTSEG_RESOURCES", str(flipped_copy.parents[1]))
    (flipped_copy.parents[1] / "models.json").write_text(resource_path("models.json").read_text())
    (flipped_copy.parents[1] / "Models").mkdir(exist_ok=True)
    shutil.copytree(flipped_copy, flipped_copy.parents[1] / "Models" / "tgsam2-medium", dirs_exist_ok=True)
    with pytest.raises(registry.RegistryError, match="bundled model tgsam2-medium: model.safetensors does not match"):
        registry.resolve("tgsam2-medium")


def test_intact_folders_verify(unsummed_copy, tmp_path, capsys):
    assert main(["models", "verify", str(BUNDLED)]) == 0
    assert main(["models", "verify", "tgsam2-medium"]) == 0
    assert capsys.readouterr().out.count("SHA-256 matches") == 4
    kind, local, _ = registry.resolve(str(unsummed_copy))  # a folder without SHA256SUMS still loads
    assert kind == "tgsam2" and local == unsummed_copy


def test_failed_download_leaves_no_cache_folder(tmp_path):
    target = tmp_path / "cache" / "some-model" / "w.pt"
    with pytest.raises(registry.RegistryError, match="failed"):
        registry.download((tmp_path / "absent.pt").as_uri(), target, None)
    assert not (tmp_path / "cache" / "some-model").exists()
    payload = tmp_path / "w.pt"
    payload.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(registry.RegistryError, match="checksum mismatch"):
        registry.download(payload.as_uri(), target, "0" * 64)
    assert not (tmp_path / "cache" / "some-model").exists()


def test_python_dash_m_reports_subcommand_errors_in_one_line(shared_data, tmp_path):
    """``python -m TextPromptSegLib.cli``: an error raised in a subcommand module (evaluate) is still one line, exit 2
    (the module run as __main__ must catch the UserError those modules import)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "TextPromptSegLib.cli", "evaluate", "--device", "gpu", "--data",
                          str(shared_data), "--out", str(tmp_path / "ev")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == "textpromptseg: error: unknown device 'gpu'; use auto, cpu, cuda, cuda:N or mps"
    assert not (tmp_path / "ev").exists()


def test_progress_starts_with_the_model_and_says_cpu_once(small_ct, tiny_model, tmp_path, capfd, caplog):
    """No empty '0slice' bar before the run; the CPU estimate reads 'on the CPU' (not '... on cpu')."""
    import logging

    from TextPromptSegLib.modeling.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny")
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="textpromptseg"):
        assert main(["segment", str(small_ct), "-p", "a soft-tissue sarcoma", "-o", str(tmp_path / "o.nii.gz"),
                     "--model", str(checkpoint), "--device", "cpu", "--start-slice", "4"]) == 0
    err = capfd.readouterr().err
    assert "0slice [" not in err  # tqdm without a total draws "0slice [00:00, ?slice/s]"
    assert err.lstrip("\r").startswith("propagate")  # the first bar is the model's first phase
    estimate = [r.getMessage() for r in caplog.records if r.getMessage().startswith("estimated")]
    assert len(estimate) == 1 and estimate[0].endswith("over 10 slices on the CPU (measured on this machine)"), estimate


def test_info_names_every_package_version(capsys):
    from importlib.metadata import version

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"  sam2 {version('sam2')}" in out and "?" not in out


def test_channels_make_the_composite_the_model_reads(brats_small, tmp_path, caplog):
    """--channel FLAIR --channel T1C: the bundled model segments the composite on the input grid; a single sequence
    with a BraTS prompt runs but says which composite the model was trained on."""
    import logging

    out = tmp_path / "et.nii.gz"
    with caplog.at_level(logging.INFO, logger="textpromptseg"):
        assert main(["segment", "--channel", str(brats_small / "flair.nii.gz"), "--channel",
                     str(brats_small / "t1c.nii.gz"), "-p", "the enhancing tumour", "-o", str(out),
                     "--start-slice", "3"]) == 0
    assert any("as the model's FLAIR + T1c composite" in r.getMessage() for r in caplog.records)
    labels = sitk.ReadImage(str(out))
    assert labels.GetSize() == (160, 160, 6) and labels.GetSpacing() == sitk.ReadImage(
        str(brats_small / "flair.nii.gz")).GetSpacing()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="textpromptseg"):
        assert main(["segment", str(brats_small / "t1c.nii.gz"), "-p", "the enhancing tumour", "-o",
                     str(tmp_path / "single.nii.gz"), "--start-slice", "3"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and "FLAIR + T1c composite" in warned[0] and "--channel T1c" in warned[0]


def test_models_download_shows_bytes_and_verifies(tmp_path, monkeypatch, capfd):
    """`models download` draws a byte bar (not a 'slice' bar) and reports the verified file."""
    import hashlib
    import json

    payload = tmp_path / "weights.pt"
    payload.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    resources = tmp_path / "resources"
    resources.mkdir()
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    entry = {"kind": "sam2-official", "config": "tiny",
             "files": [{"name": "w.pt", "url": payload.as_uri(), "sha256": digest}]}
    (resources / "models.json").write_text(json.dumps({"format": 1, "default": "good", "models": {"good": entry}}))
    monkeypatch.setenv("TEXTPROMPTSEG_RESOURCES", str(resources))
    monkeypatch.setenv("TEXTPROMPTSEG_CACHE", str(tmp_path / "cache"))
    assert main(["models", "download", "good"]) == 0
    captured = capfd.readouterr()
    assert "slice" not in captured.err and "1.00M/1.00M" in captured.err and "download" in captured.err
    assert f"ok {tmp_path / 'cache' / 'good' / 'w.pt'} (SHA-256 matches)" in captured.out
