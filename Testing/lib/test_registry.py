"""Model registry: checksummed downloads through a .part file (from a local file:// URL: tests never touch the
network), trust-on-first-use pinning, clear errors, and the bundled default."""

from __future__ import annotations

import hashlib
import json

import pytest

from TextPromptSegLib import registry


@pytest.fixture()
def local_registry(tmp_path, monkeypatch):
    payload = tmp_path / "weights.pt"
    payload.write_bytes(b"fake weights" * 1000)
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    data = {"format": 1, "default": "good", "models": {
        "good": {"kind": "sam2-official", "config": "tiny", "files": [
            {"name": "w.pt", "url": payload.as_uri(), "sha256": digest}]},
        "bad": {"kind": "sam2-official", "files": [{"name": "w.pt", "url": payload.as_uri(), "sha256": "0" * 64}]},
        "unpinned": {"kind": "sam2-official", "files": [{"name": "w.pt", "url": payload.as_uri(), "sha256": None}]},
    }}
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("TEXTPROMPTSEG_CACHE", str(tmp_path / "cache"))
    return path, payload


def test_download_verifies_checksum(local_registry):
    path, payload = local_registry
    seen = []
    kind, local, preset = registry.resolve("good", download_missing=True, path=path,
                                           progress=lambda d, t: seen.append(d))
    assert kind == "sam2-official" and preset == "tiny" and local.read_bytes() == payload.read_bytes()
    assert seen[-1] == payload.stat().st_size
    assert registry.verify("good", path) == [local]


def test_checksum_mismatch_leaves_nothing(local_registry, tmp_path):
    path, _ = local_registry
    with pytest.raises(registry.RegistryError, match="checksum mismatch"):
        registry.resolve("bad", download_missing=True, path=path)
    assert not list((tmp_path / "cache").rglob("w.pt*"))


def test_unpinned_file_is_pinned_on_first_download(local_registry):
    path, _ = local_registry
    _, local, _ = registry.resolve("unpinned", download_missing=True, path=path)
    local.write_bytes(b"tampered")
    with pytest.raises(registry.RegistryError, match="checksum"):
        registry.verify("unpinned", path)


def test_missing_download_and_unknown_names(local_registry):
    path, _ = local_registry
    with pytest.raises(registry.RegistryError, match="models download good"):
        registry.resolve("good", path=path)
    with pytest.raises(registry.RegistryError, match="unknown model"):
        registry.resolve("nope", path=path)


def test_failed_download_is_clear(tmp_path):
    with pytest.raises(registry.RegistryError, match="failed"):
        registry.download((tmp_path / "absent.pt").as_uri(), tmp_path / "x.pt", None)
    assert not (tmp_path / "x.pt.part").exists()


def test_the_real_registry_lists_official_checkpoints():
    names = registry.entries()
    assert registry.default_model_name() in names
    urls = [f["url"] for e in names.values() for f in e.files]
    assert any(u.endswith("sam2.1_hiera_small.pt") for u in urls)
