"""Launching a run through Hydra, and what each process of a torchrun launch does.

Hydra runs :func:`hydra_task` once per job, in the job's (already claimed) run directory: it
runs the loop and records how the run ended in ``status.json``, with one line on stderr for
anything that went wrong. Under torchrun every process runs ``afd``; rank 0 makes the decisions
that touch the run directory and launches through Hydra, the others follow it (:func:`follow`)
and stay quiet.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from .compose import compose, override_key
from .config import CONF_DIR, ConfigError, validate
from .run.rundir import ERROR, STATUS

T = TypeVar("T")
err = Console(stderr=True)


def say(kind: str, message: str) -> None:
    """One line on stderr: ``error: ...``, ``interrupted ...``; not markup (messages quote
    paths such as ``[/path/pair.cc:545]``)."""
    err.print(f"[bold red]{kind}:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _status(run_dir: Path, status: dict[str, Any]) -> None:
    """Record how the run ended; best effort (the disk may be the reason it ended)."""
    from .metrics import write_json_atomic

    with contextlib.suppress(OSError):
        write_json_atomic(run_dir / STATUS, status)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a scheduler, a closed terminal), handled like Ctrl-C: the run says
    how to resume, status.json says interrupted, the exit code is 130."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)


def _on_signal(signum: int, frame: Any) -> None:
    for s in (signal.SIGTERM, signal.SIGHUP):  # one is enough: let status.json be written
        signal.signal(s, signal.SIG_IGN)
    raise Terminated(signum)


def handle_signals() -> None:
    """SIGTERM and SIGHUP end a run like Ctrl-C (torchrun sends SIGTERM to every process when
    one fails; a batch scheduler sends it at the time limit; a closed terminal sends SIGHUP)."""
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)


def _write_failure(e: OSError, run_dir: Path) -> str:
    """One line for a failed write: the file, the system's reason, how to continue."""
    where = f" {e.filename}" if e.filename else ""
    return (
        f"could not write{where}: {e.strerror or e} (no space left? a read-only disk?); the "
        f"last checkpoint is intact: free space or fix it, then continue with: afd resume {run_dir}"
    )


