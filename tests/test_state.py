"""The client-state store (issue 12 item 5): a memory budget with least-recently-used clients
spilled to files and read back exactly, reduced precision, and incremental checkpoints whose
index names only whole files."""

from __future__ import annotations

import math
import time

import pytest
import torch

from afd_cli import strategies
from afd_cli.compression import RoundContext, make
from afd_cli.compression.state import ClientStore
from afd_cli.models import build as build_model
from afd_cli.state import SlotTable, StateStore
from afd_cli.statefiles import StateFileError
from afd_cli.submodel import View

SLOT = 1000  # entries per slot in the small tests (4,000 bytes in fp32)


def _store(tmp_path, slots: float | None, dtype: str = "fp32") -> StateStore:
    """A store whose budget holds ``slots`` fp32 slots of SLOT entries."""
    mb = None if slots is None else slots * SLOT * 4 / 2**20
    st = StateStore(mb, tmp_path / "state", dtype)
    st.space("x", SLOT)
    return st


def _values(client: int) -> torch.Tensor:
    # values with full fp32 mantissas: a lossy round trip would show
    return torch.randn(SLOT, generator=torch.Generator().manual_seed(client), dtype=torch.float64)


def _files(st: StateStore) -> list[str]:
    return sorted(p.name for p in st.directory.rglob("*.bin"))


def test_spilled_clients_read_back_bitwise(tmp_path):
    st = _store(tmp_path, slots=2)
    for c in range(6):
        st.put("x", c, _values(c).float())
    assert st.resident_bytes <= 2 * SLOT * 4 and len(_files(st)) == 4  # 4 spilled, 2 held
    assert st.nbytes() == 6 * SLOT * 4  # accounted wherever they are
    for c in reversed(range(6)):
        assert torch.equal(st.get("x", c), _values(c).float())


def test_least_recently_used_client_spills_first(tmp_path):
    st = _store(tmp_path, slots=2)
    st.get("x", 0, create=True)
    st.get("x", 1, create=True)
    st.get("x", 0)  # 0 is now more recent than 1
    st.get("x", 2, create=True)  # over budget: 1 goes
    assert st.resident("x") == [0, 2]
    st.get("x", 1)  # read back; 0 is the least recent now
    assert st.resident("x") == [1, 2]
    assert st.peak_resident == 2 * SLOT * 4


def test_a_budget_below_one_slot_keeps_the_slot_in_use(tmp_path):
    st = _store(tmp_path, slots=0)
    st.put("x", 0, _values(0).float())
    st.put("x", 1, _values(1).float())
    assert st.resident("x") == [1]
    assert torch.equal(st.get("x", 0), _values(0).float())


def test_an_unchanged_client_read_back_is_not_written_again(tmp_path):
    st = _store(tmp_path, slots=1)
    st.put("x", 0, _values(0).float())
    st.put("x", 1, _values(1).float())  # 0 spilled
    written = st.bytes_written
    st.get("x", 0)  # 1 spilled (dirty: written)
    st.get("x", 1)  # 0 spilled, unchanged since read: no write
    assert st.bytes_written == written + SLOT * 4


@pytest.mark.parametrize("dtype, itemsize", [("fp16", 2), ("bf16", 2)])
def test_reduced_precision_halves_the_state_and_rounds_it(tmp_path, dtype, itemsize):
    st = StateStore(0, tmp_path / "state", dtype)
    shapes = {"w": (10, 100)}
    cs = ClientStore(("u", "v"), shapes, store=st, name="up")
    view, like = _FullView(), {"w": torch.zeros(10, 100)}
    want = _values(0).float().view(10, 100)
    cs.gather(0, view, like)
    cs.scatter(0, view, "v", {"w": want})
    cs.gather(1, view, like)  # 0 spilled (budget 0)
    got = cs.gather(0, view, like)["v"]["w"]
    assert got.dtype == torch.float32  # compressors compute in fp32
    assert torch.equal(got, want.to(st.dtype).float())
    assert not torch.equal(got, want)  # rounded
    assert cs.nbytes() == 2 * 2 * 1000 * itemsize
    assert (st.directory / "up").is_dir()
    assert all(p.stat().st_size == 2 * 1000 * itemsize for p in st.directory.rglob("*.bin"))


class _FullView:
    def extract(self, full):
        return {k: v.clone() for k, v in full.items()}

    def scatter_(self, full, sub):
        for k, v in sub.items():
            full[k].copy_(v)


