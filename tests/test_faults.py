"""Faults a hostile or careless user (or machine) causes, each ending in one line and no wrong
number: a second writer on a run directory, a full or read-only disk, SIGTERM and SIGHUP, an
interrupted claim, a damaged launch record. Every case drives the real ``afd`` command."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from helpers import AFD, SMALL

from afd_cli.metrics import TIMING_COLUMNS

pytestmark = pytest.mark.slow  # real runs in subprocesses


def afd(cwd: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*AFD, *args], capture_output=True, text=True, cwd=cwd, timeout=300, **kw)


def one_line(p: subprocess.CompletedProcess) -> str:
    err = p.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, p.stderr
    return err


def metrics(run: Path) -> pd.DataFrame:
    m = pd.read_csv(run / "metrics.csv")
    return m.drop(columns=list(TIMING_COLUMNS))


def files(run: Path) -> dict[str, bytes]:
    """Every file of a run directory but its lock file (which a refused command may create)."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def hold_lock(run: Path):
    """This test process holds ``run``'s lock, as a running afd would (returns the fd)."""
    run.mkdir(parents=True, exist_ok=True)
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-round run (copied by the tests that change it)."""
    root = tmp_path_factory.mktemp("finished")
    p = afd(root, "run", *SMALL, "schedule.rounds=2", f"hydra.run.dir={root / 'r'}")
    assert p.returncode == 0, p.stderr
    return root / "r"


def copy(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


# --- one writer -------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holders_pid(finished, tmp_path):
    run = copy(finished, tmp_path / "r")
    fd = hold_lock(run)
    before = files(run)
    try:
        p = afd(tmp_path, "resume", str(run), "schedule.rounds=4")
        assert p.returncode == 2
        assert f"is in use by another afd process (pid {os.getpid()})" in one_line(p)
        q = afd(tmp_path, "run", *SMALL, f"hydra.run.dir={run}")
        assert q.returncode == 2 and f"(pid {os.getpid()})" in one_line(q)
        assert "continue it with" not in q.stderr  # not told to resume a directory in use
    finally:
        os.close(fd)
    assert files(run) == before


def test_two_concurrent_resumes_leave_the_output_of_one_run(finished, tmp_path):
    run = copy(finished, tmp_path / "r")
    args = [*AFD, "resume", str(run), "schedule.rounds=8"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stderr=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(args, cwd=tmp_path, stderr=subprocess.PIPE, text=True))
    codes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert any(rc == 0 for rc, _ in codes), codes
    for rc, err in codes:  # the other one was refused at once, or found the run finished
        assert rc == 0 or (rc == 2 and "is in use by another afd process" in err), err
    straight = tmp_path / "straight"
    p = afd(tmp_path, "run", *SMALL, "schedule.rounds=8", f"hydra.run.dir={straight}")
    assert p.returncode == 0, p.stderr
    pd.testing.assert_frame_equal(metrics(run), metrics(straight))
    assert len(pd.read_csv(run / "clients.csv")) == len(pd.read_csv(straight / "clients.csv"))
    assert json.loads((run / "status.json").read_text())["status"] == "ok"


# --- write failures ---------------------------------------------------------------------------

# A child `afd` whose n-th write of a kind fails as a full disk does (ENOSPC).
FULL_DISK = """
import errno, os, sys
from afd_cli import state
what, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def full(path):
    calls[0] += 1
    if calls[0] == n:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
write, replace = state.StateStore._write, os.replace
def _write(self, ns, client, slot):
    if what == "spill":
        full(self._path(ns, client, self._next_gen))
    return write(self, ns, client, slot)
def _replace(src, dst):
    if what == "checkpoint" and str(dst).endswith("checkpoint.pt"):
        full(dst)
    return replace(src, dst)
