"""The on-disk cache: ``data_dir/<name>/`` holds a dataset's compact files and a manifest.

The manifest is written last, after every cached file is in place, and records the size and
sha256 of each; a folder without one is an interrupted fetch. Files are written under a temp
name and renamed, so no half-written file ever looks valid.

Loading trusts nothing: the cache file is checked against the manifest (size, then sha256)
before it is unpickled, so a damaged or truncated file is one line naming the dataset and the
command that fetches it again, never silent training on bad data. The check is a full sha256
because it is cheap: about 40 ms for MNIST's 55 MB here (hashlib uses the CPU's SHA
instructions), next to ~45 ms for torch.load and ~0.7 s for the whole load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"


def default_data_dir() -> Path:
    """Where ``afd data fetch`` caches when given no --data-dir (conf/config.yaml agrees)."""
    return Path(os.environ.get("AFD_DATA_DIR", "~/.cache/afd-cli")).expanduser()


def fetch_command(name: str, data_dir: Path) -> str:
    """The command that (re)fetches ``name`` into ``data_dir``; --data-dir only when needed."""
    cmd = f"afd data fetch {name}"
    data_dir = Path(data_dir).expanduser()
    if data_dir.resolve() != default_data_dir().resolve():
        cmd += f" --data-dir {shlex.quote(str(data_dir))}"
    return cmd


class DataError(RuntimeError):
    """A dataset cannot be used as it is in the cache; the message is one line that says why
    and which command fixes it."""


class DataMissing(DataError):
    """A dataset was asked for that has not been fetched into the cache (one-line message)."""

    def __init__(self, name: str, data_dir: Path) -> None:
        super().__init__(
            f"dataset '{name}' is not in {data_dir}; fetch it with: {fetch_command(name, data_dir)}"
        )
        self.name = name
        self.data_dir = data_dir


class DataDamaged(DataError):
    """A cached file differs from what the fetch wrote (edited, truncated, deleted)."""

    def __init__(self, name: str, data_dir: Path, problem: str) -> None:
        super().__init__(
            f"dataset '{name}' in {data_dir} is damaged: {problem}; fetch it again with: "
            f"{fetch_command(name, data_dir)}"
        )
        self.name = name
        self.data_dir = data_dir
        self.problem = problem


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temp name in the same folder, then rename: no half file ever looks valid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_manifest(
    ds_dir: Path, name: str, source: str, files: Iterable[str], source_sha: str
) -> None:
    """Record the verified archive and the size and sha256 of every cached file."""
    names = sorted(files)
    manifest = {
        "name": name,
        "source": source,
        "source_sha256": source_sha,
        "files": {f: sha256(ds_dir / f) for f in names},
        "sizes": {f: (ds_dir / f).stat().st_size for f in names},
    }
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(ds_dir / MANIFEST, lambda tmp: tmp.write_text(text))


def read_manifest(ds_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((ds_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _manifest(name: str, data_dir: Path) -> dict[str, Any]:
    """The manifest of a fetched dataset; DataMissing if there is none (never fetched, or the
    fetch was interrupted), DataDamaged if it cannot be read."""
    path = Path(data_dir) / name / MANIFEST
    if not path.exists():
        raise DataMissing(name, data_dir)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else "not JSON"
        raise DataDamaged(name, data_dir, f"{MANIFEST} cannot be read ({why})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise DataDamaged(name, data_dir, f"{MANIFEST} lists no files")
    return manifest


def _size_problem(fname: str, got: int, manifest: dict[str, Any]) -> str | None:
    want = (manifest.get("sizes") or {}).get(fname)  # manifests before sizes were recorded
    if want is None or got == want:
        return None
    cut = " (truncated)" if got < want else ""
    return f"{fname} has {got:,} bytes, {want:,} when fetched{cut}"


def _hash_problem(fname: str, digest: str, manifest: dict[str, Any]) -> str | None:
    if digest == manifest["files"][fname]:
        return None
    return f"{fname} differs from the fetched file (sha256 mismatch)"


def check_files(name: str, data_dir: Path) -> None:
    """Check every file the manifest lists (size, then sha256); raise DataMissing or
    DataDamaged, one line each. What ``afd data list`` shows as MISMATCH fails here."""
    manifest = _manifest(name, data_dir)
    ds_dir = Path(data_dir) / name
    for fname in manifest["files"]:
        p = ds_dir / fname
        if not p.is_file():
            raise DataDamaged(name, data_dir, f"{fname} is missing")
        problem = _size_problem(fname, p.stat().st_size, manifest)
        problem = problem or _hash_problem(fname, sha256(p), manifest)
        if problem:
            raise DataDamaged(name, data_dir, problem)


def verified(ds_dir: Path) -> bool | None:
    """True if every file in the manifest is as fetched; None if there is no manifest."""
    try:
        check_files(ds_dir.name, ds_dir.parent)
    except DataMissing:
        return None
    except DataDamaged:
        return False
    return True


def load_cache(name: str, data_dir: Path, cache_file: str) -> dict[str, Any]:
    """The cached payload of ``name``, verified; raises DataMissing or DataDamaged.

    Size, sha256 and unpickling all go through one open file, so what is checked is what is
    loaded even if the file is replaced meanwhile (a fetch renames a new file into place).
    """
    manifest = _manifest(name, data_dir)
    if cache_file not in manifest["files"]:
        raise DataDamaged(name, data_dir, f"{MANIFEST} does not list {cache_file}")
    path = Path(data_dir) / name / cache_file
    if not path.is_file():
        raise DataDamaged(name, data_dir, f"{cache_file} is missing")
    with open(path, "rb") as f:
        problem = _size_problem(cache_file, os.fstat(f.fileno()).st_size, manifest)
        if not problem:
            problem = _hash_problem(
                cache_file, hashlib.file_digest(f, "sha256").hexdigest(), manifest
            )
        if problem:
            raise DataDamaged(name, data_dir, problem)
        f.seek(0)
        try:
            return torch.load(f, weights_only=True)
        except Exception as e:  # verified yet unreadable: written by an incompatible torch?
            first = str(e).split(". ")[0].splitlines()[0] if str(e) else ""
            why = f"{type(e).__name__}: {first}" if first else type(e).__name__
            raise DataDamaged(name, data_dir, f"{cache_file} cannot be loaded ({why})") from None
