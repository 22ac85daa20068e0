"""The index of a checkpoint's client-state files, and who writes and names what in it when
the processes of a torchrun run share one ``state/`` directory.

An index (made by :meth:`afd_cli.state.StateStore.commit` through :func:`index_of`) names,
for every slot (namespace, client), the file generation that holds it and its CRC-32, in
:class:`SlotTable` s, and describes every namespace (:class:`Space`).

Under torchrun every process keeps its own store in the run's ``state/`` (:class:`Shard`):

* Client ``c``'s slots are *named* by process ``c % N`` (:func:`owner`), the one that trains
  it: a compressor's per-client state lives only there, and a strategy's state (the same in
  every process, computed from the same losses) is written by that process alone, so each
  process writes about 1/N of a checkpoint.
* Each process draws file generations ``base + rank``, ``base + rank + N``, ... so no two
  processes ever write the same file, whatever they spill; ``base`` is the index's
  ``next_gen``, above every generation written before it.
* Rank 0 alone deletes the files no index names (on resume and on a start over): the others
  may be writing theirs only after it has (a barrier).
* :func:`join` makes the run's one index out of every process's: the union of their tables
  (disjoint by construction), the largest ``next_gen``. A one-process run reads it as its own,
  and a run of any other number of processes takes its share of it again.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .statefiles import CHECKSUM, DTYPE_NAMES, DTYPES, StateFileError

INDEX_VERSION = 2  # 2: "sums", the CRC-32 of every file (1 had sizes only)


@dataclass
class Space:
    """A namespace of slots: every client's slot has ``numel`` entries of ``dtype``.

    ``layout`` is the owner's description of what the flat entries are (plain data, saved in
    the index so a resumed owner can check it still matches).
    """

    name: str
    numel: int
    dtype: torch.dtype
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fill: float = 0.0
    layout: Any = None
    sharded: bool = False  # under torchrun only the client's owner holds it (else every process)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def index_of(
    spaces: dict[str, Space],
    gens: dict[str, SlotTable],
    sums: dict[str, SlotTable],
    next_gen: int,
) -> dict[str, Any]:
    """A checkpoint's index: the namespaces, every slot's file generation and CRC-32 (the
    tables copied: the store goes on changing its own), the next free generation."""
    return {
        "version": INDEX_VERSION,
        "next_gen": next_gen,
        "spaces": {
            n: {
                "numel": sp.numel,
                "dtype": DTYPE_NAMES[sp.dtype],
                "layout": sp.layout,
                "sharded": sp.sharded,
            }
            for n, sp in spaces.items()
        },
        "slots": {n: SlotTable(t) for n, t in gens.items()},
        "checksum": CHECKSUM,
        "sums": {n: SlotTable(t) for n, t in sums.items()},
    }


def spaces_of(index: dict[str, Any], registered: dict[str, Space]) -> dict[str, Space]:
    """An index's namespaces, each keeping what its owner registered and the index does not
    record (its device and fill value), refused where the index's shape differs from it."""
    out = dict(registered)
    for n, meta in index["spaces"].items():
        old = registered.get(n)
        numel, dtype, layout = int(meta["numel"]), DTYPES[meta["dtype"]], meta["layout"]
        if old is not None and (old.numel, old.dtype, old.layout) != (numel, dtype, layout):
            raise StateFileError(f"the checkpoint's {n!r} state does not fit this model")
        out[n] = Space(
            n,
            numel,
            dtype,
            old.device if old is not None else torch.device("cpu"),
            old.fill if old is not None else 0.0,
            layout,
            old.sharded if old is not None else bool(meta.get("sharded", False)),
        )
    return out


def owner(client: int, size: int) -> int:
    """The process that trains ``client`` (and names its state) when ``size`` share a run."""
    return client % size


@dataclass(frozen=True)
class Shard:
    """A store's place in the run: process ``rank`` of ``size`` (``0 of 1`` alone)."""

    rank: int = 0
    size: int = 1

    def names(self, client: int) -> bool:
        """Whether this process writes ``client``'s slots into the checkpoint's index."""
        return owner(client, self.size) == self.rank

    def first_gen(self, base: int) -> int:
        """This process's first file generation from ``base`` (then every ``size``-th)."""
        return base + self.rank

    @property
    def tidies(self) -> bool:
        """Whether this process deletes the state files no index names (rank 0)."""
        return self.rank == 0


ALONE = Shard()


class SlotTable(dict):
    """``{client: int}`` of one namespace in an index (each slot's file generation, or its
    CRC-32). A dict, pickled as two int64 arrays: a checkpoint names every client that holds
    state (10^5 of them in a cross-device run), and pickling that many dict entries through
    ``torch.save`` (which calls back into Python for every object) cost 0.3-0.4 s a checkpoint
    at 10^5 clients; two arrays cost 0.06 s."""

    def __reduce__(self) -> tuple[Any, ...]:
        keys = np.fromiter(self.keys(), dtype=np.int64, count=len(self))
        values = np.fromiter(
            (-1 if v is None else v for v in self.values()), dtype=np.int64, count=len(self)
        )
        return (_slot_table, (keys, values))


def _slot_table(keys: np.ndarray, values: np.ndarray) -> SlotTable:
    return SlotTable(
        zip(keys.tolist(), (None if v < 0 else v for v in values.tolist()), strict=True)
    )


def share(
    index: dict[str, Any], shard: Shard, sharded: Collection[str]
) -> tuple[dict[str, dict[int, tuple[int, int | None]]], set[tuple[str, int, int]]]:
    """A process's slots of an index, ``{namespace: {client: (generation, CRC-32 or None)}}``:
    every client's of a namespace every process holds, only its own clients' of a ``sharded``
    one; and every ``(namespace, client, generation)`` the index names (the files to keep)."""
    sums = index.get("sums", {})  # none in an index of version 1: sizes only
    kept: dict[str, dict[int, tuple[int, int | None]]] = {}
    named: set[tuple[str, int, int]] = set()
    for n, slots in index["slots"].items():
        table = kept[n] = {}
        for client, gen in slots.items():
            c, g = int(client), int(gen)
            named.add((n, c, g))
            if n in sharded and not shard.names(c):
                continue  # another process's client
            crc = sums.get(n, {}).get(client)
            table[c] = (g, None if crc is None else int(crc))
    return kept, named


def join(indexes: list[dict[str, Any]]) -> dict[str, Any]:
    """One index out of every process's (each naming its own clients' slots, see the module
    docstring): their tables united, the largest ``next_gen``."""
    out = dict(indexes[0])
    out["next_gen"] = max(int(ix["next_gen"]) for ix in indexes)
    out["spaces"] = {}
    for ix in indexes:
        out["spaces"].update(ix["spaces"])
    for key in ("slots", "sums"):
        names = {n for ix in indexes for n in ix.get(key, {})}
        tables = {n: SlotTable() for n in sorted(names)}
        for n, table in tables.items():
            parts = [ix.get(key, {}).get(n, {}) for ix in indexes]
            for part in parts:
                table.update(part)
            if len(table) != sum(len(p) for p in parts):
                raise RuntimeError(f"state {n!r}: a client is named by two processes")
        out[key] = tables
    return out
