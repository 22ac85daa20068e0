"""``afd report``: merge the ``metrics.csv`` of many runs into one comparison over seeds.

Runs are found recursively under the given paths (a run dir, a sweep dir, or several). Each
run's config comes from its ``summary.json`` (``"config"``), else ``.hydra/config.yaml``, else
the config columns of ``metrics.csv``. Runs are grouped by everything but the seed: the five
core keys (dataset, model, partition, strategy, compression) plus any other config key whose
value differs between runs that share those five (e.g. ``strategy.rate`` in a rate sweep).

Per configuration: final and best accuracy (mean ± std over seeds), rounds and MB (up + down)
to reach a target accuracy, total MB up/down, and the reduction factor against FedAvg with no
compression of the same setting. Outputs: ``summary.csv``, ``report.md``, ``all_metrics.csv``
and two PNG plots (accuracy vs round, accuracy vs cumulative MB).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import COMPRESSIONS, SPARSE_COMPRESSIONS

CORE_KEYS = ("dataset", "model", "partition", "strategy", "compression")
# Config keys that never make two runs different experiments.
IGNORED_KEYS = {
    "seed",
    "device",
    "data_dir",
    "progress",
    "resume",
    "checkpoint_every",
    "schedule.eval_batch_size",
}
REQUIRED_COLUMNS = ("round", "test_acc", "cum_bytes_down", "cum_bytes_up")
BASELINE = {"strategy": "fedavg", "compression": "none"}
DEFAULT_TARGET_SHARE = 0.99
MB = 1e6
PLOTS = ("accuracy_vs_round.png", "accuracy_vs_mb.png")


class ReportError(ValueError):
    """A user-facing problem with the inputs of a report; its message is one line."""


@dataclass
class Run:
    path: Path  # the run directory
    config: dict[str, Any]  # flattened: {"dataset": "mnist", "strategy.rate": 0.25, ...}
    metrics: pd.DataFrame
    finished: bool


@dataclass
class Report:
    summary: pd.DataFrame  # one row per configuration
    curves: pd.DataFrame  # all rounds of all runs, with a "config" label column
    keys: list[str]  # the grouping keys, in display order
    runs: list[Run]
    target_note: str
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- loading


def find_metrics(paths: Sequence[Path]) -> list[Path]:
    """Every ``metrics.csv`` under ``paths`` (each a run dir, a sweep dir or a CSV file)."""
    found: dict[Path, None] = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ReportError(f"{p} does not exist")
        if p.is_file():
            if p.name != "metrics.csv":
                raise ReportError(f"{p} is not a metrics.csv or a directory of runs")
            found[p.resolve()] = None
            continue
        for f in sorted(p.rglob("metrics.csv")):
            found[f.resolve()] = None
    return list(found)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _normalise_config(flat: dict[str, Any]) -> dict[str, Any]:
    """``dataset.name`` -> ``dataset`` (and so on for the core groups); drop ignored keys."""
    out = {}
    for k, v in flat.items():
        if k.endswith(".name") and k[: -len(".name")] in CORE_KEYS:
            k = k[: -len(".name")]
        if k in IGNORED_KEYS or k == "hydra" or k.startswith("hydra."):
            continue
        out[k] = v
    return out


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's config (flattened), from summary.json or .hydra/config.yaml; None if neither."""
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            cfg = json.loads(summary.read_text()).get("config")
            if isinstance(cfg, dict):
                return _normalise_config(_flatten(cfg))
        except (OSError, ValueError):
            pass
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if hydra_cfg.exists():
        import yaml

        try:
            cfg = yaml.safe_load(hydra_cfg.read_text())
            if isinstance(cfg, dict):
                return _normalise_config(_flatten(cfg))
        except (OSError, yaml.YAMLError):
            pass
    return None


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.csv as a DataFrame; raise ReportError saying why it is unusable."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ReportError(f"cannot read: {e.strerror or e}") from None
    if not raw.strip():
        raise ReportError("empty file")
    if not raw.endswith(b"\n"):
        raise ReportError("truncated (the last line is incomplete)")
    try:
        rows = list(csv.reader(raw.decode("utf-8").splitlines()))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ReportError(f"not a CSV file ({e})") from None
    header, body = rows[0], [r for r in rows[1:] if r]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ReportError(f"missing column(s) {', '.join(missing)}")
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise ReportError(f"line {i} has {len(r)} fields, the header {len(header)}")
    if not body:
        raise ReportError("no rounds recorded")
    df = pd.DataFrame(body, columns=header)
    text_cols = {"dataset", "model", "partition", "strategy", "compression"}
    for c in df.columns:
        if c in text_cols:
            continue
        col = df[c].replace("", np.nan)
        try:
            df[c] = pd.to_numeric(col)
        except (ValueError, TypeError):
            bad = next(v for v in col.dropna() if not _is_number(v))
            raise ReportError(f"column {c!r} holds a non-number {bad!r}") from None
    if "cum_bytes" not in df.columns:
        df["cum_bytes"] = df["cum_bytes_down"] + df["cum_bytes_up"]
    if df["round"].isna().any() or not df["round"].is_monotonic_increasing:
        raise ReportError("the round column is not increasing")
    return df


