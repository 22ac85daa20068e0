"""The on-disk cache: ``data_dir/<name>/`` holds a dataset's compact files and a manifest.

The manifest is written last, after every cached file is in place, and records the sha256 of
each; a folder without one is an interrupted fetch. Files are written under a temp name and
renamed, so no half-written file ever looks valid.
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


class DataMissing(RuntimeError):
    """A dataset was asked for that has not been fetched into the cache (one-line message)."""

    def __init__(self, name: str, data_dir: Path) -> None:
        super().__init__(
            f"dataset '{name}' is not in {data_dir}; fetch it with: {fetch_command(name, data_dir)}"
        )
        self.name = name
        self.data_dir = data_dir


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
    """Record the verified archive and the sha256 of every cached file (for ``status``)."""
    manifest = {
        "name": name,
        "source": source,
        "source_sha256": source_sha,
        "files": {f: sha256(ds_dir / f) for f in sorted(files)},
    }
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(ds_dir / MANIFEST, lambda tmp: tmp.write_text(text))


def read_manifest(ds_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((ds_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def verify(ds_dir: Path) -> bool | None:
    """True if every file in the manifest exists with its recorded sha256; None if no manifest."""
    manifest = read_manifest(ds_dir)
    if manifest is None:
        return None
    for fname, digest in manifest.get("files", {}).items():
        p = ds_dir / fname
        if not p.is_file() or sha256(p) != digest:
            return False
    return bool(manifest.get("files"))


def load_cache(name: str, data_dir: Path, cache_file: str) -> dict[str, Any]:
    """The cached payload of ``name``; raises DataMissing if it was never fetched."""
    ds_dir = Path(data_dir) / name
    path = ds_dir / cache_file
    if read_manifest(ds_dir) is None or not path.is_file():
        raise DataMissing(name, Path(data_dir))
    return torch.load(path, weights_only=True)
