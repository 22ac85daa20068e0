"""The human-readable tables: one row per configuration, as Markdown (``report.md``) and as a
rich table for the terminal (compact: keys constant over the report are shown once).

The simulated-time columns (hours to target, time reduction) appear when some run has a clock
(``sim_time_s``; not with ``network=none`` or runs older than the clock)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from .common import CORE_KEYS, Report, constant_keys
from .plots import PLOTS


def _pm(mean: float, std: float, fmt: str) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    s = format(mean, fmt)
    if std is not None and not math.isnan(std):
        s += " ± " + format(std, fmt)
    return s


def has_clock(report: Report) -> bool:
    """Whether any configuration has simulated times (the time columns are shown)."""
    return bool((report.summary.get("timed", 0) > 0).any())


def _reduction(value: float, basis: str) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:.2f}" + (" (total)" if basis == "total" else "")


def _to_target(r, mean: str, std: str, fmt: str) -> str:
    """A "to target" cell: mean ± std over the seeds that reached it, or "not reached"."""
    n, hit = int(r["seeds"]), int(r["reached"])
    if hit == 0:
        return "not reached"
    if math.isnan(r[mean]):
        return "–"
    cell = _pm(r[mean], r[std], fmt)
    return cell + (f" ({hit}/{n} seeds)" if hit < n else "")


def _seeds(r) -> str:
    """``3``, or ``3 (1 diverged, 1 degenerate)``."""
    marks = [f"{int(r.get(k, 0))} {k}" for k in ("diverged", "degenerate") if r.get(k, 0)]
    return f"{int(r['seeds'])} ({', '.join(marks)})" if marks else str(int(r["seeds"]))


def _target(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.2f}"


def table_rows(report: Report, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the human-readable table (shared by Markdown and rich).

    ``compact`` (the terminal) leaves out keys constant over the report, rounds and target.
    The first :func:`key_columns` columns are text, the others numbers.
    """
    s = report.summary
    const = constant_keys(report)
    shown_keys = [k for k in report.keys if k not in const or (not compact and k in CORE_KEYS)] or [
        "strategy",
        "compression",
    ]
    clock = has_clock(report)
    header = [
        *shown_keys,
        "seeds",
        *([] if compact else ["rounds"]),
        "final acc %",
        "best acc %",
        *([] if compact else ["target %"]),
        "rounds to target",
        "MB to target",
        *(["hours to target"] if clock else []),
        "MB up",
        "MB down",
        "reduction ×",
        *(["time ×"] if clock else []),
    ]
    rows = []
    for _, r in s.iterrows():
        rows.append(
            [
                *(str(r[k]) for k in shown_keys),
                _seeds(r),
                *([] if compact else [str(int(r["rounds"]))]),
                _pm(100 * r["final_acc_mean"], 100 * r["final_acc_std"], ".2f"),
                _pm(100 * r["best_acc_mean"], 100 * r["best_acc_std"], ".2f"),
                *([] if compact else [_target(r["target_acc"])]),
                _to_target(r, "rounds_to_target_mean", "rounds_to_target_std", ".1f"),
                _to_target(r, "mb_to_target_mean", "mb_to_target_std", ",.1f"),
                *(
                    [_to_target(r, "hours_to_target_mean", "hours_to_target_std", _hours_fmt(r))]
                    if clock
                    else []
                ),
                f"{r['mb_up_mean']:,.1f}",
                f"{r['mb_down_mean']:,.1f}",
                _reduction(r["reduction"], r["reduction_basis"]),
                *([_reduction(r["time_reduction"], r["time_reduction_basis"])] if clock else []),
            ]
        )
    return header, rows


def _hours_fmt(r) -> str:
    """Two decimals from an hour up; three significant digits below (short test runs)."""
    h = r["hours_to_target_mean"]
    return ",.2f" if math.isnan(h) or h >= 1 else ".3g"


def key_columns(header: list[str]) -> int:
    """How many leading columns of a :func:`table_rows` header are text (the config keys)."""
    return header.index("seeds")


