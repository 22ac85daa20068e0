"""Resume exactly or refuse: what a run in a directory may continue from.

A run resumes from its checkpoint when the config agrees with the one it was made with in
everything that alters results (:data:`MAY_CHANGE` lists what may differ, and keys the chosen
plug-ins do not read never matter). Rows of ``metrics.csv`` / ``clients.csv`` past the
checkpoint, or a damaged tail, are dropped first; rows missing before it are recomputed from
round 1 (rounds are seeded by ``(seed, round)``, so that restores them exactly).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import registry
from ..config import ConfigError, RootConfig, validate
from ..federated import distributed
from ..metrics import intact_client_rows, intact_rows
from . import checkpoint, rundir
from .build import resolve_device, resolve_precision
from .rundir import CHECKPOINT, CLIENTS, HYDRA, METRICS, RESUME_LOG, RUN_OUTPUTS, STATE_DIR, SUMMARY
from .state import RunState

if TYPE_CHECKING:
    from .build import Simulation

# Options a resume may change: they do not alter the numbers of the rounds already run (or,
# for schedule.rounds and schedule.eval_every, only how many rounds and which are evaluated).
MAY_CHANGE = (
    "resume",  # (first: not listed in messages)
    "progress",
    "data_dir",
    "device",
    "threads",
    "checkpoint_every",
    "trainer",
    "state.memory_mb",  # spilling to disk and reading back is exact
    "state.fsync",  # when bytes reach the disk, not which
    "on_nonfinite",  # matters only once a result is non-finite
    "on_degenerate",  # matters only once the train loss has exploded
    "schedule.rounds",  # extending a finished run with more rounds is allowed
    "schedule.eval_every",
)


def comparable(cfg: RootConfig) -> dict[str, Any]:
    """The parts of a config that must match for a resume to be the same run: all but
    :data:`MAY_CHANGE` and the keys its plug-ins do not read (``strategy.rate`` of fedavg)."""
    d = asdict(cfg)  # precision=auto as it resolves here: the checkpoint stores it resolved
    d["precision"] = resolve_precision(cfg.precision, resolve_device(cfg.device))
    for key in (*MAY_CHANGE, *registry.unread_keys(d)):
        *parents, leaf = key.split(".")
        node = d
        for k in parents:
            node = node[k]
        node.pop(leaf, None)
    return d


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, as ``key (run: x, asked: y)``, skipping
    :data:`MAY_CHANGE` and unread keys (so checkpoints that still hold those keys compare the
    same)."""
    a, b = flatten(old), flatten(new)
    allowed = (*MAY_CHANGE, *registry.unread_keys(old), *registry.unread_keys(new))
    out = []
    for key in sorted(a.keys() | b.keys()):
        if key in allowed or key.startswith(tuple(f"{k}." for k in allowed)):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key} (run: {a.get(key, '<unset>')}, asked: {b.get(key, '<unset>')})")
    return out


def resume_point(cfg: RootConfig, run_dir: Path) -> dict | None:
    """The checkpoint to continue from (``resume`` and one in ``run_dir``), or None to start
    at round 1: refused (ConfigError) if it holds another run.

    ``last_row`` (popped by the caller): the checkpoint's own round's rows, when they did not
    reach metrics.csv / clients.csv (killed between the checkpoint and its rows)."""
    path = run_dir / CHECKPOINT
    ckpt = checkpoint.load(path) if cfg.resume and path.exists() else None
    if ckpt is not None:
        differ = config_differences(ckpt["config"], comparable(cfg))
        if differ:
            raise ConfigError(
                f"{run_dir} holds a run with other {', '.join(differ)}; use a new "
                f"hydra.run.dir, or start over with: afd resume {run_dir} --from-scratch"
            )
        done = ckpt["state"]["round"]
        per_round = cfg.schedule.clients_per_round
        metrics_rows = len(intact_rows(run_dir / METRICS, done))
        intact, where = min(
            (metrics_rows, run_dir / METRICS),
            (
                len(intact_client_rows(run_dir / CLIENTS, per_round, done)) // per_round,
                run_dir / CLIENTS,
            ),
            key=lambda x: x[0],
        )
        last = ckpt.get("row")
        if (  # clients.csv is written first: only a missing metrics row is such a kill
            intact == done - 1
            and metrics_rows == done - 1
            and isinstance(last, dict)
            and "metrics" in last
            and last["metrics"]["round"] == done
        ):
            intact = done  # killed between the checkpoint and its rows: the rows are in it
            ckpt["last_row"] = last
        if intact < done:
            lost = f"round {done}" if intact + 1 == done else f"rounds {intact + 1}-{done}"
            print(
                f"note: {where} holds {intact} intact rounds but {path} is at round {done}; "
                f"recomputing from round 1 to restore {lost} exactly",
                file=sys.stderr,
                flush=True,
            )
            ckpt = None
    return ckpt


def start(sim: Simulation, run_dir: Path) -> tuple[RunState, dict[str, Any] | None]:
    """Where the run starts: a fresh state, or the checkpoint's with its weights and plug-in
    state loaded into ``sim``; and the checkpoint's pending rows (written first), if any."""
    ckpt = distributed.from_lead(lambda: resume_point(sim.cfg, run_dir), "reading the checkpoint")
    if ckpt is not None and "store" in ckpt:  # written by any number of processes
        # per-client state stays on disk until asked for; load() checked every file. Under
        # torchrun each process takes its clients' share (afd_cli.stateindex)
        sim.store.restore(ckpt["store"], checked=True)
    else:
        sim.store.reset()  # starting over (or from an inline checkpoint): no stale state files
    # rank 0 has deleted the files no index names: only now may the others write theirs
    distributed.barrier("tidying the client state")
    if ckpt is None:
        return RunState(), None
    checkpoint.restore(sim, ckpt)
    return RunState.from_dict(ckpt["state"]), ckpt.pop("last_row", None)


