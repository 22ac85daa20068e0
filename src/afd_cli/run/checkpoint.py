"""``checkpoint.pt``: writing it, reading it back, and what a torchrun run needs of it.

A checkpoint holds the config it was made with (for the resume check), the global weights,
the strategy's, compressor's and server step's state, the :class:`~.state.RunState`, the
round's rows (``row``: see :mod:`afd_cli.metrics`) and the index of the run's client-state
files (``store``). It is incremental: :meth:`StateStore.commit` writes only the per-client
state that changed since it was last written, under new file names, then ``checkpoint.pt`` is
replaced atomically (tmp file + ``os.replace``) and only then are the files it no longer names
deleted. It is written before the round's rows, so the row's ``wall_s`` includes it; it holds
that row too, so a kill between the two appends it on resume instead of recomputing the run.

The file is :data:`MAGIC`, a header (format version, CRC-32 and length of the payload) and
the ``torch.save`` bytes, so a checkpoint carries its own checksum: bytes changed in place (a
disk, a copy) are refused on load instead of resuming from wrong weights. A checkpoint from
before the header (a plain torch zip) still loads, unchecked. With ``state.fsync`` the
file is on the disk before it replaces the previous one, and the replace before the files the
previous index named are deleted.

Under torchrun every process runs the loop with its share of the clients: each commits its
clients' state files into the run's ``state/`` (:mod:`afd_cli.stateindex`), rank 0 gathers
the small indexes, joins them and writes the checkpoint, and only once it has said so does
any process delete the files the new index replaced. The checkpoint is the same as one
process's, so any number of processes resumes it. (Checkpoints from before, with every
client's state inline, still load: each process keeps its share.)
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from .. import compression, registry, strategies
from ..config import ConfigError, RootConfig
from ..federated import distributed, team
from ..federated.round import SOLO
from ..state import StateStore
from ..statefiles import (
    CHUNK,
    StateChecksumError,
    StateFileError,
    check_index,
    checksum,
    fsync_path,
)
from .rundir import STATE_DIR, tmp

if TYPE_CHECKING:
    from .build import Simulation
    from .state import RunState


MAGIC = b"AFDCKPT\n"  # not a zip's "PK\x03\x04": tells the two formats apart
VERSION = 1
HEADER = struct.Struct("<8sIIQ")  # magic, version, CRC-32 of the payload, payload bytes


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read: one line naming the file."""


class _Damaged(Exception):
    """The payload does not match the header's checksum."""


