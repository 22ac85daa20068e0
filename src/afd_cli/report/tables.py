"""The human-readable tables: one row per configuration, as Markdown (``report.md``) and as a
rich table for the terminal (compact: keys constant over the report are shown once)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .common import CORE_KEYS, Report, constant_keys
from .plots import PLOTS


def _pm(mean: float, std: float, fmt: str) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    s = format(mean, fmt)
    if std is not None and not math.isnan(std):
        s += " ± " + format(std, fmt)
    return s


def table_rows(report: Report, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the human-readable table (shared by Markdown and rich).

    ``compact`` (the terminal) leaves out keys constant over the report, rounds and target.
    """
    s = report.summary
    const = constant_keys(report)
    shown_keys = [k for k in report.keys if k not in const or (not compact and k in CORE_KEYS)] or [
        "strategy",
        "compression",
    ]
    header = [
        *shown_keys,
        "seeds",
        *([] if compact else ["rounds"]),
        "final acc %",
        "best acc %",
        *([] if compact else ["target %"]),
        "rounds to target",
        "MB to target",
        "MB up",
        "MB down",
        "reduction ×",
    ]
    rows = []
    for _, r in s.iterrows():
        n, hit = int(r["seeds"]), int(r["reached"])
        if hit == 0:
            rounds_t = mb_t = "not reached"
        else:
            rounds_t = _pm(r["rounds_to_target_mean"], r["rounds_to_target_std"], ".1f")
            mb_t = _pm(r["mb_to_target_mean"], r["mb_to_target_std"], ",.1f")
            if hit < n:
                rounds_t += f" ({hit}/{n} seeds)"
                mb_t += f" ({hit}/{n} seeds)"
        if math.isnan(r["reduction"]):
            red = "–"
        else:
            red = f"{r['reduction']:.2f}" + (" (total)" if r["reduction_basis"] == "total" else "")
        rows.append(
            [
                *(str(r[k]) for k in shown_keys),
                f"{n} ({int(r['diverged'])} diverged)" if r.get("diverged") else str(n),
                *([] if compact else [str(int(r["rounds"]))]),
                _pm(100 * r["final_acc_mean"], 100 * r["final_acc_std"], ".2f"),
                _pm(100 * r["best_acc_mean"], 100 * r["best_acc_std"], ".2f"),
                *([] if compact else [f"{100 * r['target_acc']:.2f}"]),
                rounds_t,
                mb_t,
                f"{r['mb_up_mean']:,.1f}",
                f"{r['mb_down_mean']:,.1f}",
                red,
            ]
        )
    return header, rows


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
        "Diverged: runs stopped by a non-finite loss or update; their rounds before it count.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < len(header) - 9 else "--:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    for p in plots:
        lines += [f"![{p}]({p})", ""]
    if report.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report.warnings] + [""]
    return "\n".join(lines)


def rich_table(report: Report):
    from rich.table import Table

    header, rows = table_rows(report, compact=True)
    n_text = len(header) - 7
    const = ", ".join(f"{k}={v}" for k, v in constant_keys(report).items())
    targets = sorted(set(report.summary["target_acc"].round(4)))
    tgt = ", ".join(f"{100 * t:.2f}%" for t in targets)
    table = Table(
        title=f"{const}  |  {len(report.runs)} runs  |  target acc {tgt}",
        title_justify="left",
        caption=report.target_note,
        caption_justify="left",
    )
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < n_text else "right")
    for r in rows:
        table.add_row(*r)
    return table