def _cut(df: pd.DataFrame, rounds: int) -> pd.DataFrame:
    """The rows up to round ``rounds`` ("after the same rounds" for runs of any length)."""
    df = df[df["round"] <= rounds].reset_index(drop=True)
    if df.empty:
        raise ReportError(f"no round <= --rounds={rounds}")
    return df


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def load_runs(
    paths: Sequence[Path], warn: Callable[[str], Any] | None = None, rounds: int | None = None
) -> tuple[list[Run], list[str]]:
    """Load every run under ``paths``; unusable CSVs are skipped with a warning.

    ``rounds`` cuts every run at that round (runs that stop earlier are kept, with a warning),
    and ``schedule.rounds`` then stops telling runs apart.
    Raises ReportError when there is no run at all, or when none is usable.
    """
    messages: list[str] = []

    def _warn(msg: str) -> None:
        messages.append(msg)
        if warn:
            warn(msg)

    files = find_metrics(paths)
    if not files:
        where = ", ".join(str(p) for p in paths)
        raise ReportError(f"no runs (no metrics.csv) found under {where}")
    runs, problems = [], []
    for f in files:
        try:
            df = read_metrics(f)
            if rounds is not None:
                df = _cut(df, rounds)
        except ReportError as e:
            problems.append(f"{f}: {e}")
            continue
        run_dir = f.parent
        last = int(df["round"].iloc[-1])
        if rounds is not None and last < rounds:
            _warn(f"{run_dir}: has {last} rounds, fewer than --rounds={rounds}; using them all")
        cfg = read_config(run_dir)
        if cfg is None:
            cfg = {}
        if rounds is not None:
            cfg.pop("schedule.rounds", None)  # cut to one length: no longer a difference
        for k in (*CORE_KEYS, "seed"):
            if k in df.columns and k not in cfg and df[k].notna().any():
                cfg[k] = df[k].dropna().iloc[0]
        if "seed" in df.columns:
            seed = df["seed"].dropna()
            cfg_seed = seed.iloc[0] if len(seed) else None
        else:
            cfg_seed = None
        for k in CORE_KEYS:
            cfg.setdefault(k, "?")
        name = str(cfg["compression"])
        if name in COMPRESSIONS and name not in SPARSE_COMPRESSIONS:
            # dense codecs read no compression.* option: a sparsity sweep must not split them
            cfg = {k: v for k, v in cfg.items() if not k.startswith("compression.")}
        cfg.pop("seed", None)
        df = df.assign(seed=cfg_seed if cfg_seed is not None else str(run_dir.name))
        finished = (run_dir / "summary.json").exists()
        if not finished:
            _warn(f"{run_dir}: unfinished run (no summary.json); using its {len(df)} rounds")
        runs.append(Run(run_dir, cfg, df, finished))
    if not runs:
        raise ReportError(f"no usable metrics.csv: {'; '.join(problems)}")
    for p in problems:
        _warn(f"skipped {p}")
    datasets = sorted({str(r.config["dataset"]) for r in runs})
    if len(datasets) > 1:
        counts = ", ".join(
            f"{d} ({_n_runs(sum(str(r.config['dataset']) == d for r in runs))})" for d in datasets
        )
        raise ReportError(
            f"the runs mix datasets: {counts}; report each dataset separately "
            "(pass only its run or sweep directories)"
        )
    return runs, messages


