"""Client-state files on disk: where a slot's file is, how it is written and read back whole
(:class:`SlotFiles`), its CRC-32, the errors that name a missing or damaged file, and the check
of a checkpoint's index before a resume.

Kept apart from :mod:`afd_cli.state` (which decides what lives in memory and what on disk)
so the checkpoint reader can check an index without a store. CRC-32, not a cryptographic
hash: the damage is not adversarial, and zlib's runs at ~3.7 GB/s here, 3.5x sha256
(``docs/concepts/client-state.md``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
CHECKSUM = "crc32"
MB = 2**20
CHUNK = 16 * MB  # files are checked in pieces of this size, not read whole


class StateFileError(ValueError):
    """A checkpoint's index names a state file that is missing or has the wrong size."""


class StateChecksumError(StateFileError):
    """A state file's bytes do not match the CRC-32 recorded when it was written (damaged on
    disk). ``committed``: the last saved index names it, so resuming from that checkpoint
    cannot help either."""

    def __init__(self, path: Path, committed: bool = True) -> None:
        super().__init__(f"{path} does not match its checksum (damaged)")
        self.path, self.committed = path, committed


def checksum(data: Any, crc: int = 0) -> int:
    """CRC-32 of a bytes-like object (continuing ``crc``)."""
    return zlib.crc32(data, crc)


def file_checksum(path: Path) -> int:
    """CRC-32 of a file, read in :data:`CHUNK` pieces."""
    crc = 0
    with path.open("rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            crc = checksum(view[:n], crc)
    return crc


def slot_path(directory: Path, ns: str, client: int, gen: int) -> Path:
    """The file of generation ``gen`` of ``client``'s slot in namespace ``ns``."""
    return directory / ns / f"c{client}_g{gen}.bin"


class SlotFiles:
    """A store's slot files, in ``directory`` or, if none is given, in a temporary directory
    made on first use and removed with this object. A file is written once, whole, and its
    CRC-32 returned for the caller to keep; it is read back only at the size and CRC-32 it was
    written with. Counts the bytes that went through files (a spill's real cost)."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self._dir = Path(directory) if directory is not None else None
        self.bytes_written = 0
        self.bytes_read = 0

    @property
    def directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="afd-state-"))
            weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        return self._dir

    @property
    def exist(self) -> bool:
        """Whether the directory exists (asked without making a temporary one)."""
        return self._dir is not None and self._dir.exists()

    def path(self, ns: str, client: int, gen: int) -> Path:
        return slot_path(self.directory, ns, client, gen)

    def write(self, path: Path, values: torch.Tensor) -> int:
        """Write ``values``' bytes to the new file ``path``; return their CRC-32."""
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = values.detach().cpu().contiguous().view(torch.uint8).numpy()
        with path.open("wb") as f:
            raw.tofile(f)
        self.bytes_written += raw.nbytes
        return checksum(raw)

    def read(
        self, path: Path, numel: int, dtype: torch.dtype, crc: int | None, committed: bool
    ) -> torch.Tensor:
        """The ``numel`` values of ``dtype`` in ``path``, refused unless the file has their size
        and the CRC-32 ``crc`` (when known; ``committed``: a saved index names the file)."""
        raw = np.fromfile(path, dtype=np.uint8)
        nbytes = numel * dtype.itemsize
        if raw.nbytes != nbytes:
            raise StateFileError(f"{path} holds {raw.nbytes} bytes, not {nbytes}")
        if crc is not None and checksum(raw) != crc:
            raise StateChecksumError(path, committed=committed)
        self.bytes_read += raw.nbytes
        return torch.from_numpy(raw).view(dtype)

    def disk_bytes(self) -> int:
        """Bytes of slot files on disk now."""
        return sum(p.stat().st_size for p in self._dir.rglob("*.bin")) if self.exist else 0

    def tidy(self, keep: set[Path]) -> None:
        """Delete every slot file but ``keep`` (those a checkpoint's index names)."""
        if self.exist:
            for p in self.directory.rglob("*.bin"):
                if p not in keep:
                    p.unlink()

    def remove(self) -> None:
        """Delete the directory and every file in it (a run starting over)."""
        if self.exist:
            shutil.rmtree(self.directory)


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(files: list[Path]) -> None:
    """fsync ``files``, then the directories that name them and their parent (the state
    directory): a power cut, not only a kill, then leaves every one of them whole."""
    dirs = sorted({f.parent for f in files})
    for path in [*files, *dirs, *sorted({d.parent for d in dirs})]:
        fsync_path(path)


def recorded_crc(sums: dict[Any, Any], client: Any) -> int | None:
    crc = sums.get(client)
    return None if crc is None else int(crc)


def check_index(index: Any, directory: Path) -> None:
    """Raise :class:`StateFileError` unless every file ``index`` names is there, whole: its
    size, and its CRC-32 where the index records one (:class:`StateChecksumError`). Reads
    every file the index names."""
    try:
        spaces, slots = index["spaces"], index["slots"]
        int(index["next_gen"])
        sums = index.get("sums", {})
        if sums and index.get("checksum") != CHECKSUM:
            raise ValueError(f"checksum {index.get('checksum')!r}")
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise StateFileError(f"the state index is damaged ({type(e).__name__})") from None
    for n, clients in slots.items():
        size = int(spaces[n]["numel"]) * DTYPES[spaces[n]["dtype"]].itemsize
        for c, g in clients.items():
            path = slot_path(directory, n, c, g)
            try:
                ok = path.stat().st_size == size
            except OSError:
                raise StateFileError(f"{path} is missing") from None
            if not ok:
                raise StateFileError(f"{path} is not {size} bytes")
            crc = recorded_crc(sums.get(n, {}), c)
            if crc is not None and file_checksum(path) != crc:
                raise StateChecksumError(path)