def markdown(report: Report, plots: Iterable[str] = PLOTS) -> str:
    header, rows = table_rows(report)
    runs = report.runs
    dataset = runs[0].config.get("dataset")
    lines = [
        f"# afd report: {dataset}",
        "",
        f"{len(runs)} runs, {len(report.summary)} configurations; mean ± std over seeds "
        "(sample std; none with one seed). MB = 10^6 bytes as encoded on the wire.",
        f"Rounds / MB to target: first evaluated round with test accuracy >= target; "
        f'{report.target_note}. "not reached": no seed reached it.',
        "Reduction ×: MB to target of fedavg + none divided by this configuration's (both "
        "reached by every seed), else the ratio of total MB up + down, marked (total).",
        *(
            [
                "Hours to target: simulated hours (network.* clock) at that round; time ×: "
                "the same reduction in simulated time to target (else total time). "
                f"Clock: {_clock_note(report)}.",
            ]
            if has_clock(report)
            else []
        ),
        "Diverged: runs stopped by a non-finite loss or update; their rounds before it count.",
        *([DEGENERATE_NOTE] if any(r.degenerate for r in runs) else []),
        "",
        "| " + " | ".join(header) + " |",
        "|"
        + "|".join("---" if i < key_columns(header) else "--:" for i in range(len(header)))
        + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines += widths_markdown(report)
    for p in plots:
        lines += [f"![{p}]({p})", ""]
    if report.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report.warnings] + [""]
    return "\n".join(lines)


def rich_table(report: Report):
    from rich.table import Table

    header, rows = table_rows(report, compact=True)
    n_text = key_columns(header)
    const = ", ".join(f"{k}={v}" for k, v in constant_keys(report).items())
    targets = sorted({t for t in report.summary["target_acc"].round(4) if not math.isnan(t)})
    tgt = ", ".join(f"{100 * t:.2f}%" for t in targets) or "–"
    degenerate = any(r.degenerate for r in report.runs)
    table = Table(
        title=f"{const}  |  {len(report.runs)} runs  |  target acc {tgt}",
        title_justify="left",
        caption=report.target_note + (f"\n{DEGENERATE_NOTE}" if degenerate else ""),
        caption_justify="left",
    )
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < n_text else "right")
    for r in rows:
        table.add_row(*r)
    return table


DEGENERATE_NOTE = (
    "Degenerate: runs whose best accuracy is at or below the majority baseline, or whose "
    "train loss grew 1000x round 1's; their rounds neither reach the target nor set it "
    "(nor does a round with a non-finite test loss or accuracy)."
)


def _clock_note(report: Report) -> str:
    """The network profiles behind the report's simulated times, e.g. ``network=lte``."""
    names = sorted({str(r.config.get("network.name", "?")) for r in report.runs})
    return ", ".join(f"network={n}" for n in names) + (
        f"; {report.clock_note}" if report.clock_note else ""
    )


NETWORK_BASE = ("seeds", "final acc %", "rounds to target", "MB to target", "reduction ×")


def network_table_rows(reports: dict[str, Report]) -> tuple[list[str], list[list[str]]]:
    """One row per configuration with the simulated time to target and the time reduction
    under each network profile side by side (``afd report --network a,b``): the runs are the
    same in every report, only their clock differs, so the other columns are shared."""
    first = next(iter(reports.values()))
    header, rows = table_rows(first, compact=True)
    labels = list(first.summary["config"])
    cols = [*range(key_columns(header)), *(header.index(c) for c in NETWORK_BASE)]
    out_header = [header[i] for i in cols]
    out_rows = [[r[i] for i in cols] for r in rows]
    for name, report in reports.items():
        if list(report.summary["config"]) != labels:
            raise ValueError("the reports of one --network list must hold the same runs")
        h, rs = table_rows(report, compact=True)
        out_header += [f"hours to target ({name})", f"time × ({name})"]
        for line, r in zip(out_rows, rs, strict=True):
            line += [r[h.index("hours to target")], r[h.index("time ×")]]
    return out_header, out_rows