state.StateStore._write, os.replace = _write, _replace
sys.argv = ["afd", *sys.argv[3:]]
from afd_cli.cli import main
main()
"""
STATEFUL = [*SMALL, "compression=dgc", "compression.sparsity=0.9", "state.memory_mb=0"]


@pytest.mark.parametrize(("what", "n"), [("spill", 5), ("checkpoint", 2)])
def test_a_full_disk_is_one_line_with_the_resume_hint_and_the_resume_is_exact(what, n, tmp_path):
    run = tmp_path / "r"
    args = [*STATEFUL, "schedule.rounds=4", f"hydra.run.dir={run}"]
    p = subprocess.run(
        [sys.executable, "-c", FULL_DISK, what, str(n), "run", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 1
    line = one_line(p)
    assert "No space left on device" in line and f"afd resume {run}" in line
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    q = afd(tmp_path, "resume", str(run))
    assert q.returncode == 0, q.stderr
    straight = tmp_path / "straight"
    p = afd(tmp_path, "run", *STATEFUL, "schedule.rounds=4", f"hydra.run.dir={straight}")
    assert p.returncode == 0, p.stderr
    pd.testing.assert_frame_equal(metrics(run), metrics(straight))


# A child `afd` for which the run directory is read-only (root ignores chmod, so the files the
# run would create there fail as on a read-only mount: EROFS).
READ_ONLY = """
import builtins, errno, io, os, sys
from pathlib import Path
run = Path(sys.argv[1]).resolve()
def guard(path):
    if isinstance(path, (str, os.PathLike)) and Path(path).resolve().is_relative_to(run):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
real_os_open, real_open = os.open, builtins.open
def _os_open(path, flags, *a, **k):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        guard(path)
    return real_os_open(path, flags, *a, **k)
def _open(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+"):
        guard(file)
    return real_open(file, mode, *a, **k)
os.open, builtins.open, io.open = _os_open, _open, _open
sys.argv = ["afd", *sys.argv[2:]]
from afd_cli.cli import main
main()
"""


def test_a_read_only_run_directory_is_one_line_and_reports_elsewhere(finished, tmp_path):
    run = copy(finished, tmp_path / "r")
    before = files(run)

    def child(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", READ_ONLY, str(run), *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)

    p = child("resume", str(run), "schedule.rounds=3")
    assert p.returncode == 2 and "Read-only file system" in one_line(p)
    assert f"afd report {run} -o DIR" in p.stderr
    p = child("report", str(run))
    assert p.returncode == 2 and "choose another: -o DIR" in one_line(p)
    p = child("report", str(run), "-o", str(tmp_path / "elsewhere"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "elsewhere" / "summary.csv").exists()
    assert files(run) == before


# --- signals and traps ------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_a_run_like_ctrl_c(sig, tmp_path):
    p = subprocess.Popen(
        [*AFD, "run", *SMALL, "schedule.rounds=1000", "hydra.run.dir=r"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in p.stdout:
        if line.startswith("round 1/"):
            p.send_signal(sig)
            break
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 130
    name = signal.Signals(sig).name
    assert stderr.strip() == f"interrupted ({name}); continue with: afd resume {tmp_path / 'r'}"
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "interrupted"


def test_an_interrupted_claim_is_recoverable(tmp_path):
    run = tmp_path / "r"
    (run / ".hydra").mkdir(parents=True)  # claimed, then Ctrl-C before Hydra wrote anything
    p = afd(tmp_path, "resume", str(run))
    assert p.returncode == 2 and "its run never started" in one_line(p)
    p = afd(tmp_path, "run", *SMALL, "schedule.rounds=1", f"hydra.run.dir={run}")
    assert p.returncode == 0, p.stderr
    assert (run / "summary.json").exists()


def test_a_damaged_launch_record_is_refused_in_one_line(finished, tmp_path):
    run = copy(finished, tmp_path / "r")
    (run / ".hydra" / "overrides.yaml").write_text("{not: [a, list\n\x00garbage")
    before = files(run)
    p = afd(tmp_path, "resume", str(run))
    assert p.returncode == 2 and "overrides.yaml is damaged" in one_line(p)
    (run / ".hydra" / "overrides.yaml").write_text("just: a mapping\n")
    p = afd(tmp_path, "resume", str(run))
    assert p.returncode == 2 and "not a list of key=value overrides" in one_line(p)
    before[".hydra/overrides.yaml"] = (run / ".hydra" / "overrides.yaml").read_bytes()
    assert files(run) == before


def test_child_scripts_are_valid_python():
    for code in (FULL_DISK, READ_ONLY):
        compile(textwrap.dedent(code), "<child>", "exec")
