"""The integrity of client-state files on disk: their CRC-32, the errors that name a missing
or damaged file, and the check of a checkpoint's index before a resume.

Kept apart from :mod:`afd_cli.state` (which decides what lives in memory and what on disk)
so the checkpoint reader can check an index without a store. CRC-32, not a cryptographic
hash: the damage is not adversarial, and zlib's runs at ~3.7 GB/s here, 3.5x sha256
(``docs/concepts/client-state.md``).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

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
            path = directory / n / f"c{c}_g{g}.bin"
            try:
                ok = path.stat().st_size == size
            except OSError:
                raise StateFileError(f"{path} is missing") from None
            if not ok:
                raise StateFileError(f"{path} is not {size} bytes")
            crc = recorded_crc(sums.get(n, {}), c)
            if crc is not None and file_checksum(path) != crc:
                raise StateChecksumError(path)
