"""Model registry (``Resources/models.json``): names -> bundled folders or downloadable files with SHA-256.

Downloads go to a user cache (``TEXTPROMPTSEG_CACHE`` or ``~/.cache/textpromptseg``) through a ``.part`` file and
are verified before they are renamed into place. A registry entry whose ``sha256`` is still null (Meta publishes
no checksums) is pinned on first download: the digest is written beside the file and checked on every later
use. A local file or folder can always be given instead of a name (offline sites). A checkpoint folder with a
``SHA256SUMS`` file is checked against it wherever it comes from (bundled, registered or given as a path). No torch
import.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .resources import resource_path


class RegistryError(RuntimeError):
    """A model name is unknown, a file is missing, or a checksum does not match."""


@dataclass
class ModelEntry:
    name: str
    kind: str
    description: str
    licence: str
    config: Optional[str]
    bundled: Optional[str]
    files: list[dict[str, Any]]
    cpu_seconds_per_slice: Optional[float] = None  # measured on the project's 2-core CPU (docs/MODEL_CARD.md)


def load_registry(path: Optional[Path] = None) -> dict[str, Any]:
    return json.loads(Path(path or resource_path("models.json")).read_text(encoding="utf-8"))


def entries(path: Optional[Path] = None) -> dict[str, ModelEntry]:
    data = load_registry(path)
    return {name: ModelEntry(name, e["kind"], e.get("description", ""), e.get("licence", ""), e.get("config"),
                             e.get("bundled"), e.get("files", []), e.get("cpu_seconds_per_slice"))
            for name, e in data["models"].items()}


def default_model_name(path: Optional[Path] = None, device: Optional[str] = None) -> str:
    """The registry's default model for a device type ("cpu", "cuda", "mps"; None: the CPU's). ``default`` is a
    name, or {device type: name} with ``"*"`` for any other device: chosen per device by measured speed and quality
    (docs/MODEL_CARD.md)."""
    default = load_registry(path)["default"]
    if isinstance(default, str):
        return default
    kind = str(device or "cpu").split(":")[0]
    return default.get(kind) or default["*"]


def cache_dir() -> Path:
    return Path(os.environ.get("TEXTPROMPTSEG_CACHE", Path.home() / ".cache" / "textpromptseg"))


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, target: Path, expected_sha256: Optional[str],
             progress: Optional[Callable[[int, Optional[int]], None]] = None) -> Path:
    """Fetch ``url`` into ``target`` via ``target.part``; verify (or pin) the SHA-256. Supports file:// URLs."""
    created = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            total = getattr(response, "length", None) or int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except OSError as exc:
        _discard(part, target.parent if created else None)
        raise RegistryError(f"download of {url} failed: {exc}. Offline, download it elsewhere and pass the file "
                            f"path with --model.") from exc
    digest = sha256(part)
    if expected_sha256 and digest != expected_sha256:
        _discard(part, target.parent if created else None)
        raise RegistryError(f"checksum mismatch for {url}: expected {expected_sha256}, got {digest}")
    os.replace(part, target)
    Path(str(target) + ".sha256").write_text(digest + "\n", encoding="utf-8")
    return target


