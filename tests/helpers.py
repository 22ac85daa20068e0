"""What the tests that drive the real ``afd`` command share: the command, a small run, and a
runner for many short ``afd`` invocations."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

AFD = [sys.executable, "-m", "afd_cli.cli"]
# digits + mlp with 10 clients: a few seconds a run, every code path of a real one
SMALL = [
    "dataset=digits",
    "model=mlp",
    "schedule.num_clients=10",
    "schedule.clients_per_round=3",
    "progress=plain",
]


def snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run directory with its bytes and mtime, but ``.lock`` (the pid of the
    last process that held it: a refused command takes the lock before it refuses)."""
    return {
        str(f.relative_to(d)): (f.read_bytes(), f.stat().st_mtime_ns)
        for f in sorted(d.rglob("*"))
        if f.is_file() and f.name != ".lock"
    }


def _forked_main(args: Sequence[str], cwd: str, env: dict[str, str], out: str, err: str) -> int:
    """In a fresh process forked from a server that has imported afd_cli and torch: ``afd``
    with ``args`` in ``cwd`` with ``env``, its stdout and stderr into the files ``out``/``err``;
    returns the exit code."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = ["afd", *args]
    from afd_cli.cli import main

    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    # afd installed its SIGTERM/SIGHUP handlers (a run ends on them with a traceback-free
    # line); the pool may still signal this worker on its way out, which must not write into
    # the captured stderr: default handlers, and the captured files closed
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(null, fd)
    os.close(null)
    return code


_context = None


def _fork_context():
    """A forkserver that has imported the CLI, every plug-in and torch once: each invocation
    is a fresh process forked from it, without the ~3 s of importing torch again (the server
    never computes, so no thread pools are forked)."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["afd_cli.compose", "afd_cli.cli", "afd_cli.launch"])
    return _context


def afd_forked(
    args: Sequence[str], cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    """``afd args`` as a subprocess would run it (exit code, stdout, stderr), in a process
    forked from a preloaded server: for corpora of many short, failing invocations."""
    ctx = _fork_context()
    out, err = cwd / ".afd-stdout", cwd / ".afd-stderr"
    pool = ctx.Pool(1, maxtasksperchild=1)
    try:
        task = pool.apply_async(_forked_main, (list(args), str(cwd), env, str(out), str(err)))
        code = task.get(timeout)
        pool.close()  # let the worker leave by itself: terminate() would SIGTERM it
        pool.join()
    finally:
        pool.terminate()
    result = subprocess.CompletedProcess(
        ["afd", *args], code, out.read_text(errors="replace"), err.read_text(errors="replace")
    )
    out.unlink()
    err.unlink()
    return result


def afd_run(
    cwd: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``afd args`` in ``cwd``, as ``subprocess.run`` would give it, forked from the preloaded
    server (:func:`afd_forked`): the whole command runs, training included, in a process of its
    own, without paying torch's import each time. For tests that signal or kill the process,
    use a real ``subprocess.Popen``."""
    return afd_forked(list(args), cwd, dict(os.environ if env is None else env), timeout)