# --------------------------------------------------------------------------- analysis


def grouping_keys(runs: Sequence[Run]) -> list[str]:
    """The core keys plus every other key that differs between runs sharing the core keys."""
    by_core: dict[tuple, list[Run]] = {}
    for r in runs:
        by_core.setdefault(tuple(_hashable(r.config.get(k)) for k in CORE_KEYS), []).append(r)
    all_keys = sorted({k for r in runs for k in r.config} - set(CORE_KEYS))
    extra = []
    for k in all_keys:
        for members in by_core.values():
            if len({_hashable(m.config.get(k)) for m in members}) > 1:
                extra.append(k)
                break
    return [*CORE_KEYS, *extra]


def _hashable(v: Any) -> Any:
    if isinstance(v, list | dict):
        return json.dumps(v, sort_keys=True)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "null"
    return v


def _run_stats(df: pd.DataFrame, target: float | None) -> dict[str, Any]:
    evaluated = df[df["test_acc"].notna()]
    last = df.iloc[-1]
    out = {
        "rounds": int(last["round"]),
        "final_acc": float(evaluated["test_acc"].iloc[-1]) if len(evaluated) else math.nan,
        "best_acc": float(evaluated["test_acc"].max()) if len(evaluated) else math.nan,
        "mb_up": float(last["cum_bytes_up"]) / MB,
        "mb_down": float(last["cum_bytes_down"]) / MB,
        "mb_total": float(last["cum_bytes_up"] + last["cum_bytes_down"]) / MB,
        "rounds_to_target": math.nan,
        "mb_to_target": math.nan,
    }
    if target is not None and not math.isnan(target):
        hit = evaluated[evaluated["test_acc"] >= target - 1e-12]
        if len(hit):
            first = hit.iloc[0]
            out["rounds_to_target"] = int(first["round"])
            out["mb_to_target"] = float(first["cum_bytes_up"] + first["cum_bytes_down"]) / MB
    return out


def _best_of_mean_curve(members: Sequence[Run]) -> float:
    """The highest accuracy of the seed-averaged accuracy-vs-round curve."""
    curve = pd.concat([m.metrics[["round", "test_acc"]] for m in members]).dropna()
    if curve.empty:
        return math.nan
    return float(curve.groupby("round")["test_acc"].mean().max())


def _std(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.std(ddof=1)) if len(x) > 1 else math.nan


def _is_baseline(values: dict[str, Any]) -> bool:
    return all(values.get(k) == v for k, v in BASELINE.items())


def _setting(values: dict[str, Any], keys: Sequence[str]) -> tuple:
    """What a configuration shares with its baseline: all keys but strategy/compression ones."""
    return tuple(
        _hashable(values.get(k))
        for k in keys
        if k not in ("strategy", "compression") and not k.startswith(("strategy.", "compression."))
    )