# --- incremental checkpoints ---------------------------------------------------------------------


def test_checkpoint_writes_only_clients_changed_since_the_last_one(tmp_path):
    st = _store(tmp_path, slots=None)
    for c in range(5):
        st.put("x", c, _values(c).float())
    st.commit()
    st.committed()
    first = _files(st)
    assert len(first) == 5
    before = st.bytes_written
    st.get("x", 1).add_(1.0)
    st.mark_dirty("x", 1)
    st.get("x", 3)  # read, not changed
    index = st.commit()
    assert st.bytes_written - before == SLOT * 4  # client 1 only
    st.committed()
    after = _files(st)
    assert len(after) == 5  # the old generation of client 1 is gone, the others untouched
    assert f"c1_g{index['slots']['x'][1]}.bin" in after
    assert [f for f in after if f.startswith("c1_")] != [f for f in first if f.startswith("c1_")]
    assert [f for f in after if not f.startswith("c1_")] == [
        f for f in first if not f.startswith("c1_")
    ]


def test_restore_reads_exactly_the_indexed_state_and_deletes_the_rest(tmp_path):
    st = _store(tmp_path, slots=1)
    for c in range(4):
        st.put("x", c, _values(c).float())
    index = st.commit()
    st.committed()
    # after the checkpoint: changes, spills and a new client, none of them committed
    st.get("x", 0).mul_(2.0)
    st.mark_dirty("x", 0)
    st.put("x", 9, _values(9).float())
    st.get("x", 2).zero_()
    st.mark_dirty("x", 2)
    st.get("x", 1)
    (st.directory / "x" / "c5_g999.bin").write_bytes(b"half a file")
    fresh = _store(tmp_path, slots=1)
    fresh.restore(index)
    assert fresh.clients("x") == [0, 1, 2, 3]
    assert len(_files(fresh)) == 4  # only what the index names
    for c in range(4):
        assert torch.equal(fresh.get("x", c), _values(c).float())


def test_a_kill_before_the_index_is_replaced_leaves_the_previous_checkpoint_whole(tmp_path):
    """commit() of checkpoint 2 has written its files, the process dies before checkpoint.pt
    names them: checkpoint 1's index must still find all of its files, unchanged."""
    st = _store(tmp_path, slots=None)
    for c in range(3):
        st.put("x", c, _values(c).float())
    index1 = st.commit()
    st.committed()
    for c in range(3):
        st.get("x", c).add_(1.0)
        st.mark_dirty("x", c)
    index2 = st.commit()  # ... and no committed(): killed here
    old = _store(tmp_path, slots=None)
    old.restore(index1)
    for c in range(3):
        assert torch.equal(old.get("x", c), _values(c).float())
    with pytest.raises(StateFileError, match="missing"):  # restore(index1) deleted index2's
        _store(tmp_path, slots=None).restore(index2)


def test_an_index_naming_a_missing_or_cut_file_is_refused(tmp_path):
    st = _store(tmp_path, slots=None)
    st.put("x", 0, _values(0).float())
    index = st.commit()
    st.committed()
    (path,) = st.directory.rglob("*.bin")
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(StateFileError, match="not 4000 bytes"):
        _store(tmp_path, slots=None).restore(index)
    path.unlink()
    with pytest.raises(StateFileError, match=f"{path} is missing"):
        _store(tmp_path, slots=None).restore(index)


def test_reset_forgets_everything(tmp_path):
    st = _store(tmp_path, slots=0)
    st.put("x", 0, _values(0).float())
    st.put("x", 1, _values(1).float())
    st.reset()
    assert st.clients("x") == [] and not st.directory.exists() and st.nbytes() == 0


# --- the owners under a tiny budget give the same numbers ----------------------------------------


def _model():
    return build_model("mlp", (1, 8, 8), 10, hidden=16)


