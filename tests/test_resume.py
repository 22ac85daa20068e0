"""`afd resume` is exact or refuses: damaged metrics are repaired, a missing or damaged checkpoint
or an override that alters results is refused with one line, before any file is touched."""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import SMALL as SMALL_RUN
from helpers import afd_run, snapshot

from afd_cli.metrics import (
    CLIENT_COLUMNS,
    CLIENT_INT_COLUMNS,
    COLUMNS,
    TIMING_COLUMNS,
    intact_client_rows,
    intact_rows,
)

SMALL = [o for o in SMALL_RUN if not o.startswith("progress=")] + ["progress=none"]
KEEP = [c for c in COLUMNS if c not in TIMING_COLUMNS]


def afd(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return afd_run(cwd, *args, timeout=300)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 3-round run, never changed by the tests (they work on copies)."""
    root = tmp_path_factory.mktemp("runs")
    p = afd(root, "run", *SMALL, "schedule.rounds=3", f"hydra.run.dir={root / 'done'}")
    assert p.returncode == 0, p.stderr
    return root / "done"


@pytest.fixture
def run(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "r")
    return tmp_path / "r"


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0, p.stderr
    assert "Traceback" not in p.stderr
    return p.stderr.strip()


def assert_same_rounds(a: Path, b: Path) -> None:
    text = (b / "metrics.csv").read_bytes()
    assert text.endswith(b"\r\n") and len(intact_rows(b / "metrics.csv")) == text.count(b"\n") - 1
    pd.testing.assert_frame_equal(
        pd.read_csv(a / "metrics.csv")[KEEP], pd.read_csv(b / "metrics.csv")[KEEP]
    )
    # clients.csv has no timing column: byte for byte an uninterrupted run's
    assert (b / "clients.csv").read_bytes() == (a / "clients.csv").read_bytes()


# --- damaged metrics.csv -----------------------------------------------------------------------


def _cut_tail(path: Path) -> None:  # truncate -s -40
    path.write_bytes(path.read_bytes()[:-40])


def _cut_mid_row(path: Path) -> None:  # the file ends halfway through round 2's row
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:2]) + b"\n" + lines[2][: len(lines[2]) // 2])


def _garbage_row(path: Path) -> None:  # round 2's row overwritten, round 3's row intact
    lines = path.read_bytes().split(b"\n")
    lines[2] = b"\x00\x17garbage,,\xff"
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("damage", [_cut_tail, _cut_mid_row, _garbage_row])
def test_resume_repairs_a_damaged_metrics_csv_exactly(finished, run, damage):
    damage(run / "metrics.csv")
    p = afd(run.parent, "resume", str(run))
    assert p.returncode == 0, p.stderr
    assert_same_rounds(finished, run)


def _clients_garbage_row(path: Path) -> None:  # a row of round 2 overwritten
    lines = path.read_bytes().split(b"\n")
    lines[5] = b"2,\x00\x17garbage"
    path.write_bytes(b"\n".join(lines))


def _clients_cut_mid_round(path: Path) -> None:  # killed while writing round 3's rows
    path.write_bytes(path.read_bytes()[:-30])


def _clients_missing(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage", [_clients_garbage_row, _clients_cut_mid_round, _clients_missing])
def test_resume_repairs_a_damaged_clients_csv_exactly(finished, run, damage):
    damage(run / "clients.csv")
    p = afd(run.parent, "resume", str(run))
    assert p.returncode == 0, p.stderr
    assert "clients.csv holds" in p.stderr  # says why it recomputes
    assert_same_rounds(finished, run)


def test_resume_cuts_client_rows_past_the_checkpoint(finished, run):
    """kill -9 after round 4's client rows were written, before its metrics row."""
    lines = (run / "clients.csv").read_bytes().split(b"\n")
    extra = [line.replace(b"3,", b"4,", 1) for line in lines[-4:-1]]
    (run / "clients.csv").write_bytes(b"\n".join([*lines[:-1], *extra, b""]))
    p = afd(run.parent, "resume", str(run))
    assert p.returncode == 0, p.stderr
    assert_same_rounds(finished, run)


@pytest.mark.parametrize("width", [False, True], ids=["before-width", "with-width"])
def test_intact_client_rows_keep_whole_rounds_only(tmp_path, width):
    f = tmp_path / "clients.csv"
    head = ",".join(CLIENT_COLUMNS if width else CLIENT_INT_COLUMNS).encode() + b"\r\n"
    row = b"%d,%d,9,9,3,1,30,0,0.5\r\n" if width else b"%d,%d,9,9,3,1,30,0\r\n"
    body = b"".join(row % (r, c) for r in (1, 2, 3) for c in (4, 7))
    f.write_bytes(head + body)
    assert len(intact_client_rows(f, 2)) == 6 and len(intact_client_rows(f, 2, 2)) == 4
    f.write_bytes(head + body[:-5])  # round 3 cut short: rounds 1-2
    assert [r["round"] for r in intact_client_rows(f, 2)] == ["1", "1", "2", "2"]
    f.write_bytes(head + body.replace(b"2,7,", b"2,x,"))  # damage in round 2: round 1
    assert len(intact_client_rows(f, 2)) == 2
    f.write_bytes(head + body)
    assert len(intact_client_rows(f, 3)) == 0  # rows of 2 clients are no round of 3


def test_resume_cuts_rows_past_the_checkpoint(finished, run):
    """kill -9 after a round's row was written but before its checkpoint (kept behaviour)."""
    lines = (run / "metrics.csv").read_bytes().split(b"\n")
    round4 = lines[-2].replace(b"3,", b"4,", 1)
    (run / "metrics.csv").write_bytes(b"\n".join([*lines[:-1], round4, b""]))
    p = afd(run.parent, "resume", str(run))
    assert p.returncode == 0, p.stderr
    assert_same_rounds(finished, run)


def test_intact_rows_stop_at_the_first_damaged_line(tmp_path):
    f = tmp_path / "m.csv"
    f.write_bytes(b"round,test_acc,dataset\r\n1,0.5,x\r\n2,nan,x\r\n3,0.7")
    assert [r["round"] for r in intact_rows(f)] == ["1", "2"]  # 3 has no newline: half a row
    f.write_bytes(b"round,test_acc,dataset\r\n1,0.5,x\r\n2,0.x,x\r\n3,0.7,x\r\n")
    assert [r["round"] for r in intact_rows(f)] == ["1"]
    f.write_bytes(b"round,test_acc,dataset\r\n1,0.5,x\r\n3,0.7,x\r\n2,,x\r\n")
    assert [r["round"] for r in intact_rows(f, 5)] == ["1"]
    assert intact_rows(tmp_path / "missing.csv") == []


# --- missing or damaged checkpoint -------------------------------------------------------------


def test_missing_checkpoint_is_refused_naming_it_and_from_scratch_starts_over(finished, run):
    (run / "checkpoint.pt").unlink()
    before = snapshot(run)
    line = one_line_error(afd(run.parent, "resume", str(run)))
    assert f"{run / 'checkpoint.pt'} is missing" in line
    assert line.endswith(f"start it over with: afd resume {run} --from-scratch")
    assert snapshot(run) == before
    p = afd(run.parent, "resume", str(run), "--from-scratch")
    assert p.returncode == 0, p.stderr
    assert_same_rounds(finished, run)
    assert (run / "checkpoint.pt").exists()


def test_kill_before_the_first_checkpoint_still_resumes(finished, run):
    """Round 1's row written, killed before its checkpoint: nothing to refuse, start over."""
    (run / "checkpoint.pt").unlink()
    (run / "summary.json").unlink()
    lines = (run / "metrics.csv").read_bytes().split(b"\n")
    (run / "metrics.csv").write_bytes(b"\n".join([*lines[:2], b""]))
    p = afd(run.parent, "resume", str(run))
    assert p.returncode == 0, p.stderr
    assert_same_rounds(finished, run)


@pytest.mark.parametrize("garbage", [b"hello\n", bytes(range(256)) * 4, b"PK\x03\x04" + b"x" * 99])
def test_damaged_checkpoint_is_one_line_naming_the_file(run, garbage):
    (run / "checkpoint.pt").write_bytes(garbage)
    before = snapshot(run)
    line = one_line_error(afd(run.parent, "resume", str(run)))
    assert line.startswith(f"error: {run / 'checkpoint.pt'} is damaged and cannot be read (")
    assert line.endswith(f"afd resume {run} --from-scratch")
    assert snapshot(run) == before


def test_truncated_checkpoint_is_one_line_naming_the_file(run):
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    line = one_line_error(afd(run.parent, "resume", str(run)))
    assert f"{ckpt} is damaged and cannot be read" in line


# --- overrides on resume -----------------------------------------------------------------------


def test_override_that_alters_results_is_refused_before_any_file_is_touched(finished, run):
    before = snapshot(run)
    line = one_line_error(afd(run.parent, "resume", str(run), "seed=4", "schedule.lr=0.5"))
    assert "seed (run: 0, asked: 4)" in line and "schedule.lr (run: " in line
    assert "schedule.rounds" in line  # says what may change
    assert snapshot(run) == before
    p = afd(run.parent, "resume", str(run))  # the run is not damaged: a plain resume works
    assert p.returncode == 0, p.stderr
    assert_same_rounds(finished, run)


def test_resume_false_is_refused(run):
    before = snapshot(run)
    line = one_line_error(afd(run.parent, "resume", str(run), "resume=false"))
    assert "resume=false contradicts `afd resume`" in line and "--from-scratch" in line
    assert snapshot(run) == before


def test_allowed_change_continues_and_is_recorded(run, tmp_path):
    p = afd(run.parent, "resume", str(run), "schedule.rounds=4", "checkpoint_every=2")
    assert p.returncode == 0, p.stderr
    straight = tmp_path / "straight"
    p = afd(tmp_path, "run", *SMALL, "schedule.rounds=4", f"hydra.run.dir={straight}")
    assert p.returncode == 0, p.stderr
    assert_same_rounds(straight, run)
    (record,) = [json.loads(line) for line in (run / "resume.log").read_text().splitlines()]
    assert record["from_round"] == 3
    assert record["changed"] == {"schedule.rounds": [3, 4], "checkpoint_every": [1, 2]}
    assert "schedule.rounds=4" in (run / ".hydra" / "overrides.yaml").read_text()


def test_keys_a_plugin_does_not_read_never_block_a_resume():
    """fedavg reads no strategy.* key: a checkpoint written when the schema's strategy.rate
    default was 0.0 still resumes; for multi, the same difference is a different run."""
    from afd_cli.run.resume import config_differences

    old = {"strategy": {"name": "fedavg", "rate": 0.0, "explore": 0.0}, "seed": 0}
    new = {"strategy": {"name": "fedavg", "rate": 0.25, "explore": 0.2}, "seed": 0}
    assert config_differences(old, new) == []
    old["strategy"]["name"] = new["strategy"]["name"] = "multi"
    assert [d.split(" ")[0] for d in config_differences(old, new)] == [
        "strategy.explore",
        "strategy.rate",
    ]


# --- per-client state on disk: a tiny budget, kill -9 anywhere in the checkpoint protocol -----

# every kind of per-client state (DGC u/v, downlink copies, AFD multi score maps); a budget of
# 0 MB keeps one client's slot in memory, so every round spills to state/ and reads back
STATEFUL = [
    *SMALL,
    "compression=dgc",
    "compression.downlink=true",
    "strategy=multi",
    "strategy.rate=0.25",
    "schedule.rounds=4",
]
# A child that runs `afd` with one step of the protocol replaced by SIGKILL (a real kill -9 at
# an exact moment): the n-th slot file write (a spill in a round, or a checkpoint's), the n-th
# write cut after half its bytes, the n-th checkpoint.pt replace (its tmp file written), or
# the n-th clean-up after a replace (the new index saved, old generations still there).
KILLER = """
import os, signal, sys
import numpy as np
from afd_cli import state
from afd_cli.run import checkpoint
what, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def nth():
    calls[0] += 1
    return calls[0] == n
write, committed, replace = state.StateStore._write, state.StateStore.committed, os.replace
def _write(self, ns, client, slot):
    if what in ("write", "half") and nth():
        if what == "half":
            path = self._path(ns, client, self._next_gen)
            path.parent.mkdir(parents=True, exist_ok=True)
            raw = slot.flat.detach().cpu().contiguous().view(state.torch.uint8).numpy()
            path.write_bytes(raw.tobytes()[: raw.nbytes // 2])
        die()
    return write(self, ns, client, slot)
def _committed(self):
    if what == "committed" and nth():
        die()
    return committed(self)
def _replace(src, dst):
    if what == "replace" and str(dst).endswith("checkpoint.pt") and nth():
        die()
    return replace(src, dst)
state.StateStore._write, state.StateStore.committed = _write, _committed
checkpoint.os.replace = _replace
sys.argv = ["afd", *sys.argv[3:]]
from afd_cli.cli import main
main()
"""


@pytest.fixture(scope="module")
def stateful(tmp_path_factory) -> Path:
    """The uninterrupted run, all state in memory (the budget may not change the numbers)."""
    root = tmp_path_factory.mktemp("stateful")
    p = afd(root, "run", *STATEFUL, "state.memory_mb=null", f"hydra.run.dir={root / 'done'}")
    assert p.returncode == 0, p.stderr
    summary = json.loads((root / "done" / "summary.json").read_text())
    assert summary["client_state_peak_memory_bytes"] == summary["client_state_bytes"] > 0
    return root / "done"


def _indexed_files(run: Path) -> set[Path]:
    from afd_cli.run import checkpoint

    index = checkpoint.load(run / "checkpoint.pt")["store"]
    return {
        run / "state" / ns / f"c{c}_g{g}.bin"
        for ns, slots in index["slots"].items()
        for c, g in slots.items()
    }


@pytest.mark.parametrize(
    "what, n",
    [
        ("write", 5),  # a spill in round 1, before any checkpoint
        ("half", 24),  # round 2's checkpoint, its slot file cut halfway
        ("replace", 2),  # round 2's files and checkpoint.pt.tmp written, not yet in place
        ("committed", 3),  # round 3's checkpoint in place, the old generations not yet deleted
        ("write", 30),  # a spill in round 3 (files no index names)
    ],
)
def test_kill_9_anywhere_resumes_exactly_with_state_on_disk(stateful, tmp_path, what, n):
    run = tmp_path / "r"
    argv = [sys.executable, "-c", KILLER, what, str(n), "run", *STATEFUL, "state.memory_mb=0"]
    p = subprocess.run(
        [*argv, f"hydra.run.dir={run}"], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert p.returncode == -signal.SIGKILL, p.stderr  # killed where intended, not finished
    p = afd(tmp_path, "resume", str(run))
    assert p.returncode == 0, p.stderr
    assert_same_rounds(stateful, run)
    assert set((run / "state").rglob("*.bin")) == _indexed_files(run)  # no leftovers


def test_kill_between_checkpoint_and_row_appends_the_row_from_the_checkpoint(finished, run):
    """The checkpoint is written before its round's row (so wall_s can include it) and holds
    that row: a kill between the two needs no recomputation."""
    lines = (run / "metrics.csv").read_bytes().split(b"\n")
    (run / "metrics.csv").write_bytes(b"\n".join([*lines[:-2], b""]))  # round 3's row lost
    p = afd(run.parent, "resume", str(run))
    assert p.returncode == 0, p.stderr
    assert "recomputing" not in p.stderr
    after = (run / "metrics.csv").read_bytes().split(b"\n")
    assert after[:-2] == lines[:-2]  # rounds 1-2 untouched
    # round 3 is the checkpoint's copy: the same train_s and eval_s (not run again); its
    # wall_s was taken before the checkpoint it was saved in, so it lacks that checkpoint
    wall = COLUMNS.index("wall_s")
    got, want = after[-2].split(b","), lines[-2].split(b",")
    assert got[:wall] + got[wall + 1 :] == want[:wall] + want[wall + 1 :]
    assert float(got[wall]) <= float(want[wall])


def test_an_inline_checkpoint_from_before_the_state_store_still_resumes(stateful, tmp_path):
    """Checkpoints used to hold every client's state inline (and no row, no index)."""
    import torch

    from afd_cli import compose
    from afd_cli.run import build as building
    from afd_cli.run import checkpoint

    run = tmp_path / "r"
    p = afd(
        tmp_path,
        "run",
        *[o for o in STATEFUL if "rounds" not in o],
        "schedule.rounds=2",
        f"hydra.run.dir={run}",
    )
    assert p.returncode == 0, p.stderr
    ckpt = checkpoint.load(run / "checkpoint.pt")
    cfg = compose.check([*STATEFUL, "schedule.rounds=2"])
    sim = building.build(cfg, run_dir=run)
    sim.store.restore(ckpt.pop("store"))
    ckpt.pop("row")
    ckpt["config"].pop("state")
    inline = sim.compressor.state_dict()  # the clients' buffers; the rest is the run's own
    ckpt["compressor"].update(up=inline["up"], down=inline["down"])
    ckpt["strategy"] = sim.strategy.state_dict()
    assert sorted(ckpt["compressor"]["up"]) == sim.compressor.up.clients() != []
    assert sorted(ckpt["strategy"]["maps"]) == sorted(sim.strategy.maps) != []
    torch.save(ckpt, run / "checkpoint.pt")  # the plain format of those days
    shutil.rmtree(run / "state")
    p = afd(tmp_path, "resume", str(run), "schedule.rounds=4")
    assert p.returncode == 0, p.stderr
    assert_same_rounds(stateful, run)
    assert _indexed_files(run) and set((run / "state").rglob("*.bin")) == _indexed_files(run)


def test_from_scratch_deletes_the_state_files(run):
    stale = run / "state" / "up" / "c1_g1.bin"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    p = afd(run.parent, "resume", str(run), "--from-scratch")
    assert p.returncode == 0, p.stderr
    assert not stale.exists()


def test_a_missing_state_file_is_refused_naming_it(stateful, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(stateful, run)
    (victim,) = sorted(_indexed_files(run))[:1]
    victim.unlink()
    line = one_line_error(afd(tmp_path, "resume", str(run)))
    assert f"{run / 'checkpoint.pt'} names client state that cannot be read ({victim} is " in line
    assert line.endswith(f"afd resume {run} --from-scratch")


def test_state_memory_mb_may_change_on_resume_but_state_dtype_may_not(stateful, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(stateful, run)
    line = one_line_error(afd(tmp_path, "resume", str(run), "state.dtype=fp16"))
    assert "state.dtype (run: fp32, asked: fp16)" in line
    p = afd(tmp_path, "resume", str(run), "state.memory_mb=0", "schedule.rounds=5")
    assert p.returncode == 0, p.stderr
