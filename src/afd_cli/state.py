"""The client-state store: everything a run keeps per client, bounded in memory, checkpointed
incrementally (``docs/concepts/client-state.md`` has the why and the measurements).

Per-client state (DGC's ``u``/``v``, the downlink's copies, Multi-Model AFD's score maps) grows
with the clients that have taken part: 13.3 MB per client for cnn_mnist with DGC, 13 GB at
1,000 clients. A :class:`StateStore` holds it as one flat tensor per (namespace, client) --
a *slot* -- and keeps slots in memory up to ``memory_mb``; beyond that the least recently used
slots are written to files (:class:`~afd_cli.statefiles.SlotFiles`, in the run's ``state/``)
and read back when asked for again.

Files are never overwritten: each write of a slot goes to a new *generation*. A checkpoint
(1) :meth:`StateStore.commit` writes the slots changed since they were last written and returns
an *index* naming every slot's file and its CRC-32 (:mod:`afd_cli.stateindex`); (2) the caller
saves the index atomically inside ``checkpoint.pt``; (3) :meth:`StateStore.committed` deletes
the generations the new index no longer names. So a kill -9 at any moment leaves a checkpoint
whose files are all there and whole, and a checkpoint costs the clients touched since the last
one, not every client that holds state (10^5 in a cross-device run). A file's CRC-32 is checked
whenever it is read back and before a resume; with ``fsync`` the files an index names reach the
disk before :meth:`StateStore.commit` returns it. Under torchrun every process keeps a store in
the same ``state/`` (:class:`~afd_cli.stateindex.Shard`).

``dtype`` (fp32, fp16, bf16) is the precision compressor buffers are *kept* in; the
compressors still compute in fp32 on gathered copies. Score maps keep their own float64.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .statefiles import DTYPE_NAMES, DTYPES, MB, SlotFiles, check_index, file_checksum, fsync_files
from .stateindex import (  # noqa: F401 (SlotTable, _slot_table: old pickles name them here)
    ALONE,
    INDEX_VERSION,
    Shard,
    SlotTable,
    Space,
    _slot_table,
    index_of,
    share,
    spaces_of,
)


@dataclass
class _Slot:
    flat: torch.Tensor | None = None  # in memory, or None (only on disk)
    gen: int | None = None  # newest file holding this slot's values (None: never written)
    dirty: bool = True  # ``flat`` differs from file ``gen``
    committed: int | None = None  # the file the last committed index names
    crc: int | None = None  # CRC-32 of file ``gen`` (None: no file yet)
    synced: bool = True  # file ``gen`` is on the disk (fsync), not only in the page cache


class StateStore:
    """Slots of per-client state: in memory up to a budget, least recently used spill to disk.

    ``memory_mb``: MiB of slots kept in memory (``None``: no limit, nothing is ever
    spilled). The slot in use is never spilled, so a budget smaller than one slot keeps one.
    ``directory``: where spilled and checkpointed slots go (a run's ``state/``); ``None``
    makes a temporary directory on the first spill, removed with the store.
    The owners' ``state_dict()`` carry their clients' values, except inside
    :meth:`references`, where they name their namespace instead (a run checkpoint saves the
    values through :meth:`commit`).
    ``fsync``: :meth:`commit` flushes the files its index names to the disk first.
    ``shard``: this process's place in a torchrun run (:mod:`afd_cli.stateindex`: which
    slots its index names, which file generations it draws, whether it tidies ``directory``).
    """

    def __init__(
        self,
        memory_mb: float | None = None,
        directory: Path | str | None = None,
        dtype: str = "fp32",
        fsync: bool = False,
        shard: Shard = ALONE,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"state dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
        if memory_mb is not None and memory_mb < 0:
            raise ValueError("memory_mb must be >= 0 or None")
        self.budget = None if memory_mb is None else int(memory_mb * MB)
        self.dtype = DTYPES[dtype]
        self.fsync = fsync
        self.shard = shard
        self.inline = True  # owners' state_dict() hold values (False inside references())
        self.files = SlotFiles(directory)
        self._spaces: dict[str, Space] = {}
        self._slots: dict[str, dict[int, _Slot]] = {}
        self._lru: OrderedDict[tuple[str, int], _Slot] = OrderedDict()  # in memory, oldest first
        self._resident = 0
        self._next_gen = shard.first_gen(1)
        self._orphans: list[tuple[str, int, int | None]] = []  # cleared slots' committed files
        # what a checkpoint must look at, kept as it changes, so that a checkpoint costs the
        # clients touched since the last one, not every client that ever held state:
        self._touched: set[tuple[str, int]] = set()  # made or changed in memory
        self._written: set[tuple[str, int]] = set()  # written since the last committed()
        self._gens: dict[str, SlotTable] = {}  # every written slot's newest file ...
        self._sums: dict[str, SlotTable] = {}  # ... and its CRC-32 (the index's tables)
        self.peak_resident = 0

    # -- namespaces ---------------------------------------------------------------------------
    def space(
        self,
        name: str,
        numel: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        fill: float = 0.0,
        layout: Any = None,
        sharded: bool = False,
    ) -> Space:
        """Register (or, after :meth:`restore`, re-attach to) namespace ``name``. ``sharded``:
        each client's slot is used only by the process that trains it (a compressor's state);
        otherwise every process of a torchrun run holds every client's (a strategy's)."""
        dtype = dtype or self.dtype
        old = self._spaces.get(name)
        if old is not None and (old.numel, old.dtype, old.layout) != (numel, dtype, layout):
            raise ValueError(
                f"state namespace {name!r} holds {old.numel} x {DTYPE_NAMES[old.dtype]} per "
                f"client, not {numel} x {DTYPE_NAMES[dtype]} (a different model or state.dtype)"
            )
        sp = Space(name, int(numel), dtype, torch.device(device), fill, layout, sharded)
        self._spaces[name] = sp
        self._slots.setdefault(name, {})
        self._gens.setdefault(name, SlotTable())
        self._sums.setdefault(name, SlotTable())
        return sp

    def get_space(self, name: str) -> Space | None:
        return self._spaces.get(name)

    # -- slots --------------------------------------------------------------------------------
    def has(self, ns: str, client: int) -> bool:
        return client in self._slots.get(ns, {})

    def clients(self, ns: str) -> list[int]:
        """Clients holding a slot in ``ns`` (in memory or on disk)."""
        return sorted(self._slots.get(ns, {}))

    def get(self, ns: str, client: int, create: bool = False) -> torch.Tensor:
        """The client's slot in memory (read back from disk, or created with the fill value).

        The tensor is the store's own: write through it only together with
        :meth:`mark_dirty`, and do not keep it across other ``get`` calls (it may be spilled).
        """
        sp = self._spaces[ns]
        slot = self._slots[ns].get(client)
        if slot is None:
            if not create:
                raise KeyError(f"client {client} has no {ns!r} state")
            slot = _Slot(torch.full((sp.numel,), sp.fill, dtype=sp.dtype, device=sp.device))
            self._slots[ns][client] = slot
            self._touched.add((ns, client))
            self._admit(ns, client, slot)
        elif slot.flat is None:
            slot.flat = self._read(sp, client, slot).to(sp.device)
            slot.dirty = False
            self._admit(ns, client, slot)
        else:
            self._lru.move_to_end((ns, client))
        assert slot.flat is not None
        return slot.flat

    def peek(self, ns: str, client: int) -> torch.Tensor:
        """The slot's values without making it resident: read only (the store's own tensor
        when in memory, else a copy read from disk)."""
        slot = self._slots[ns][client]
        if slot.flat is not None:
            return slot.flat
        return self._read(self._spaces[ns], client, slot)

    def mark_dirty(self, ns: str, client: int) -> None:
        """The slot's values changed (it must be written again before a checkpoint names it)."""
        self._slots[ns][client].dirty = True
        self._touched.add((ns, client))

    def put(self, ns: str, client: int, values: torch.Tensor) -> None:
        """Replace the client's slot with ``values`` (flat, ``numel`` entries)."""
        sp = self._spaces[ns]
        if values.numel() != sp.numel:
            raise ValueError(f"{ns!r} slots hold {sp.numel} entries, got {values.numel()}")
        slot = self._slots[ns].get(client)
        if slot is None:
            slot = self._slots[ns][client] = _Slot()
        if slot.flat is not None:
            slot.flat.copy_(values.detach().reshape(-1))
            self._lru.move_to_end((ns, client))
        else:
            slot.flat = values.detach().reshape(-1).to(sp.device, sp.dtype, copy=True)
            self._admit(ns, client, slot)
        slot.dirty = True
        self._touched.add((ns, client))

    def clear(self, ns: str) -> None:
        """Forget every slot of ``ns`` (their files go at the next :meth:`committed`)."""
        for client, slot in list(self._slots.get(ns, {}).items()):
            if slot.flat is not None:
                self._lru.pop((ns, client), None)
                self._resident -= self._spaces[ns].nbytes
            if slot.gen is not None and slot.gen != slot.committed:
                self._unlink(ns, client, slot.gen)
            if self.shard.names(client):  # another process's file otherwise
                self._orphans.append((ns, client, slot.committed))
        self._slots[ns] = {}
        self._gens[ns], self._sums[ns] = SlotTable(), SlotTable()

    # -- accounting ---------------------------------------------------------------------------
    def nbytes(self, ns: str | None = None) -> int:
        """Bytes of all slots (of ``ns``), wherever they are."""
        names = [ns] if ns is not None else list(self._slots)
        return sum(
            len(self._slots.get(n, {})) * self._spaces[n].nbytes for n in names if n in self._spaces
        )

    def sharded_nbytes(self) -> tuple[int, int]:
        """Bytes of the sharded namespaces (each process holds its own clients') and of the
        others (every process holds all of them alike): what a sum over processes needs."""
        sharded = {n for n, sp in self._spaces.items() if sp.sharded}
        own = sum(self.nbytes(n) for n in sharded)
        return own, self.nbytes() - own

    def resident(self, ns: str) -> list[int]:
        """Clients of ``ns`` whose slot is in memory now."""
        return sorted(c for n, c in self._lru if n == ns)

    @property
    def resident_bytes(self) -> int:
        """Bytes of slots in memory now."""
        return self._resident

    def disk_bytes(self) -> int:
        """Bytes of slot files on disk now."""
        return self.files.disk_bytes()

    @property
    def bytes_written(self) -> int:
        """Bytes of every slot file written (spills and checkpoints)."""
        return self.files.bytes_written

    @property
    def bytes_read(self) -> int:
        return self.files.bytes_read

    # -- memory -------------------------------------------------------------------------------
    def _admit(self, ns: str, client: int, slot: _Slot) -> None:
        self._lru[(ns, client)] = slot
        self._resident += self._spaces[ns].nbytes
        while self.budget is not None and self._resident > self.budget and len(self._lru) > 1:
            (old_ns, old_client), old = self._lru.popitem(last=False)
            self._spill(old_ns, old_client, old)
        self.peak_resident = max(self.peak_resident, self._resident)

    def _spill(self, ns: str, client: int, slot: _Slot) -> None:
        if slot.dirty or slot.gen is None:
            self._write(ns, client, slot)
        slot.flat = None
        self._resident -= self._spaces[ns].nbytes

    # -- files --------------------------------------------------------------------------------
    @property
    def directory(self) -> Path:
        """Where slot files go (a temporary directory, made on first use, if none was given)."""
        return self.files.directory

    def _path(self, ns: str, client: int, gen: int) -> Path:
        return self.files.path(ns, client, gen)

    def _write(self, ns: str, client: int, slot: _Slot) -> None:
        """Write the slot to a new generation file; drop its previous file unless the last
        committed index names it."""
        assert slot.flat is not None
        gen, self._next_gen = self._next_gen, self._next_gen + self.shard.size
        crc = self.files.write(self._path(ns, client, gen), slot.flat)
        old, slot.gen, slot.dirty = slot.gen, gen, False
        slot.crc, slot.synced = crc, False
        if self.shard.names(client):
            self._gens[ns][client], self._sums[ns][client] = gen, slot.crc
        self._written.add((ns, client))
        if old is not None and old != slot.committed:
            self._unlink(ns, client, old)

    def _read(self, sp: Space, client: int, slot: _Slot) -> torch.Tensor:
        """File ``slot.gen``, refused unless it has the size and the CRC-32 it was written
        with."""
        assert slot.gen is not None
        path = self._path(sp.name, client, slot.gen)
        return self.files.read(path, sp.numel, sp.dtype, slot.crc, slot.gen == slot.committed)

    def _unlink(self, ns: str, client: int, gen: int) -> None:
        self._path(ns, client, gen).unlink(missing_ok=True)

    # -- checkpoints --------------------------------------------------------------------------
    @contextmanager
    def references(self) -> Iterator[None]:
        """Owners' ``state_dict()`` name their namespace instead of copying every client."""
        self.inline = False
        try:
            yield
        finally:
            self.inline = True

    def commit(self) -> dict[str, Any]:
        """Write every slot changed since it was last written; return the index naming the
        file of every slot and its CRC-32 (to be saved atomically by the caller, then
        :meth:`committed`). With ``fsync``, those files are on the disk first.

        Costs the slots touched since the last commit, plus a copy of the two tables. Under
        torchrun the index names this process's clients only (:meth:`Shard.names`), the
        others' stay in memory, unwritten.
        """
        for ns, client in sorted(self._touched):
            slot = self._slots.get(ns, {}).get(client)
            if (
                slot is not None
                and slot.flat is not None
                and (slot.dirty or slot.gen is None)
                and self.shard.names(client)
            ):
                self._write(ns, client, slot)
        self._touched.clear()
        if self.fsync:
            self._sync()
        return index_of(self._spaces, self._gens, self._sums, self._next_gen)

    def _sync(self) -> None:
        """fsync every slot file not yet on the disk (spills since the last commit, and the
        commit's own writes), then the directories that name them."""
        files = []
        for ns, client in sorted(self._written):  # only a written file can be unsynced
            slot = self._slots.get(ns, {}).get(client)
            if slot is not None and not slot.synced and slot.gen is not None:
                files.append(self._path(ns, client, slot.gen))
                slot.synced = True
        fsync_files(files)

    def committed(self) -> None:
        """The index from the last :meth:`commit` is saved: delete the files it replaced."""
        for ns, client, gen in self._orphans:
            if gen is not None:
                self._unlink(ns, client, gen)
        self._orphans = []
        for ns, client in self._written:  # no other slot's file changed
            slot = self._slots.get(ns, {}).get(client)
            if slot is None or not self.shard.names(client):  # not in this index: a spill
                continue
            if slot.committed is not None and slot.committed != slot.gen:
                self._unlink(ns, client, slot.committed)
            slot.committed = slot.gen
        self._written.clear()

    def close(self) -> None:
        """The run is over: delete the spills of slots no index of this process names."""
        for ns, slots in self._slots.items():
            for client, slot in slots.items():
                spilled = slot.gen is not None and slot.gen != slot.committed
                if spilled and not self.shard.names(client):
                    self._unlink(ns, client, slot.gen)  # type: ignore[arg-type]

    def reset(self) -> None:
        """Start empty: forget every slot and delete every file (a run starting over)."""
        self._slots = {n: {} for n in self._slots}
        self._gens = {n: SlotTable() for n in self._slots}
        self._sums = {n: SlotTable() for n in self._slots}
        self._touched.clear()
        self._written.clear()
        self._lru.clear()
        self._resident = 0
        self._orphans = []
        self._next_gen = self.shard.first_gen(1)
        if self.shard.tidies:
            self.files.remove()

    def restore(self, index: dict[str, Any], checked: bool = False, tidy: bool = True) -> None:
        """Continue from a checkpoint's index: its slots (on disk, read when asked for) and
        nothing else: with ``tidy``, files it does not name are deleted (by rank 0 alone under
        torchrun, where a process keeps only its clients' slots of the sharded namespaces).
        ``checked``: :func:`check_index` has just passed (``checkpoint.load`` runs it), do
        not read every file again. An index without checksums (version 1, sizes only) gets
        them here, from the files as they are, so later damage is caught."""
        if not checked:
            check_index(index, self.directory)
        self._lru.clear()
        self._resident = 0
        self._orphans = []
        self._touched.clear()
        self._written.clear()
        self._spaces = spaces_of(index, self._spaces)
        sharded = {n for n, sp in self._spaces.items() if sp.sharded}
        kept, named = share(index, self.shard, sharded)
        self._slots = {
            n: {c: _Slot(None, g, False, g, crc) for c, (g, crc) in table.items()}
            for n, table in kept.items()
        }
        for n, slots in self._slots.items():
            for c, slot in slots.items():
                if slot.crc is None:
                    slot.crc = file_checksum(self._path(n, c, slot.gen))  # type: ignore[arg-type]
        self._next_gen = self.shard.first_gen(int(index["next_gen"]))
        for n in self._spaces:
            self._slots.setdefault(n, {})
        mine = {
            n: [(c, s) for c, s in sl.items() if self.shard.names(c)]
            for n, sl in self._slots.items()
        }
        self._gens = {n: SlotTable((c, s.gen) for c, s in sl) for n, sl in mine.items()}
        self._sums = {n: SlotTable((c, s.crc) for c, s in sl) for n, sl in mine.items()}
        if self.shard.tidies and tidy and self.files.exist:
            self.files.tidy({self._path(n, c, g) for n, c, g in named})