def analyse(runs: Sequence[Run], target: float | None = None) -> Report:
    """Group runs over seeds and compute the per-configuration summary."""
    if not runs:
        raise ReportError("no runs to report")
    keys = grouping_keys(runs)
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(_hashable(r.config.get(k)) for k in keys), []).append(r)

    # Targets: --target for everyone, else 99% of the best accuracy (mean over seeds) of the
    # fedavg+none configuration of the same setting (or of the best configuration if none).
    best_of = {g: _best_of_mean_curve(members) for g, members in groups.items()}
    baselines = {
        _setting(dict(zip(keys, g, strict=True)), keys): g
        for g in groups
        if _is_baseline(dict(zip(keys, g, strict=True)))
    }
    overall_best = max((b for b in best_of.values() if not math.isnan(b)), default=math.nan)
    if target is not None:
        target_note = f"target accuracy {target:.2%} (--target)"
    elif baselines:
        target_note = (
            f"target accuracy = {DEFAULT_TARGET_SHARE:.0%} of the best seed-averaged accuracy "
            "of fedavg + none in the same setting"
        )
    else:
        target_note = (
            f"target accuracy = {DEFAULT_TARGET_SHARE:.0%} of the best seed-averaged accuracy "
            "of any configuration (no fedavg + none run in the set)"
        )

    rows = []
    for gkey, members in groups.items():
        values = dict(zip(keys, gkey, strict=True))
        base = baselines.get(_setting(values, keys))
        if target is not None:
            tgt = target
        elif base is not None:
            tgt = DEFAULT_TARGET_SHARE * best_of[base]
        else:
            tgt = DEFAULT_TARGET_SHARE * overall_best
        stats = pd.DataFrame([_run_stats(m.metrics, tgt) for m in members])
        seeds = sorted(str(m.metrics["seed"].iloc[0]) for m in members)
        reached = int(stats["rounds_to_target"].notna().sum())
        row = {k: values[k] for k in keys}
        row.update(
            seeds=len(members),
            seed_list=" ".join(seeds),
            rounds=int(stats["rounds"].max()),
            final_acc_mean=float(stats["final_acc"].mean()),
            final_acc_std=_std(stats["final_acc"]),
            best_acc_mean=float(stats["best_acc"].mean()),
            best_acc_std=_std(stats["best_acc"]),
            target_acc=tgt,
            reached=reached,
            rounds_to_target_mean=float(stats["rounds_to_target"].mean()),
            rounds_to_target_std=_std(stats["rounds_to_target"]),
            mb_to_target_mean=float(stats["mb_to_target"].mean()),
            mb_to_target_std=_std(stats["mb_to_target"]),
            mb_up_mean=float(stats["mb_up"].mean()),
            mb_down_mean=float(stats["mb_down"].mean()),
            mb_total_mean=float(stats["mb_total"].mean()),
            mb_total_std=_std(stats["mb_total"]),
            runs=" ".join(str(m.path) for m in members),
        )
        row["_baseline"] = base
        row["_gkey"] = gkey
        rows.append(row)
    summary = pd.DataFrame(rows)

    # Reduction factor against the baseline of the same setting: MB to target when both
    # reached it with every seed, else total MB.
    by_gkey = {r["_gkey"]: r for r in rows}
    reduction, basis = [], []
    for r in rows:
        b = by_gkey.get(r["_baseline"]) if r["_baseline"] is not None else None
        if b is None:
            reduction.append(math.nan)
            basis.append("")
        elif r["reached"] == r["seeds"] and b["reached"] == b["seeds"]:
            reduction.append(b["mb_to_target_mean"] / r["mb_to_target_mean"])
            basis.append("to target")
        else:
            reduction.append(b["mb_total_mean"] / r["mb_total_mean"])
            basis.append("total")
    summary["reduction"] = reduction
    summary["reduction_basis"] = basis
    summary = summary.drop(columns=["_baseline", "_gkey"])
    summary = _order(summary, keys)

    labels = _labels(summary, keys)
    label_of = {
        tuple(_hashable(s[k]) for k in keys): lab
        for (_, s), lab in zip(summary.iterrows(), labels, strict=True)
    }
    summary.insert(0, "config", labels)
    curves = []
    for gkey, members in groups.items():
        for m in members:
            curves.append(m.metrics.assign(config=label_of[gkey], run=str(m.path)))
    return Report(summary, pd.concat(curves, ignore_index=True), keys, list(runs), target_note)


_STRATEGY_ORDER = {"fedavg": 0, "fd": 1, "multi": 2, "single": 3}
_COMPRESSION_ORDER = {"none": 0, "fp16": 1, "q8": 2, "topk": 3, "dgc": 4}


