"""The run directory: the names of its files, once, and how a new run claims one.

``afd run`` claims the directory before Hydra is launched: the default name ends in a random
tag (``${afd_uid:}``) and is made with an exclusive ``mkdir`` (on the rare clash the name is
drawn again); an explicit ``hydra.run.dir`` may exist but not hold a run, and ``.hydra/`` is
made exclusively as the claim, so two runs racing for one directory cannot both start.
"""

from __future__ import annotations

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


def claim(run_dir: Path, explicit: bool) -> bool:
    """Create ``run_dir`` for a new run; False when a default name was taken meanwhile (draw
    another). Raises ConfigError when an explicit directory holds a run or cannot be made."""
    held = None
    try:
        if not explicit:
            run_dir.mkdir(parents=True)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            held = next((f for f in RUN_FILES if (run_dir / f).exists()), None)
            if held is None:
                try:
                    (run_dir / HYDRA).mkdir()
                except FileExistsError:  # another run claimed it just now
                    held = HYDRA
    except FileExistsError:
        return False  # another run drew the same default name this second
    except OSError as e:
        raise ConfigError(f"cannot create the run directory {run_dir}: {e.strerror or e}") from None
    if held is not None:
        raise ConfigError(
            f"hydra.run.dir={run_dir} already holds a run ({held} exists); continue it "
            f"with: afd resume {run_dir}; or choose another hydra.run.dir"
        )
    return True