def _updates(model, rounds: int, clients: list[int]):
    g = torch.Generator().manual_seed(1)
    for t in range(rounds):
        yield (
            t,
            {
                c: {
                    k: 0.01 * torch.randn(p.shape, generator=g) for k, p in model.named_parameters()
                }
                for c in clients
            },
        )


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", ["topk", "dgc"])
def test_compressor_state_spilled_to_disk_gives_identical_payloads(tmp_path, name, backend):
    model = _model()
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    view = View(model)

    def run(store: StateStore) -> list[bytes]:
        weights = {k: p.detach().clone() for k, p in model.named_parameters()}
        seed = 3 if name == "dgc" else 0
        comp = make(
            name,
            shapes,
            seed,
            "cpu",
            store,
            backend,
            sparsity=0.9,
            dense_rule="size",
            dense_below=20,
            downlink=True,
        )
        out = []
        for t, ups in _updates(model, 4, [0, 1, 2, 3, 4]):
            clients = [c for c in ups if (c + t) % 3]  # a changing subset each round
            for c in clients:
                payload = comp.encode_down(c, weights, view)
                out.append(payload)
                comp.decode_down(c, payload, view)
            ctx = RoundContext(t, len(clients))
            out += comp.encode_up_many(
                clients, [ups[c] for c in clients], [view] * len(clients), ctx
            )
            comp.end_round()
            for w in weights.values():
                w.add_(0.01)
        return out

    tiny = StateStore(0, tmp_path / "tiny")
    assert run(StateStore()) == run(tiny)
    assert tiny.bytes_written > 0 and tiny.bytes_read > 0  # it really went through files


def test_multi_score_maps_spilled_to_disk_select_identically(tmp_path):
    model = build_model("cnn_mnist", (1, 28, 28), 10)

    def run(store: StateStore) -> list[dict[str, list[int]]]:
        s = strategies.make("multi", model, 0, store, rate=0.5, explore=0.2)
        out = []
        for t in range(6):
            clients = [c for c in range(6) if (c + t) % 2]
            views = s.select(t, clients)
            out += [{k: v.tolist() for k, v in view.keep.items()} for view in views]
            s.observe(t, clients, [1.0 / (t + 1 + c) for c in clients], [1] * len(clients))
        return out

    tiny = StateStore(0, tmp_path / "tiny")
    assert run(StateStore()) == run(tiny) and tiny.bytes_read > 0


def test_score_map_flat_round_trip_is_exact():
    model = build_model("cnn_mnist", (1, 28, 28), 10)
    s = strategies.make("multi", model, 0, rate=0.5)
    s.select(0, [4])
    s.observe(0, [4], [math.pi], [1])
    s.select(1, [4])
    s.observe(1, [4], [1.0], [1])  # improved: scores set, A kept
    m = s.maps[4]
    again = s._new_map()
    again.load_flat(m.to_flat())
    assert again.state_dict().keys() == m.state_dict().keys()
    assert again.last_loss == 1.0 and m.keep is not None
    for k in m.units:
        assert torch.equal(again.scores[k], m.scores[k]) and torch.equal(again.keep[k], m.keep[k])


# --- in a run: the checkpoint writes the round's clients, inside wall_s ------------------------

RUN = [
    "dataset=digits",
    "model=mlp",
    "schedule.num_clients=10",
    "schedule.clients_per_round=3",
    "progress=none",
    "compression=dgc",
    "compression.downlink=true",
    "strategy=multi",
    "strategy.rate=0.25",
]


def _cfg(*extra: str):
    from afd_cli.compose import check

    return check([*RUN, *extra])


def _generations(run_dir) -> dict[tuple[str, int], str]:
    return {
        (p.parent.name, int(p.name.split("_")[0][1:])): p.name
        for p in (run_dir / "state").rglob("*.bin")
    }


def test_a_checkpoint_writes_only_the_clients_touched_since_the_last_one(tmp_path):
    from afd_cli.run import checkpoint
    from afd_cli.run.build import build
    from afd_cli.run.resume import comparable
    from afd_cli.run.rundir import CHECKPOINT
    from afd_cli.run.state import RunState

    sim = build(_cfg(), run_dir=tmp_path)
    path, state, config = tmp_path / CHECKPOINT, RunState(), comparable(_cfg())
    r0 = sim.round(0)
    checkpoint.save(path, config, sim, state, {"round": 1})
    first = _generations(tmp_path)
    assert {c for _, c in first} == set(r0.clients)
    r1 = sim.round(1)
    written = checkpoint.save(path, config, sim, state, {"round": 2})
    second = _generations(tmp_path)
    slot = sum(sim.store.get_space(ns).nbytes for ns in ("up", "down", "afd"))
    assert written == len(r1.clients) * slot + path.stat().st_size
    for key, name in second.items():  # one file per slot; a client of round 2 has a new one
        assert (name == first.get(key)) == (key[1] not in r1.clients)
    assert {c for _, c in second} == set(r0.clients) | set(r1.clients)