def network_markdown(reports: dict[str, Report]) -> str:
    """The side-by-side table as Markdown, with what its numbers mean."""
    header, rows = network_table_rows(reports)
    first = next(iter(reports.values()))
    const = ", ".join(f"{k}={v}" for k, v in constant_keys(first).items())
    lines = [
        f"# Convergence time under {len(reports)} network profiles: {const}",
        "",
        f"{len(first.runs)} runs; mean ± std over seeds. {first.target_note}. Hours: simulated "
        "(network + device clock) at the first round at or above the target; time × = fedavg + "
        "none's hours to target ÷ this configuration's (else of total time, marked (total)). "
        "Each profile's full report is in its own directory.",
        "",
        "| " + " | ".join(header) + " |",
        "|"
        + "|".join("---" if i < key_columns(header) else "--:" for i in range(len(header)))
        + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    return "\n".join(lines)


WIDTHS_FILE = "widths.csv"  # HeteroFL's evaluation (run/callbacks.py)
CLIENTS_FILE = "clients.csv"


def widths_table_rows(report: Report) -> tuple[list[str], list[list[str]]] | None:
    """Per configuration: the share of sampled clients the deadline dropped, the mean width
    of the clients aggregated (``clients.csv``), and the test accuracy of each width's
    sub-model at the last round tested (``widths.csv``); mean ± std over seeds. None when no
    run dropped a client or tested widths (the section is then left out of the report)."""
    s = report.summary
    per_run: dict[str, dict[str, float]] = {}
    widths: set[float] = set()
    for run in report.runs:
        m = run.metrics
        last = int(m["round"].max())
        out = {"dropped": float(m["dropped"].sum() / m["clients"].sum()) if "dropped" in m else 0}
        clients = run.path / CLIENTS_FILE
        if clients.exists():
            c = pd.read_csv(clients)
            c = c[c["round"] <= last]
            if "width" in c and c["width"].notna().all() and len(c):
                kept = c[c["dropped"] == 0] if "dropped" in c else c
                out["width"] = float(kept["width"].mean()) if len(kept) else math.nan
        tested = run.path / WIDTHS_FILE
        if tested.exists():
            t = pd.read_csv(tested)
            t = t[t["round"] <= last]
            if len(t):
                t = t[t["round"] == t["round"].max()]
                for w, acc in zip(t["width"], t["test_acc"], strict=True):
                    out[f"acc {w:g}"] = float(acc)
                    widths.add(float(w))
        per_run[str(run.path)] = out
    if not widths and not any(v["dropped"] for v in per_run.values()):
        return None
    const = constant_keys(report)
    keys = [k for k in report.keys if k not in const] or ["strategy", "compression"]
    cols = [f"acc {w:g}" for w in sorted(widths, reverse=True)]
    header = [*keys, "seeds", "dropped %", "mean width", *(f"{c} %" for c in cols)]
    rows = []
    for _, r in s.iterrows():
        members = [per_run.get(p, {}) for p in str(r["runs"]).split(" ")]

        def cell(key: str, scale: float, fmt: str, members=members) -> str:
            x = pd.Series([m.get(key, math.nan) for m in members], dtype=float).dropna()
            if x.empty:
                return "–"
            return _pm(scale * x.mean(), scale * x.std(ddof=1) if len(x) > 1 else math.nan, fmt)

        rows.append(
            [
                *(str(r[k]) for k in keys),
                str(int(r["seeds"])),
                cell("dropped", 100, ".1f"),
                cell("width", 1, ".3f"),
                *(cell(c, 100, ".2f") for c in cols),
            ]
        )
    return header, rows


def widths_markdown(report: Report) -> list[str]:
    """The section of ``report.md`` on dropped clients and widths (empty when none)."""
    table = widths_table_rows(report)
    if table is None:
        return []
    header, rows = table
    return [
        "## Clients and widths",
        "",
        "Dropped %: sampled clients past network.deadline_s, over all rounds. Mean width: of "
        "the clients aggregated (clients.csv). acc w %: test accuracy of the sub-model of the "
        "first ceil(w * units) units of every layer at the last round tested (widths.csv); "
        "acc 1 is the global model.",
        "",
        "| " + " | ".join(header) + " |",
        "|"
        + "|".join("---" if i < key_columns(header) else "--:" for i in range(len(header)))
        + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
