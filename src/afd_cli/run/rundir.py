"""The run directory: the names of its files, once, and how a new run claims one.

``afd run`` claims the directory before Hydra is launched: the default name ends in a random
tag (``${afd_uid:}``) and is made with an exclusive ``mkdir`` (on the rare clash the name is
drawn again); an explicit ``hydra.run.dir`` may exist but not hold a run.

One writer: every command that writes a run directory (``afd run``, ``afd resume``, each job of
a sweep) first takes an exclusive lock on its ``.lock`` file (``fcntl.flock``) and holds it
until the process ends, so a second writer is refused at once, naming the holder's pid, and a
process killed with the lock held releases it (the kernel drops it with the process).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..options import ConfigError

HYDRA = ".hydra"  # Hydra's record of the launch: config.yaml, overrides.yaml
METRICS = "metrics.csv"  # a row per round
CLIENTS = "clients.csv"  # a row per client and round
PARTITION = "partition.csv"  # per-client sizes and label histograms
CHECKPOINT = "checkpoint.pt"  # model, plug-in state, the index of state/, for resume
STATE_DIR = "state"  # per-client state files (spilled and checkpointed), see afd_cli.state
SUMMARY = "summary.json"  # written last: its presence marks a finished run
STATUS = "status.json"  # ok | diverged | failed | interrupted
ERROR = "error.txt"  # the traceback of a failed run
RESUME_LOG = "resume.log"  # the options each `afd resume` changed
LOCK = ".lock"  # held (flock) by the process writing the run; holds its pid

# what marks a directory as holding a run
RUN_FILES = (HYDRA, METRICS, CHECKPOINT, SUMMARY, STATE_DIR)


def tmp(name: str) -> str:
    """The temporary file a file is written to before it replaces ``name``."""
    return f"{name}.tmp"


# What a run writes besides .hydra/ (--from-scratch deletes these). The checkpoint goes last:
# interrupted half way, a plain resume still recomputes exactly.
RUN_OUTPUTS = (
    *(n for name in (METRICS, CLIENTS, SUMMARY, STATUS) for n in (name, tmp(name))),
    PARTITION,
    ERROR,
    RESUME_LOG,
    tmp(CHECKPOINT),
    CHECKPOINT,
)


_held: dict[Path, int] = {}  # run directories this process holds, and the lock's fd


def lock(run_dir: Path) -> None:
    """Hold ``run_dir``'s lock for the rest of this process (again: nothing to do).

    Raises ConfigError when another process holds it (naming its pid), or when the lock file
    cannot be made (a read-only directory: naming ``afd report -o``, which still works)."""
    key = run_dir.resolve()
    if key in _held:
        return
    try:
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(
            f"cannot lock {run_dir} for writing ({e.strerror or e}); a run there can still be "
            f"reported elsewhere: afd report {run_dir} -o DIR"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"{run_dir} is in use by another afd process (pid {pid}); wait for it to end, or "
            f"stop it (kill {pid}) and continue with: afd resume {run_dir}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd


def unused_claim(run_dir: Path) -> bool:
    """A directory whose only trace of a run is an empty ``.hydra/`` (a run interrupted between
    claiming it and starting; with the lock held, nobody is using it): free to claim again."""
    hydra = run_dir / HYDRA
    others = [p for p in run_dir.iterdir() if p.name not in (HYDRA, LOCK)]
    return hydra.is_dir() and not any(hydra.iterdir()) and not others


def claim(run_dir: Path, explicit: bool) -> bool:
    """Create and lock ``run_dir`` for a new run; False when a default name was taken
    meanwhile (draw another). Raises ConfigError when an explicit directory holds a run, is
    in use, is a file, or cannot be made."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"hydra.run.dir={run_dir} is a file, not a directory; choose another")
    try:
        if not explicit:
            run_dir.mkdir(parents=True)
            lock(run_dir)
            (run_dir / HYDRA).mkdir()
            return True
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return False  # another run drew the same default name this second
    except OSError as e:
        raise ConfigError(f"cannot create the run directory {run_dir}: {e.strerror or e}") from None
    lock(run_dir)  # from here no other afd process can claim it
    if unused_claim(run_dir):
        return True
    held = next((f for f in RUN_FILES if (run_dir / f).exists()), None)
    if held is not None:
        raise ConfigError(
            f"hydra.run.dir={run_dir} already holds a run ({held} exists); continue it "
            f"with: afd resume {run_dir}; or choose another hydra.run.dir"
        )
    (run_dir / HYDRA).mkdir()
    return True
