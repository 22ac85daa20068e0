"""Bytes changed in place are refused, not resumed from: a CRC-32 for every client-state file
(in the store's index) and one inside ``checkpoint.pt`` (a header before the torch.save
bytes). Checked on resume for every file before anything is written, and whenever a spilled
slot is read back during a run; old checkpoints (plain torch zip, index without checksums)
still resume. With ``state.fsync`` the files an index names reach the disk before it does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import AFD, snapshot
from helpers import SMALL as SMALL_RUN

from afd_cli.metrics import COLUMNS, TIMING_COLUMNS
from afd_cli.run import checkpoint
from afd_cli.state import StateChecksumError, StateFileError, StateStore, check_index

SMALL = [o for o in SMALL_RUN if not o.startswith("progress=")] + ["progress=none"]
# every kind of per-client state (DGC u/v, downlink copies, AFD multi score maps) with a 0 MB
# budget: every round spills to state/ and reads back
STATEFUL = [
    *SMALL,
    "compression=dgc",
    "compression.downlink=true",
    "strategy=multi",
    "strategy.rate=0.25",
]
KEEP = [c for c in COLUMNS if c not in TIMING_COLUMNS]
SLOT = 1000  # entries per slot in the store's tests (4,000 bytes in fp32)


def afd(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AFD, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def one_line_error(p: subprocess.CompletedProcess, code: int = 2) -> str:
    assert p.returncode == code, p.stderr
    assert p.stderr.strip().count("\n") == 0, p.stderr
    assert "Traceback" not in p.stderr
    return p.stderr.strip()


def assert_same_rounds(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(
        pd.read_csv(a / "metrics.csv")[KEEP], pd.read_csv(b / "metrics.csv")[KEEP]
    )
    assert (b / "clients.csv").read_bytes() == (a / "clients.csv").read_bytes()


def flip(path: Path, at: int, n: int) -> None:
    """Invert ``n`` bytes of ``path`` from ``at``: same size, different bytes."""
    data = bytearray(path.read_bytes())
    data[at : at + n] = bytes(b ^ 0xFF for b in data[at : at + n])
    path.write_bytes(bytes(data))


def indexed_files(run: Path) -> list[Path]:
    index = checkpoint.load(run / "checkpoint.pt")["store"]
    return sorted(
        run / "state" / ns / f"c{c}_g{g}.bin"
        for ns, slots in index["slots"].items()
        for c, g in slots.items()
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """4 rounds uninterrupted, all state in memory (the budget does not change the numbers)."""
    root = tmp_path_factory.mktemp("reference")
    p = afd(
        root,
        "run",
        *STATEFUL,
        "schedule.rounds=4",
        "state.memory_mb=null",
        f"hydra.run.dir={root / 'r'}",
    )
    assert p.returncode == 0, p.stderr
    return root / "r"


@pytest.fixture(scope="module")
def spilled(tmp_path_factory) -> Path:
    """2 rounds with every client's state in state/ (0 MB budget); tests work on copies."""
    root = tmp_path_factory.mktemp("spilled")
    p = afd(
        root,
        "run",
        *STATEFUL,
        "schedule.rounds=2",
        "state.memory_mb=0",
        f"hydra.run.dir={root / 'r'}",
    )
    assert p.returncode == 0, p.stderr
    return root / "r"


@pytest.fixture
def run(spilled, tmp_path) -> Path:
    shutil.copytree(spilled, tmp_path / "r")
    return tmp_path / "r"


# --- on resume: every file is checked before anything is written ------------------------------