def test_wall_s_includes_the_checkpoint(tmp_path, monkeypatch):
    import json

    import pandas as pd

    from afd_cli.run.loop import run

    commit = StateStore.commit

    def slow_commit(self):
        time.sleep(0.3)
        return commit(self)

    monkeypatch.setattr(StateStore, "commit", slow_commit)
    run(_cfg("schedule.rounds=2"), tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (m.wall_s >= 0.3 + m.train_s + m.eval_s).all()
    assert summary["checkpoint_s"] >= 0.6
    assert summary["train_wall_s"] == pytest.approx(m.wall_s.sum(), rel=1e-4)


# --- the round loop in chunks ------------------------------------------------------------------


def test_a_round_in_chunks_is_the_round_at_once(tmp_path):
    from afd_cli.federated.round import run_round
    from afd_cli.run.build import build

    def one(chunk):
        sim = build(_cfg("schedule.clients_per_round=5"))
        sim.fed.chunk = chunk
        rs = [run_round(sim.fed, t) for t in range(2)]
        return sim.weights, [(r.clients, r.bytes_down, r.bytes_up, r.train_loss) for r in rs]

    (w_all, r_all), (w_two, r_two) = one(None), one(2)
    assert r_all == r_two  # the same bytes both ways: the same uploads
    for k in w_all:
        torch.testing.assert_close(w_two[k], w_all[k])  # up to the order of additions


def test_skipped_clients_and_an_all_skipped_round_span_the_chunks():
    from afd_cli.federated.client import LocalJob, LocalResult
    from afd_cli.federated.guard import SKIP, Diverged, FiniteGuard

    def train(jobs):
        bad = {1, 2, 3}
        return [LocalResult(j.weights, math.nan if j.client in bad else 1.0, 5, 0.0) for j in jobs]

    def check(*clients):
        jobs = [LocalJob(c, {}, {"w": torch.zeros(2)}, torch.arange(5), 0) for c in clients]
        return guard.check(jobs, train(jobs))

    guard = FiniteGuard(SKIP)
    guard.begin_round(1, 4)
    check(0, 1)
    res = check(2, 3)  # all bad, but client 0 of the first chunk was fine
    assert guard.skipped == {1, 2, 3} and [r.num_samples for r in res] == [0, 0]
    guard.begin_round(2, 4)
    assert guard.skipped == set()
    check(1, 2)
    with pytest.raises(Diverged, match="every client of the round"):
        check(3, 3)


def test_the_index_costs_the_clients_touched_and_pickles_as_arrays(tmp_path, monkeypatch):
    """A cross-device run's index names 10^5 clients; a checkpoint must not walk (or pickle
    entry by entry) all of them to save the ~100 a round touched."""
    import io
    import pickle

    st = StateStore(None, tmp_path, "fp32")
    st.space("x", 4)
    for c in range(300):
        st.get("x", c, create=True)
    first = st.commit()
    st.committed()
    st.put("x", 7, torch.ones(4))
    st.get("x", 301, create=True)
    writes: list[int] = []
    write = StateStore._write
    monkeypatch.setattr(
        StateStore, "_write", lambda s, ns, c, slot: (writes.append(c), write(s, ns, c, slot))
    )
    index = st.commit()
    assert sorted(writes) == [7, 301]  # the touched slots only
    st.committed()
    assert index["slots"]["x"][7] != first["slots"]["x"][7] and len(index["slots"]["x"]) == 301
    assert {c: g for c, g in index["slots"]["x"].items() if c != 7 and c < 300} == {
        c: g for c, g in first["slots"]["x"].items() if c != 7
    }
    big = SlotTable((c, c * 7 if c % 3 else None) for c in range(100_000))
    raw = pickle.dumps(big)
    assert all(type(a).__name__ == "ndarray" for a in big.__reduce__()[1])  # not 10^5 entries
    assert pickle.loads(raw) == big and type(pickle.loads(raw)) is SlotTable
    buf = io.BytesIO()
    torch.save(index, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert again["sums"] == index["sums"] and again["slots"] == index["slots"]
    fresh = StateStore(None, tmp_path, "fp32")
    fresh.space("x", 4)
    fresh.restore(again)
    assert (
        torch.equal(fresh.get("x", 7), torch.ones(4)) and fresh.commit()["slots"] == index["slots"]
    )
