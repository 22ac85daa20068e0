"""``afd report``: merge the ``metrics.csv`` of many runs into one comparison over seeds.

Runs are found recursively under the given paths (a run dir, a sweep dir, or several). Each
run's config comes from its ``summary.json`` (``"config"``), else ``.hydra/config.yaml``, else
the config columns of ``metrics.csv``. Runs are grouped by everything but the seed: the five
core keys (dataset, model, partition, strategy, compression) plus any other config key whose
value differs between runs that share those five (e.g. ``strategy.rate`` in a rate sweep).

Per configuration: final and best accuracy (mean ± std over seeds), rounds, MB (up + down) and
simulated hours to reach a target accuracy, total MB up/down, and the reduction factors (bytes,
convergence time) against FedAvg with no compression of the same setting. Outputs:
``summary.csv``, ``report.md``, ``all_metrics.csv`` and the PNG figures of ``plots.FIGURES``
(accuracy vs round, vs cumulative MB, vs simulated hours).

Where things live: ``load`` (reading run dirs, --rounds), ``retime`` (--network: the runs'
clock under another profile), ``group`` (grouping over seeds, targets, reductions), ``tables``
(Markdown and terminal tables), ``plots`` (one function per figure), ``common`` (shared records
and constants). This module ties them together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import CORE_KEYS, Report, ReportError, Run, constant_keys
from .group import analyse, grouping_keys
from .load import find_metrics, load_runs, read_config, read_metrics
from .plots import FIGURES, PLOTS, plot
from .retime import retime_runs
from .tables import markdown, network_markdown, network_table_rows, rich_table, table_rows

__all__ = [
    "write_all",
    "CORE_KEYS",
    "FIGURES",
    "PLOTS",
    "Report",
    "ReportError",
    "Run",
    "analyse",
    "build",
    "constant_keys",
    "find_metrics",
    "grouping_keys",
    "load_runs",
    "markdown",
    "network_markdown",
    "network_table_rows",
    "plot",
    "read_config",
    "read_metrics",
    "retime_runs",
    "rich_table",
    "table_rows",
    "write",
]


def write(report: Report, out_dir: Path) -> dict[str, Path]:
    """summary.csv, all_metrics.csv, report.md and the plots in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "summary": out_dir / "summary.csv",
        "metrics": out_dir / "all_metrics.csv",
        "markdown": out_dir / "report.md",
    }
    report.summary.to_csv(files["summary"], index=False)
    report.curves.to_csv(files["metrics"], index=False)
    plots = plot(report, out_dir)
    files["markdown"].write_text(markdown(report, [p.name for p in plots]))
    for p in plots:
        files[p.stem] = p
    return files


def build(
    paths: Sequence[Path],
    target: float | None = None,
    warn: Callable[[str], Any] | None = None,
    rounds: int | None = None,
    network_for: Callable[[dict[str, Any]], Any] | None = None,
    clock_note: str = "",
) -> Report:
    """Load, check and analyse the runs under ``paths`` (raises ReportError on bad input).

    ``rounds`` cuts every run at that round, so runs of different lengths (or one long run)
    are compared "after the same rounds"; runs that stop earlier are kept, with a warning.
    ``network_for`` (``--network``) maps a run's config to the network config to re-time it
    with (:mod:`.retime`); ``clock_note`` says so in the report.
    """
    if target is not None and not 0 < target <= 1:
        raise ReportError(f"--target={target} is out of range; expected an accuracy in (0, 1]")
    if rounds is not None and rounds < 1:
        raise ReportError(f"--rounds={rounds} is out of range; expected an integer >= 1")
    runs, messages = load_runs(paths, warn, rounds)
    if network_for is not None:
        runs = retime_runs(runs, network_for)
    report = analyse(runs, target)
    report.clock_note = clock_note
    if rounds is not None:
        report.target_note += f"; runs cut at round {rounds} (--rounds)"
    report.warnings = messages
    return report


def write_all(results: dict[str | None, Report], out_dir: Path, console: Any) -> list[Path]:
    """Every file of ``afd report`` under ``out_dir``, the table(s) printed on ``console``:
    one report, or one per ``--network`` profile and their times side by side."""
    import csv

    from rich.table import Table

    if len(results) == 1:
        result = next(iter(results.values()))
        files = list(write(result, out_dir).values())
        console.print(rich_table(result))
        return files
    files = [f for n, r in results.items() for f in write(r, out_dir / str(n)).values()]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "time_by_network.md").write_text(network_markdown(results))
    header, rows = network_table_rows(results)
    with (out_dir / "time_by_network.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    files += [out_dir / "time_by_network.md", out_dir / "time_by_network.csv"]
    names = ", ".join(str(n) for n in results)
    table = Table(*header, title=f"simulated time to target under {names}")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    return files