class _Summing:
    """A write-only file that keeps the CRC-32 and length of what passes through it, so
    ``torch.save`` streams into the file without a second copy in memory."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.crc, self.size = f, 0, 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.crc, self.size = checksum(view, self.crc), self.size + view.nbytes
        return self.f.write(view)

    def flush(self) -> None:
        self.f.flush()


class _Window(io.RawIOBase):
    """The payload of an open checkpoint as a file of its own (positions from its start), for
    ``torch.load``, which reads a zip by absolute offsets."""

    def __init__(self, f: IO[bytes], start: int) -> None:
        self.f, self.start = f, start
        f.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.f.tell() - self.start

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        return self.f.seek(pos + self.start if whence == io.SEEK_SET else pos, whence) - self.start

    def readinto(self, b: Any) -> int:
        return self.f.readinto(b)  # type: ignore[attr-defined]


def _read(path: Path) -> Any:
    """The checkpoint's object: the payload checked against its header, or (the format before
    the header) a plain ``torch.save`` file, loaded as it is."""
    # host first: generator states and client buffers must stay CPU tensors on a GPU run
    with path.open("rb") as f:
        head = f.read(HEADER.size)
        if not head.startswith(MAGIC):
            f.seek(0)
            return torch.load(f, map_location="cpu", weights_only=False)
        if len(head) < HEADER.size:
            raise ValueError("cut short in its header")
        _, version, crc, size = HEADER.unpack(head)
        if version != VERSION:
            raise ValueError(f"format version {version}; this afd reads {VERSION}")
        got, n, buf = 0, 0, bytearray(CHUNK)
        view = memoryview(buf)
        while k := f.readinto(buf):  # type: ignore[attr-defined]
            got, n = checksum(view[:k], got), n + k
        if n != size:  # cut short (or appended to): what the header says is not there
            raise ValueError(f"{HEADER.size + n} bytes, its header says {HEADER.size + size}")
        if got != crc:
            raise _Damaged
        return torch.load(_Window(f, HEADER.size), map_location="cpu", weights_only=False)


def load(path: Path) -> dict[str, Any]:
    """A run's checkpoint, checked: anything wrong with the file (cut, garbage, not a
    checkpoint, bytes that do not match its checksum, a state file it names missing or
    damaged) is a :class:`CheckpointError` naming the file and how to start over."""
    fix = f"start over with: afd resume {path.parent} --from-scratch"
    try:
        ckpt = _read(path)
        if not isinstance(ckpt, dict) or not {"config", "weights", "state"} <= ckpt.keys():
            raise ValueError("not an afd checkpoint")
        int(ckpt["state"]["round"])
        # checkpoints from before state.* existed kept everything in fp32
        ckpt["config"].setdefault("state", {"dtype": "fp32"})
        # before the server step was its own part, its momentum was in the compressor's state
        if "server" not in ckpt and isinstance(ckpt.get("compressor"), dict):
            m = ckpt["compressor"].pop("server_m", None)
            ckpt["server"] = {"server_m": m} if m is not None else {}
    except _Damaged:
        raise CheckpointError(f"{path} does not match its checksum (damaged); {fix}") from None
    except Exception as e:
        why = " ".join(str(e).split()) or type(e).__name__
        why = why if len(why) <= 80 else why[:79].rsplit(" ", 1)[0] + " ..."
        raise CheckpointError(
            f"{path} is damaged and cannot be read ({type(e).__name__}: {why}); {fix}"
        ) from None
    if "store" in ckpt:
        try:
            check_index(ckpt["store"], path.parent / STATE_DIR)
        except StateChecksumError as e:
            raise CheckpointError(
                f"{e.path} does not match its checksum in {path} (damaged); {fix}"
            ) from None
        except StateFileError as e:
            raise CheckpointError(
                f"{path} names client state that cannot be read ({e}); {fix}"
            ) from None
    return ckpt


def save(
    path: Path | None,
    config: dict[str, Any],
    sim: Simulation,
    state: RunState,
    last: dict[str, Any],
) -> int:
    """Write the checkpoint (see the module docstring); returns the bytes it wrote (every
    process's state files, and the file).

    ``config``: what the resume check compares (:func:`afd_cli.run.resume.comparable`).
    ``path`` None (a torchrun process other than rank 0): commit this process's clients and
    hand its index to rank 0.
    """
    fed = sim.fed
    before = sim.store.bytes_written
    index: dict[str, Any] | None = sim.store.commit()  # changed state, under new file names
    written = sim.store.bytes_written - before
    if fed.team is not SOLO:  # every process's files are written: rank 0 joins the indexes
        index, written = team.joined_index(index, written)
    with sim.store.references():  # per-client state: only its namespace, the index has it
        strategy_state, compressor_state = fed.strategy.state_dict(), fed.compressor.state_dict()

    def write() -> int:
        assert path is not None and index is not None
        ckpt = {
            "config": config,
            "weights": {k: w.cpu() for k, w in sim.weights.items()},
            "strategy": strategy_state,
            "compressor": compressor_state,
            "server": fed.server.state_dict(),
            "state": state.to_dict(),
            "store": index,
            "row": dict(last),
        }
        return _replace(path, ckpt, sim.store.fsync)

    # every process waits for rank 0's file (or its failure) before deleting replaced files
    written += distributed.from_lead(write, "writing the checkpoint")
    sim.store.committed()  # only now: the files the new index no longer names
    return written


def _replace(path: Path, ckpt: dict[str, Any], fsync: bool) -> int:
    """Write ``ckpt`` with its header to a tmp file, then put it in place atomically; with
    ``fsync`` both reach the disk before the caller deletes what the old index named."""
    part = path.with_name(tmp(path.name))
    with part.open("wb") as f:
        f.write(bytes(HEADER.size))  # the header once the payload's checksum is known
        out = _Summing(f)
        torch.save(ckpt, out)
        f.seek(0)
        f.write(HEADER.pack(MAGIC, VERSION, out.crc, out.size))
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(part, path)
    if fsync:
        fsync_path(path.parent)
    return path.stat().st_size


def restore(sim: Simulation, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint's weights and plug-in state into ``sim`` (its store restored or
    inlined already)."""
    with torch.no_grad():
        for k, w in sim.weights.items():
            w.copy_(ckpt["weights"][k])
    fed = sim.fed
    fed.strategy.load_state_dict(ckpt["strategy"])
    fed.compressor.load_state_dict(team.my_share(ckpt["compressor"]))
    fed.server.load_state_dict(ckpt.get("server", {}))


def inline_store(ckpt: dict[str, Any], cfg: RootConfig, sim: Simulation, directory: Path) -> None:
    """Replace a checkpoint's state-store references by the per-client values (to compare or
    inspect checkpoints), read through throwaway owners."""
    store = StateStore(None, directory, cfg.state.dtype)  # only reads
    shapes = {k: tuple(w.shape) for k, w in sim.weights.items()}
    setup = registry.Setup(sim.model, shapes, cfg.seed, sim.device, store)
    strategy = strategies.build(cfg.strategy, setup)
    compressor = compression.build(cfg.compression, setup)
    store.restore(ckpt.pop("store"), checked=True, tidy=False)  # checked by load(); only reads
    strategy.load_state_dict(ckpt["strategy"])
    compressor.load_state_dict(ckpt["compressor"])
    ckpt["strategy"], ckpt["compressor"] = strategy.state_dict(), compressor.state_dict()