def _discard(part: Path, folder: Optional[Path]) -> None:
    """Remove a failed download's ``.part`` file and the cache folder made for it, if it is left empty."""
    part.unlink(missing_ok=True)
    if folder is not None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def verify_folder(folder: Path, label: Optional[str] = None, require_sums: bool = False) -> list[Path]:
    """A checkpoint folder: ``model.safetensors`` and ``config.json`` are there, and every file its ``SHA256SUMS``
    lists matches its digest. ``require_sums``: a folder without SHA256SUMS is an error (there is nothing to verify
    against); otherwise it passes unverified. Returns the verified files; raises RegistryError naming the file."""
    folder = Path(folder)
    label = label or str(folder)
    files = [folder / "model.safetensors", folder / "config.json"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise RegistryError(f"model {label} is missing {', '.join(missing)} in {folder}")
    pinned = folder / "SHA256SUMS"
    if not pinned.is_file():
        if require_sums:
            raise RegistryError(f"{folder} has no SHA256SUMS: there is nothing to verify it against "
                                "(scripts/bundle_model.py writes one)")
        return []
    verified = []
    for number, line in enumerate(pinned.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise RegistryError(f"{pinned} line {number} is not '<sha256>  <file name>'")
        digest, filename = parts[0].lower(), parts[1].strip().lstrip("*")
        path = folder / filename
        if not path.is_file():
            raise RegistryError(f"model {label}: {filename}, listed in SHA256SUMS, is missing")
        if sha256(path) != digest:
            raise RegistryError(f"model {label}: {filename} does not match its SHA256SUMS (the copy is damaged or "
                                "was modified); copy or download the model again")
        verified.append(path)
    return verified


def verify(name_or_path: str, path: Optional[Path] = None) -> list[Path]:
    """Check a registered model (by name) or a checkpoint given by path against its checksums; returns the verified
    files. A folder must have a ``SHA256SUMS``; a downloaded file its registry digest or the digest pinned on its
    first download (``FILE.sha256``). Raises RegistryError for an unknown name, a missing file or a mismatch."""
    candidate = Path(name_or_path)
    if candidate.exists():
        if candidate.is_dir():
            return verify_folder(candidate, require_sums=True)
        expected = _pinned(candidate)
        if not expected:
            raise RegistryError(f"{candidate} has no {candidate.name}.sha256 beside it: there is nothing to verify it "
                                "against")
        if sha256(candidate) != expected:
            raise RegistryError(f"{candidate} does not match its checksum; delete it and download again")
        return [candidate]
    known = entries(path)
    if name_or_path not in known:
        raise RegistryError(f"unknown model {name_or_path!r}; known: {', '.join(known)} (or give a path)")
    entry = known[name_or_path]
    if entry.bundled:
        return verify_folder(resource_path(entry.bundled), f"bundled model {name_or_path}")
    out = []
    for spec in entry.files:
        target = cache_dir() / entry.name / spec["name"]
        if not target.is_file():
            raise RegistryError(f"{entry.name} is not downloaded; run: textpromptseg models download {entry.name}")
        expected = spec.get("sha256") or _pinned(target)
        if expected and sha256(target) != expected:
            raise RegistryError(f"{target} does not match its checksum; delete it and download again")
        out.append(target)
    return out


def _pinned(target: Path) -> Optional[str]:
    pin = Path(str(target) + ".sha256")
    return pin.read_text(encoding="utf-8").strip() if pin.is_file() else None


def _folder_format(folder: Path) -> Optional[str]:
    try:
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError):
        return None


def model_kind(name_or_path: Optional[str], path: Optional[Path] = None) -> Optional[str]:
    """The kind of a registered model or a checkpoint path ("tgsam2", "tpp", "sam2-official"), without loading
    it (no torch); None when the name is neither registered nor an existing path."""
    name_or_path = name_or_path or default_model_name(path)
    candidate = Path(name_or_path)
    if candidate.exists():  # a path wins over a registered name, as in ``resolve``
        if candidate.suffix == ".pt":
            return "sam2-official"
        return "tpp" if _folder_format(candidate) == "textpromptseg-tpp" else "tgsam2"
    entry = entries(path).get(name_or_path)
    return entry.kind if entry else None


def resolve(name_or_path: Optional[str], download_missing: bool = False,
            progress: Optional[Callable[[int, Optional[int]], None]] = None,
            path: Optional[Path] = None) -> tuple[str, Path, Optional[str]]:
    """-> (kind, local path, config preset). A path is used as is (folder: our format; .pt: official SAM-2)."""
    name_or_path = name_or_path or default_model_name(path)
    candidate = Path(name_or_path)
    if candidate.exists():
        if candidate.is_dir():
            verify_folder(candidate)  # against its SHA256SUMS when it has one
        elif _pinned(candidate):
            verify(str(candidate))
        return model_kind(name_or_path, path), candidate, None
    known = entries(path)
    if name_or_path not in known:
        raise RegistryError(f"unknown model {name_or_path!r}; known: {', '.join(known)} (or give a path)")
    entry = known[name_or_path]
    if entry.bundled:
        verify(name_or_path, path)
        return entry.kind, resource_path(entry.bundled), entry.config
    targets = []
    for spec in entry.files:
        target = cache_dir() / entry.name / spec["name"]
        if not target.is_file():
            if not download_missing:
                raise RegistryError(f"{entry.name} is not downloaded; run: textpromptseg models download {entry.name}")
            download(spec["url"], target, spec.get("sha256"), progress)
        targets.append(target)
    verify(name_or_path, path)
    return entry.kind, targets[0], entry.config


def load_model(name_or_path: Optional[str] = None, device: str = "cpu", download_missing: bool = False,
               progress: Optional[Callable[[int, Optional[int]], None]] = None, text_encoder=None):
    """Build the registered (or given) model, ready for inference; ``download_missing`` fetches registered files
    (checksummed, ``progress(bytes done, total or None)``); ``text_encoder``: an already loaded encoder of the
    kind the checkpoint names, to share."""
    from .modeling.build import build_model

    kind, local, preset = resolve(name_or_path or default_model_name(device=device), download_missing, progress)
    if kind == "tpp":
        from .modeling.tpp import build_tpp

        return build_tpp(local, device=device, text_encoder=text_encoder)
    if kind == "sam2-official":
        return build_model(preset or "hiera_s", checkpoint=local, device=device, text_encoder=text_encoder)
    if kind != "tgsam2":
        raise RegistryError(f"model kind {kind!r} is not supported for segmentation yet")
    return build_model(local, device=device, text_encoder=text_encoder)


def checkpoint_folder(name: str, path: Optional[Path] = None) -> Optional[Path]:
    """The local checkpoint (folder, or official .pt) of a registered model when it is on disk, else None."""
    entry = entries(path).get(name)
    if entry is None:
        return None
    if entry.bundled:
        return resource_path(entry.bundled)
    targets = [cache_dir() / name / spec["name"] for spec in entry.files]
    return targets[0] if targets and targets[0].is_file() else None


def model_inputs(name_or_path: Optional[str] = None, path: Optional[Path] = None):
    """What a registered or given model reads (its checkpoint's ``"inputs"``: intensity per modality, channel sets),
    read from its config.json without torch and without building it; an official SAM-2 ``.pt`` states nothing
    (the training default). Raises RegistryError for a missing model or a bad entry."""
    from .engine.preprocess import InputSpec

    _, local, _ = resolve(name_or_path, path=path)
    config = Path(local) / "config.json"
    if not Path(local).is_dir() or not config.is_file():
        return InputSpec()
    try:
        return InputSpec.from_dict(json.loads(config.read_text(encoding="utf-8")).get("inputs"))
    except (json.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
        raise RegistryError(f"{config}: bad 'inputs' entry: {exc}") from exc