# --- afd resume: the checks before anything is launched -------------------------------------


def saved_config(run_dir: Path) -> RootConfig | None:
    """The validated config of the run's last launch (``.hydra/config.yaml``), if readable."""
    from omegaconf import OmegaConf

    try:
        return validate(OmegaConf.load(run_dir / HYDRA / "config.yaml"))
    except Exception:
        return None


def check(run_dir: Path, cfg: RootConfig) -> dict | None:
    """Refuse (ConfigError) a resume that cannot be exact; touches no file.

    A missing checkpoint where rounds were recorded (and one was due), an unreadable one, or
    a config that differs from the checkpoint's in anything that alters results. Returns the
    record for ``resume.log`` (the options that changed) or None if nothing changed.
    """
    path = run_dir / CHECKPOINT
    before = saved_config(run_dir)
    metrics = run_dir / METRICS
    if path.exists():
        ckpt = checkpoint.load(path)
        old, done = ckpt["config"], int(ckpt["state"]["round"])
    else:
        recorded = 0
        if metrics.exists():
            with metrics.open("rb") as f:
                recorded = max(0, sum(1 for line in f if line.strip()) - 1)
        # a round's row is written just before its checkpoint: a kill -9 between the two
        # leaves `due` rows and no checkpoint, and starting over from round 1 is still exact
        due = before.checkpoint_every if before is not None else 1
        if (run_dir / SUMMARY).exists() or recorded > due:
            raise ConfigError(
                f"{path} is missing but {metrics} records {recorded} rounds, so the run "
                f"cannot continue exactly; start it over with: afd resume {run_dir} --from-scratch"
            )
        old = comparable(before) if before is not None else None
        done = 0
    if old is not None:
        differ = config_differences(old, comparable(cfg))
        if differ:
            raise ConfigError(
                f"refused, nothing changed: {'; '.join(differ)} would alter the results of the "
                f"run in {run_dir}; on resume only {', '.join(MAY_CHANGE[1:])} may "
                "change (start a new run for other values)"
            )
    changed = {}
    if before is not None:
        a, b = flatten(asdict(before)), flatten(asdict(cfg))
        changed = {k: [a.get(k), b.get(k)] for k in sorted(a) if a.get(k) != b.get(k)}
        changed.pop("resume", None)
    if not changed:
        return None
    per_round = cfg.schedule.clients_per_round
    clients = len(intact_client_rows(run_dir / CLIENTS, per_round, done)) // per_round
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "from_round": min(done, len(intact_rows(metrics, done)), clients),
        "changed": changed,
    }


def prepare(run_dir: Path, cfg: RootConfig, from_scratch: bool) -> None:
    """What ``afd resume`` changes in the run directory before launching: with
    ``from_scratch`` its outputs deleted, else the changed options logged in resume.log."""
    if from_scratch:
        for name in RUN_OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)
        # after checkpoint.pt: a run starting without one deletes any state files itself
        shutil.rmtree(run_dir / STATE_DIR, ignore_errors=True)
        return
    record = check(run_dir, cfg)
    if record is not None:
        with (run_dir / RESUME_LOG).open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def launch_overrides(run_dir: Path, overrides: list[str], from_scratch: bool) -> list[str]:
    """The overrides ``afd resume`` launches with: the run's own (``.hydra/overrides.yaml``),
    then the new ones; locked and checked (:func:`check`) before the directory is changed
    (rank 0 alone under torchrun). Raises ConfigError with one line otherwise."""
    from omegaconf import ListConfig, OmegaConf

    from .. import compose

    saved = run_dir / HYDRA / "overrides.yaml"
    if not saved.exists():
        if run_dir.is_dir() and rundir.unused_claim(run_dir):
            raise ConfigError(
                f"{run_dir} was claimed but its run never started (an empty .hydra/); start it "
                f"with: afd run ... hydra.run.dir={run_dir}"
            )
        raise ConfigError(f"{run_dir} is not a run directory (no .hydra/overrides.yaml)")
    rundir.lock(run_dir)  # before anything is read for changing: one writer at a time
    try:
        listed = OmegaConf.load(saved)
        if not isinstance(listed, ListConfig) or not all(isinstance(o, str) for o in listed):
            raise ValueError("not a list of key=value overrides")
    except Exception as e:
        why = " ".join(str(e).split())[:120]
        raise ConfigError(
            f"{saved} is damaged ({why}); the run cannot be resumed from it: start a new run"
        ) from None
    key = compose.override_key
    for o in overrides:
        name, _, value = o.partition("=")
        if key(name) == "resume" and value.strip().lower() != "true":
            raise ConfigError(
                f"{o} contradicts `afd resume`; to start the run over use: "
                f"afd resume {run_dir} --from-scratch"
            )
        if key(name) == "hydra.run.dir":
            raise ConfigError(f"{o}: afd resume continues the run in {run_dir}; it cannot move it")
    overrides = [o for o in overrides if key(o) != "resume"]
    old = [str(o) for o in listed if key(str(o)) not in ("hydra.run.dir", "resume")]
    new = {key(o) for o in overrides}
    merged = [o for o in old if key(o) not in new] + overrides
    try:
        prepare(run_dir, compose.check(merged), from_scratch)
    except OSError as e:
        raise ConfigError(f"cannot change {e.filename or run_dir}: {e.strerror or e}") from None
    return merged