def _order(summary: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    sort = summary.assign(
        _s=summary["strategy"].map(_STRATEGY_ORDER).fillna(99),
        _c=summary["compression"].map(_COMPRESSION_ORDER).fillna(99),
    )
    other = [k for k in keys if k not in ("strategy", "compression")]
    for k in other:
        sort[k] = sort[k].astype(str)
    order = sort.sort_values([*other, "_c", "_s"], kind="stable").index
    return summary.loc[order].reset_index(drop=True)


def _labels(summary: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """A short name per configuration: the values of the keys that vary, e.g. 'single+dgc'."""
    varying = [k for k in keys if summary[k].astype(str).nunique() > 1]
    if not varying:
        varying = ["strategy", "compression"]
    out = []
    for _, s in summary.iterrows():
        parts = []
        for k in varying:
            v = s[k]
            if k not in CORE_KEYS and v == "null":  # not set, e.g. a dense codec's sparsity
                continue
            parts.append(str(v) if k in CORE_KEYS else f"{k.rsplit('.', 1)[-1]}={v}")
        out.append("+".join(parts))
    return out


# --------------------------------------------------------------------------- output


def _pm(mean: float, std: float, fmt: str) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    s = format(mean, fmt)
    if std is not None and not math.isnan(std):
        s += " ± " + format(std, fmt)
    return s


def constant_keys(report: Report) -> dict[str, Any]:
    """Grouping keys with one value over the whole report (shown once, not per row)."""
    s = report.summary
    return {k: s[k].iloc[0] for k in report.keys if s[k].astype(str).nunique() == 1}


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
                str(n),
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


_LINESTYLES = {"none": "-", "dgc": "--", "topk": ":", "fp16": "-.", "q8": (0, (5, 1, 1, 1))}


def plot(report: Report, out_dir: Path) -> list[Path]:
    """Accuracy vs round and accuracy vs cumulative MB (log x): a line per configuration with
    the min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    c = report.curves[report.curves["test_acc"].notna()].copy()
    c["cum_mb"] = (c["cum_bytes_up"] + c["cum_bytes_down"]) / MB
    agg = (
        c.groupby(["config", "round"], sort=False)
        .agg(
            acc=("test_acc", "mean"),
            lo=("test_acc", "min"),
            hi=("test_acc", "max"),
            mb=("cum_mb", "mean"),
        )
        .reset_index()
    )
    s = report.summary
    colour_keys = [k for k in report.keys if k != "compression"]
    colour_of: dict[str, Any] = {}
    cmap = plt.get_cmap("tab10")
    for _, r in s.iterrows():
        ck = tuple(str(r[k]) for k in colour_keys)
        colour_of.setdefault(ck, cmap(len(colour_of) % 10))
    targets = sorted(set(np.round(s["target_acc"].dropna(), 6)))
    paths = []
    for fname, x, xlabel in (
        (PLOTS[0], "round", "round"),
        (PLOTS[1], "mb", "cumulative MB exchanged (up + down, log scale)"),
    ):
        fig, ax = plt.subplots(figsize=(9.5, 5), dpi=110)
        for _, r in s.iterrows():
            d = agg[agg["config"] == r["config"]].sort_values("round")
            if d.empty:
                continue
            colour = colour_of[tuple(str(r[k]) for k in colour_keys)]
            ls = _LINESTYLES.get(str(r["compression"]), "-")
            label = f"{r['config']} (n={int(r['seeds'])})"
            ax.plot(d[x], d["acc"], color=colour, linestyle=ls, label=label, lw=1.6)
            if int(r["seeds"]) > 1:
                ax.fill_between(d[x], d["lo"], d["hi"], color=colour, alpha=0.12, lw=0)
        for t in targets:
            ax.axhline(t, color="grey", lw=0.8, ls=":", zorder=0)
            ax.annotate(
                f"target {100 * t:.1f}%",
                (0.005, t),
                xycoords=("axes fraction", "data"),
                va="bottom",
                fontsize=7,
                color="grey",
            )
        if x == "mb":
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
            ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        const = ", ".join(str(v) for v in constant_keys(report).values())
        ax.set_title(f"{const}: mean over seeds, band = min–max", fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        path = out_dir / fname
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _plain_number(v: float, _pos: Any = None) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:g}"


def _minor_label(v: float, _pos: Any = None) -> str:
    """Label the 2x and 5x minor ticks of a log axis only (keeps short ranges readable)."""
    lead = v / 10 ** math.floor(math.log10(v)) if v > 0 else 0
    return _plain_number(v) if round(lead) in (2, 5) else ""


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
) -> Report:
    """Load, check and analyse the runs under ``paths`` (raises ReportError on bad input).

    ``rounds`` cuts every run at that round, so runs of different lengths (or one long run)
    are compared "after the same rounds"; runs that stop earlier are kept, with a warning.
    """
    if target is not None and not 0 < target <= 1:
        raise ReportError(f"--target={target} is out of range; expected an accuracy in (0, 1]")
    if rounds is not None and rounds < 1:
        raise ReportError(f"--rounds={rounds} is out of range; expected an integer >= 1")
    runs, messages = load_runs(paths, warn, rounds)
    report = analyse(runs, target)
    if rounds is not None:
        report.target_note += f"; runs cut at round {rounds} (--rounds)"
    report.warnings = messages
    return report


def _n_runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"