@pytest.mark.slow
def test_bytes_flipped_inside_a_checkpoint_tensor_are_refused_and_nothing_changes(run):
    """The issue's case: 16 bytes flipped inside a weight tensor resumed silently (round 5 at
    10% accuracy against 27%)."""
    ckpt = run / "checkpoint.pt"
    assert ckpt.read_bytes().startswith(checkpoint.MAGIC)
    weights = checkpoint.load(ckpt)["weights"]
    name = max(weights, key=lambda k: weights[k].numel())
    raw = weights[name].numpy().tobytes()
    at = ckpt.read_bytes().find(raw)
    assert at > 0 and ckpt.read_bytes().count(raw) == 1  # the tensor's own bytes
    flip(ckpt, at + len(raw) // 2, 16)
    before = snapshot(run)
    line = one_line_error(afd(run.parent, "resume", str(run)))
    assert line == (
        f"error: {ckpt} does not match its checksum (damaged); start over with: "
        f"afd resume {run} --from-scratch"
    )
    assert snapshot(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("ns", ["up", "afd"])
def test_bytes_flipped_in_a_state_file_are_refused_and_nothing_changes(run, ns):
    """The issue's case: 64 bytes flipped in a DGC file resumed silently (round 8 at 11.7%
    accuracy against 82.1%)."""
    victim = [f for f in indexed_files(run) if f.parent.name == ns][0]
    flip(victim, victim.stat().st_size // 2, 64)
    before = snapshot(run)
    line = one_line_error(afd(run.parent, "resume", str(run)))
    assert line == (
        f"error: {victim} does not match its checksum in {run / 'checkpoint.pt'} (damaged); "
        f"start over with: afd resume {run} --from-scratch"
    )
    assert snapshot(run) == before


@pytest.mark.slow
def test_an_old_checkpoint_and_an_index_without_checksums_still_resume_exactly(reference, run):
    """Before the checksums: checkpoint.pt a plain torch.save, the index sizes only (version
    1). It resumes exactly; the checkpoints written from then on carry checksums again, for
    every file (those of clients not sampled since taken from the files on resume)."""
    ckpt = checkpoint.load(run / "checkpoint.pt")
    index = ckpt["store"]
    assert index["version"] == 2 and index["checksum"] == "crc32"
    assert all(c is not None for sums in index["sums"].values() for c in sums.values())
    del index["sums"], index["checksum"]
    index["version"] = 1
    torch.save(ckpt, run / "checkpoint.pt")
    assert (run / "checkpoint.pt").read_bytes()[:4] == b"PK\x03\x04"  # a plain torch zip
    p = afd(run.parent, "resume", str(run), "schedule.rounds=4")
    assert p.returncode == 0, p.stderr
    assert_same_rounds(reference, run)
    assert (run / "checkpoint.pt").read_bytes().startswith(checkpoint.MAGIC)
    index = checkpoint.load(run / "checkpoint.pt")["store"]
    assert index["version"] == 2 and set(index["sums"]) == set(index["slots"])
    for ns, slots in index["slots"].items():  # every file named now has its checksum
        assert set(index["sums"][ns]) == set(slots)
        assert all(c is not None for c in index["sums"][ns].values())


# --- during a run: a slot read back is checked ------------------------------------------------

# A child that runs `afd` and damages (64 bytes flipped, same size) the first file a spilled
# slot is read back from: one only spilled since the last checkpoint ("spill"), or one the
# last checkpoint's index names ("committed"). It writes the file's path to damaged.txt.
DAMAGER = """
import sys
from pathlib import Path
from afd_cli import state
which, done = sys.argv[1], []
get = state.StateStore.get
def _get(self, ns, client, create=False):
    slot = self._slots.get(ns, {}).get(client)
    if not done and slot is not None and slot.flat is None and slot.gen is not None:
        if (slot.gen == slot.committed) == (which == "committed"):
            path = self._path(ns, client, slot.gen)
            data = bytearray(path.read_bytes())
            mid = len(data) // 2
            data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
            path.write_bytes(bytes(data))
            Path("damaged.txt").write_text(str(path))
            done.append(path)
    return get(self, ns, client, create)
state.StateStore.get = _get
sys.argv = ["afd", *sys.argv[2:]]
from afd_cli.cli import main
main()
"""


def _damaged_run(tmp_path: Path, which: str, *extra: str) -> tuple[Path, Path, str]:
    run = tmp_path / "r"
    argv = [sys.executable, "-c", DAMAGER, which, "run", *STATEFUL, "schedule.rounds=4"]
    argv += ["state.memory_mb=0", *extra, f"hydra.run.dir={run}"]
    p = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    victim = Path((tmp_path / "damaged.txt").read_text())
    line = one_line_error(p, code=1)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and line == f"error: {status['error']}"
    assert not (run / "summary.json").exists()
    return run, victim, line


@pytest.mark.slow
def test_a_spilled_slot_damaged_during_a_run_fails_it_and_it_resumes_exactly(reference, tmp_path):
    """Damaged after its spill, before a checkpoint named it: the checkpoint does not need it,
    so a plain resume continues exactly. (A round reads each slot once, so a spill is read
    back before a checkpoint names it only across rounds: checkpoint_every=2.)"""
    run, victim, line = _damaged_run(tmp_path, "spill", "checkpoint_every=2")
    assert line == (
        f"error: {victim} does not match its checksum (damaged); continue with: afd resume {run}"
    )
    p = afd(tmp_path, "resume", str(run))
    assert p.returncode == 0, p.stderr
    assert_same_rounds(reference, run)
    assert not victim.exists()  # no index named it: the resume deleted it


@pytest.mark.slow
def test_a_checkpointed_slot_damaged_during_a_run_fails_it_and_resume_refuses(reference, tmp_path):
    """Damaged while the checkpoint names it: resuming from that checkpoint is refused (and
    changes nothing) until the run starts over."""
    run, victim, line = _damaged_run(tmp_path, "committed")
    fix = f"start over with: afd resume {run} --from-scratch"
    assert line == f"error: {victim} does not match its checksum (damaged); {fix}"
    before = snapshot(run)
    line = one_line_error(afd(tmp_path, "resume", str(run)))
    assert line == (
        f"error: {victim} does not match its checksum in {run / 'checkpoint.pt'} (damaged); {fix}"
    )
    assert snapshot(run) == before
    p = afd(tmp_path, "resume", str(run), "--from-scratch")
    assert p.returncode == 0, p.stderr
    assert_same_rounds(reference, run)


# --- the store and the checkpoint file, in process ----------------------------------------------


def _store(tmp_path: Path, slots: float | None, fsync: bool = False) -> StateStore:
    mb = None if slots is None else slots * SLOT * 4 / 2**20
    st = StateStore(mb, tmp_path / "state", fsync=fsync)
    st.space("x", SLOT)
    return st


def _values(client: int) -> torch.Tensor:
    return torch.randn(SLOT, generator=torch.Generator().manual_seed(client))


def test_a_spilled_slot_changed_on_disk_is_refused_when_read_back(tmp_path):
    st = _store(tmp_path, slots=1)
    st.put("x", 0, _values(0))
    st.put("x", 1, _values(1))  # 0 spilled
    (path,) = (tmp_path / "state").rglob("*.bin")
    flip(path, 100, 1)
    with pytest.raises(StateChecksumError, match=f"{path} does not match its checksum") as e:
        st.peek("x", 0)
    assert not e.value.committed  # no index names it: resuming from the checkpoint helps
    with pytest.raises(StateChecksumError):
        st.get("x", 0)
    flip(path, 100, 1)  # undone: read back bitwise
    assert torch.equal(st.get("x", 0), _values(0))


def test_a_checkpointed_slot_changed_on_disk_is_refused_on_restore_and_read_back(tmp_path):
    st = _store(tmp_path, slots=None)
    for c in range(3):
        st.put("x", c, _values(c))
    index = st.commit()
    st.committed()
    assert index["checksum"] == "crc32" and set(index["sums"]["x"]) == {0, 1, 2}
    path = tmp_path / "state" / "x" / f"c1_g{index['slots']['x'][1]}.bin"
    flip(path, 3999, 1)  # the last byte
    with pytest.raises(StateChecksumError, match=f"{path} does not match its checksum"):
        check_index(index, tmp_path / "state")
    with pytest.raises(StateChecksumError):
        _store(tmp_path, slots=None).restore(index)
    old = index | {"version": 1}  # an index from before the checksums: sizes only
    del old["sums"], old["checksum"]
    check_index(old, tmp_path / "state")
    fresh = _store(tmp_path, slots=None)
    fresh.restore(old)
    assert torch.equal(fresh.get("x", 0), _values(0))
    assert not torch.equal(fresh.get("x", 1), _values(1))  # what sizes alone let through
    assert all(c is not None for c in fresh.commit()["sums"]["x"].values())  # from now on
    path.write_bytes(path.read_bytes()[:-1])
    for ix in (index, old):  # sizes are still checked, with checksums or without
        with pytest.raises(StateFileError, match="not 4000 bytes"):
            check_index(ix, tmp_path / "state")


def test_a_slot_read_back_after_restore_is_checked(tmp_path):
    """The files a resume reads later in the run (not only at its start)."""
    st = _store(tmp_path, slots=None)
    st.put("x", 0, _values(0))
    index = st.commit()
    st.committed()
    fresh = _store(tmp_path, slots=None)
    fresh.restore(index)
    (path,) = (tmp_path / "state").rglob("*.bin")
    flip(path, 0, 64)  # after the resume's check
    with pytest.raises(StateChecksumError) as e:
        fresh.get("x", 0)
    assert e.value.committed  # the checkpoint names it: resuming cannot help


def _ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint.pt"
    obj = {"config": {}, "weights": {"w": _values(0)}, "state": {"round": 3}}
    checkpoint._replace(path, obj, fsync=False)
    return path


def test_a_checkpoint_carries_its_checksum_and_a_plain_one_still_loads(tmp_path):
    path = _ckpt(tmp_path)
    assert path.read_bytes().startswith(checkpoint.MAGIC)
    assert torch.equal(checkpoint.load(path)["weights"]["w"], _values(0))
    ckpt = checkpoint.load(path)
    torch.save(ckpt, path)  # the format before the header
    assert torch.equal(checkpoint.load(path)["weights"]["w"], _values(0))


@pytest.mark.parametrize("where", ["tensor", "last byte", "header"])
def test_a_checkpoint_changed_in_place_is_refused_naming_it(tmp_path, where):
    path = _ckpt(tmp_path)
    data = path.read_bytes()
    at = {
        "tensor": data.find(_values(0).numpy().tobytes()) + 100,
        "last byte": len(data) - 1,
        "header": len(checkpoint.MAGIC) + 4,  # the checksum itself
    }[where]
    flip(path, at, 1)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(path)
    assert str(e.value) == (
        f"{path} does not match its checksum (damaged); start over with: "
        f"afd resume {tmp_path} --from-scratch"
    )


def test_a_checkpoint_cut_short_is_refused_naming_it(tmp_path):
    path = _ckpt(tmp_path)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(checkpoint.CheckpointError, match=f"{size - 10} bytes, its header says"):
        checkpoint.load(path)
    path.write_bytes(checkpoint.MAGIC + b"\x01")
    with pytest.raises(checkpoint.CheckpointError, match="is damaged and cannot be read"):
        checkpoint.load(path)


# --- fsync -------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="names an fd's file through /proc")
def test_fsync_puts_the_named_files_on_disk_before_the_checkpoint_replaces_the_index(
    tmp_path, monkeypatch
):
    """state.fsync: every state file the new index names (spilled in the round or written by
    the commit) and their directories, then checkpoint.pt's tmp file, are flushed before the
    replace; the run directory after it (before the old generations are deleted)."""
    events: list[str] = []

    def fsync(fd: int) -> None:
        events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))

    replace = os.replace

    def logged_replace(src, dst) -> None:
        events.append(f"replace {dst}")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", logged_replace)
    st = _store(tmp_path, slots=1, fsync=True)
    for c in range(3):
        st.put("x", c, _values(c))  # 0 and 1 spilled, 2 in memory
    index = st.commit()
    path = tmp_path / "checkpoint.pt"
    checkpoint._replace(path, {"store": index}, st.fsync)
    names = [tmp_path / "state" / "x" / f"c{c}_g{g}.bin" for c, g in index["slots"]["x"].items()]
    want = {f"fsync {p}" for p in names} | {
        f"fsync {tmp_path / 'state' / 'x'}",
        f"fsync {tmp_path / 'state'}",
    }
    assert set(events[: len(want)]) == want
    assert events[len(want) :] == [
        f"fsync {tmp_path / 'checkpoint.pt.tmp'}",
        f"replace {path}",
        f"fsync {tmp_path}",
    ]
    st.committed()
    events.clear()
    st.commit()  # nothing new: nothing to flush
    assert events == []
    plain = _store(tmp_path / "plain", slots=1)
    for c in range(3):
        plain.put("x", c, _values(c))
    checkpoint._replace(tmp_path / "plain.pt", {"store": plain.commit()}, plain.fsync)
    assert events == [f"replace {tmp_path / 'plain.pt'}"]  # state.fsync=false


def test_state_fsync_is_on_by_default_and_may_change_on_resume():
    from dataclasses import asdict

    from afd_cli.compose import check
    from afd_cli.run.resume import config_differences

    on, off = check(SMALL), check([*SMALL, "state.fsync=false"])
    assert on.state.fsync is True and off.state.fsync is False
    assert config_differences(asdict(on), asdict(off)) == []