def hydra_task(cfg: DictConfig) -> None:
    """What Hydra runs once per job (in the job's run directory)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from . import data
    from .federated.guard import Diverged
    from .run import rundir
    from .run.degenerate import degenerate_line, status_of
    from .run.loop import run
    from .state import StateChecksumError

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:  # a sweep's job locks its directory here (a single run holds it since its claim)
        rundir.lock(run_dir)
    except ConfigError as e:  # another process's run: leave its files alone
        if not multirun:
            say("error", str(e))
            raise SystemExit(2) from None
        say("job failed", f"{run_dir}: {e}")
        return
    try:
        rc = validate(cfg)
        if multirun:
            rc.progress = "none" if rc.progress == "auto" else rc.progress
        summary = run(rc, run_dir)
        _status(run_dir, status_of(summary))
        acc = summary["final_acc"]
        print(
            f"done: {run_dir}  final acc {acc:.4f}  total {summary['total_bytes'] / 1e6:,.1f} "
            f"MB  {summary['wall_s']:.1f}s",
            flush=True,
        )
        if line := degenerate_line(summary):  # finished, whole, but not a result to trust
            say("job degenerate" if multirun else "degenerate", f"{run_dir}: {line}")
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under torchrun (it says so)
        _status(run_dir, {"status": "interrupted"})
        why = escape(f" ({e})" if str(e) else "")
        err.print(
            f"[yellow]interrupted{why};[/] continue with: afd resume {escape(str(run_dir))}",
            highlight=False,
            soft_wrap=True,
        )
        raise
    except Diverged as e:
        status = {"status": "diverged", "error": str(e), "round": e.round, "client": e.client}
        _status(run_dir, status)
        if not multirun:
            say("diverged", str(e))
            raise SystemExit(1) from None
        say("job diverged", f"{run_dir}: {e}")
    except Exception as e:
        lost = type(e).__name__ == "PeerLost"  # distributed: another process failed
        damaged = isinstance(e, StateChecksumError)  # a slot file read back during the run
        plain = lost or damaged or isinstance(e, ConfigError | data.DataError)  # one line
        message = str(e) if plain else f"{type(e).__name__}: {e}"
        # named by the checkpoint: resuming from it cannot help; else it resumes exactly
        if isinstance(e, StateChecksumError) and e.committed:
            message += f"; start over with: afd resume {run_dir} --from-scratch"
        elif lost or damaged:
            message += f"; continue with: afd resume {run_dir}"
        elif isinstance(e, OSError):
            message = _write_failure(e, run_dir)
        _status(run_dir, {"status": "failed", "error": message})
        with contextlib.suppress(OSError):
            (run_dir / ERROR).write_text(traceback.format_exc())
        if not multirun:
            say("error", message)
            raise SystemExit(1) from None
        say("job failed", f"{run_dir}: {message}")


def launch(overrides: list[str], multirun: bool) -> None:
    """Run through Hydra (rank 0), or follow rank 0 (another torchrun process)."""
    if not lead():
        return follow(overrides)
    import hydra

    argv = [sys.argv[0], *(["--multirun"] if multirun else []), *overrides]
    # the task by reference: under `python -m afd_cli.cli` the CLI module is __main__, whose
    # functions the joblib launcher would pickle by value, with its consoles (and their
    # locks), and fail
    from afd_cli.launch import hydra_task as task

    main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)
    old = sys.argv
    sys.argv = argv
    try:
        main()
    finally:
        sys.argv = old


def join() -> bool:
    """Under torchrun, join its process group (importing torch, which a plain ``afd run``
    leaves until the config is valid); followers of rank 0 print nothing. Whether joined."""
    if "WORLD_SIZE" not in os.environ:
        return False
    from .federated import distributed

    joined = distributed.start() is not None
    if not distributed.is_lead():
        err.quiet = True  # rank 0 says what all processes would
    return joined


def lead() -> bool:
    """Whether this process writes the run directory: rank 0 under torchrun, else the one."""
    if "WORLD_SIZE" not in os.environ:
        return True
    from .federated import distributed

    return distributed.is_lead()


def on_lead(fn: Callable[[], T], what: str) -> T:
    """``fn()`` on rank 0 alone under torchrun (the others get its result or its error)."""
    if "WORLD_SIZE" not in os.environ:
        return fn()
    from .federated import distributed

    return distributed.from_lead(fn, what)


def follow(overrides: list[str]) -> None:
    """A torchrun process other than rank 0: the same run, without Hydra's run directory,
    files or messages. Its own failures are printed (rank 0 sees only a lost peer)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .federated import distributed
    from .federated.guard import Diverged
    from .run.loop import run

    pinned = [o for o in overrides if override_key(o) == "hydra.run.dir"]
    run_dir = Path(str(OverridesParser.create().parse_overrides(pinned)[-1].value()))
    try:
        run(validate(compose(overrides)), run_dir)
    except (Diverged, distributed.FromLead):  # rank 0 reports these
        raise SystemExit(1) from None
    except Exception as e:
        said = str(e) if isinstance(e, distributed.PeerLost) else f"{type(e).__name__}: {e}"
        print(f"error: rank {distributed.env_rank()}: {said}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def sweep_failures(sweep_dir: Path) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """After a sweep: the jobs that did not end ok, and those that ended ok but degenerate
    (:mod:`afd_cli.run.degenerate`), each with why."""
    failed, degenerate = [], []
    for status in sorted(sweep_dir.glob(f"*/{STATUS}")):
        s = json.loads(status.read_text())
        if s.get("status") != "ok":
            failed.append((status.parent, s.get("error", s.get("status"))))
        elif s.get("degenerate"):
            degenerate.append((status.parent, s["degenerate"]))
    return failed, degenerate
