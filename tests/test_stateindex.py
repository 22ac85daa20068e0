"""The client-state store shared by the processes of a torchrun run (issue 28 item 3): each
process commits its own clients' slots into one ``state/``, rank 0 joins the indexes, a crash
before the joined index is saved leaves the previous one whole, and any number of processes
continues from it. The processes are played here by stores in one process (the torchrun runs
are in test_distributed.py)."""

from __future__ import annotations

import pytest
import torch

from afd_cli.state import StateStore
from afd_cli.stateindex import Shard, join

SLOT = 64
CLIENTS = range(6)


def _stores(directory, size: int, memory_mb: float | None = None) -> list[StateStore]:
    """The stores of ``size`` processes sharing ``directory``: ``up`` sharded (a compressor's
    state, only on the client's process), ``afd`` in every process (a strategy's)."""
    out = []
    for rank in range(size):
        st = StateStore(memory_mb, directory, shard=Shard(rank, size))
        st.space("up", SLOT, sharded=True)
        st.space("afd", SLOT, torch.float64)
        out.append(st)
    return out


def _value(client: int, step: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + client)
    return torch.randn(SLOT, generator=g, dtype=torch.float64).to(dtype)


def _round(stores: list[StateStore], step: int) -> None:
    """What a round does to the state: the owner updates ``up``, every process ``afd``."""
    size = len(stores)
    for c in CLIENTS:
        stores[c % size].put("up", c, _value(c, step))
        for st in stores:
            st.put("afd", c, _value(c, step, torch.float64))


def _checkpoint(stores: list[StateStore], saved: bool = True) -> dict:
    """Every process commits, rank 0 joins; ``saved``: the joined index reached the disk."""
    index = join([st.commit() for st in stores])
    if saved:
        for st in stores:
            st.committed()
    return index


def _assert_holds(stores: list[StateStore], step: int) -> None:
    size = len(stores)
    for rank, st in enumerate(stores):
        assert st.clients("up") == [c for c in CLIENTS if c % size == rank]
        assert st.clients("afd") == list(CLIENTS)
        for c in st.clients("up"):
            assert torch.equal(st.get("up", c), _value(c, step))
        for c in CLIENTS:
            assert torch.equal(st.get("afd", c), _value(c, step, torch.float64))


def test_each_process_writes_its_clients_and_the_joined_index_names_each_once(tmp_path):
    stores = _stores(tmp_path / "state", 2)
    _round(stores, 1)
    index = _checkpoint(stores)
    assert sorted(index["slots"]["up"]) == sorted(index["slots"]["afd"]) == list(CLIENTS)
    written = {p.relative_to(tmp_path / "state").as_posix() for p in tmp_path.rglob("*.bin")}
    named = {f"{n}/c{c}_g{g}.bin" for n, t in index["slots"].items() for c, g in t.items()}
    assert written == named  # one file per slot: the strategy's state is not written twice
    gens = {n: {c: g for c, g in t.items()} for n, t in index["slots"].items()}
    assert all(g % 2 == (c % 2 + 1) % 2 for t in gens.values() for c, g in t.items())
    assert index["spaces"]["up"]["sharded"] and not index["spaces"]["afd"]["sharded"]


@pytest.mark.parametrize("after", [1, 2, 3])
def test_a_crash_before_the_joined_index_is_saved_resumes_from_the_previous(tmp_path, after):
    """Round 2's files are written by every process, then rank 0 dies before its index
    replaces round 1's: every file round 1's index names is still there and whole, and any
    number of processes continues from it; rank 0 deletes the unnamed files."""
    stores = _stores(tmp_path / "state", 2)
    _round(stores, 1)
    saved = _checkpoint(stores)
    _round(stores, 2)
    _checkpoint(stores, saved=False)  # the crash: files written, index not saved
    assert len(list(tmp_path.rglob("*.bin"))) == 4 * len(CLIENTS)
    resumed = _stores(tmp_path / "state", after)
    for st in reversed(resumed):  # rank 0 last: the others must not delete anything
        st.restore(saved)
    assert len(list(tmp_path.rglob("*.bin"))) == 2 * len(CLIENTS)
    _assert_holds(resumed, 1)
    _round(resumed, 3)  # and goes on: new files never collide with the named ones
    again = _checkpoint(resumed)
    resumed = _stores(tmp_path / "state", 2)
    for st in resumed:
        st.restore(again)
    _assert_holds(resumed, 3)
    assert len(list(tmp_path.rglob("*.bin"))) == 2 * len(CLIENTS)


def test_spills_of_another_process_clients_never_reach_the_index(tmp_path):
    """Under a memory budget every process spills the strategy's slots it holds, its own
    clients' and the others'; the index names the owner's file, and the joined index resumes
    on one process exactly."""
    stores = _stores(tmp_path / "state", 2, memory_mb=2 * SLOT * 8 / 2**20)
    for step in (1, 2):
        _round(stores, step)
        index = _checkpoint(stores)
    one = _stores(tmp_path / "state", 1)
    one[0].restore(index)
    _assert_holds(one, 2)
