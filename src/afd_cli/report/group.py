"""Grouping runs over seeds and the per-configuration numbers: final / best accuracy, rounds,
MB and simulated hours to the target accuracy, and the reductions (bytes and convergence time)
against FedAvg with no compression.

Runs are grouped by everything but the seed: the five core keys (dataset, model, partition,
strategy, compression) plus any other config key whose value differs between runs that share
those five (e.g. ``strategy.rate`` in a rate sweep).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from .common import (
    BASELINE,
    CORE_KEYS,
    DEFAULT_TARGET_SHARE,
    HOUR,
    MB,
    Report,
    ReportError,
    Run,
)
from .load import finite_rounds


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


def _run_stats(df: pd.DataFrame, target: float | None, degenerate: bool) -> dict[str, Any]:
    """One run's numbers; a round reaches ``target`` only with a finite test loss and accuracy,
    and never in a ``degenerate`` run."""
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
        "sim_h": _hours(last.get("sim_time_s")),
        "h_to_target": math.nan,
    }
    if target is not None and not math.isnan(target) and not degenerate:
        finite = df[finite_rounds(df)]
        hit = finite[finite["test_acc"] >= target - 1e-12]
        if len(hit):
            first = hit.iloc[0]
            out["rounds_to_target"] = int(first["round"])
            out["mb_to_target"] = float(first["cum_bytes_up"] + first["cum_bytes_down"]) / MB
            out["h_to_target"] = _hours(first.get("sim_time_s"))
    return out


def _hours(seconds: Any) -> float:
    """Simulated seconds -> hours; NaN where the run has no clock (network=none, older runs)."""
    try:
        return float(seconds) / HOUR
    except (TypeError, ValueError):
        return math.nan


def _best_of_mean_curve(members: Sequence[Run]) -> float:
    """The highest accuracy of the seed-averaged accuracy-vs-round curve, over the members that
    are not degenerate and their finite rounds (NaN: none left, so no target from it)."""
    kept = [m.metrics.loc[finite_rounds(m.metrics)] for m in members if not m.degenerate]
    if not kept:
        return math.nan
    curve = pd.concat([k[["round", "test_acc"]] for k in kept]).dropna()
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
    # fedavg+none configuration of the same setting (or of the best configuration if none, or
    # if its every seed is degenerate). Degenerate runs and non-finite rounds set no target.
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

    # a setting whose fedavg + none is degenerate in every seed: its best other configuration
    # sets the target (a target from another setting, e.g. another schedule.lr, means nothing)
    best_in: dict[tuple, float] = {}
    for g, b in best_of.items():
        where = _setting(dict(zip(keys, g, strict=True)), keys)
        if not math.isnan(b):
            best_in[where] = max(best_in.get(where, b), b)
    if target is None and any(math.isnan(best_of[b]) for b in baselines.values()):
        target_note += (
            "; where every fedavg + none run is degenerate, of the best other configuration "
            "of that setting (none: no target)"
        )
    elif target is None and not baselines and math.isnan(overall_best):
        target_note += "; none: every run is degenerate"

    rows = []
    for gkey, members in groups.items():
        values = dict(zip(keys, gkey, strict=True))
        base = baselines.get(_setting(values, keys))
        if target is not None:
            tgt = target
        elif base is None:
            tgt = DEFAULT_TARGET_SHARE * overall_best
        elif not math.isnan(best_of[base]):
            tgt = DEFAULT_TARGET_SHARE * best_of[base]
        else:  # NaN where the setting has no other configuration that is not degenerate
            tgt = DEFAULT_TARGET_SHARE * best_in.get(_setting(values, keys), math.nan)
        stats = pd.DataFrame([_run_stats(m.metrics, tgt, bool(m.degenerate)) for m in members])
        seeds = sorted(str(m.metrics["seed"].iloc[0]) for m in members)
        reached = int(stats["rounds_to_target"].notna().sum())
        row = {k: values[k] for k in keys}
        row.update(
            seeds=len(members),
            diverged=sum(m.diverged for m in members),
            degenerate=sum(bool(m.degenerate) for m in members),
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
            timed=int(stats["sim_h"].notna().sum()),
            hours_to_target_mean=float(stats["h_to_target"].mean()),
            hours_to_target_std=_std(stats["h_to_target"]),
            sim_hours_mean=float(stats["sim_h"].mean()),
            runs=" ".join(str(m.path) for m in members),
        )
        row["_baseline"] = base
        row["_gkey"] = gkey
        rows.append(row)
    summary = pd.DataFrame(rows)

    # Reduction factors against the baseline of the same setting, in bytes and in simulated
    # time: to the target when every seed of both reached it, else of the totals.
    by_gkey = {r["_gkey"]: r for r in rows}
    for kind, to_target, total in (
        ("reduction", "mb_to_target_mean", "mb_total_mean"),
        ("time_reduction", "hours_to_target_mean", "sim_hours_mean"),
    ):
        values, basis = [], []
        for r in rows:
            b = by_gkey.get(r["_baseline"]) if r["_baseline"] is not None else None
            untimed = r["timed"] < r["seeds"] or b is None or b["timed"] < b["seeds"]
            if b is None or (kind == "time_reduction" and untimed):
                values.append(math.nan)
                basis.append("")
            elif r["reached"] == r["seeds"] and b["reached"] == b["seeds"]:
                values.append(b[to_target] / r[to_target])
                basis.append("to target")
            else:
                values.append(b[total] / r[total])
                basis.append("total")
        summary[kind] = values
        summary[f"{kind}_basis"] = basis
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
_COMPRESSION_ORDER = {"none": 0, "fp16": 1, "q8": 2, "topk": 3, "dgc": 4, "hadamard": 5}


def _order(summary: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    sort = summary.assign(
        _s=summary["strategy"].map(_STRATEGY_ORDER).fillna(99),
        _c=summary["compression"].map(_COMPRESSION_ORDER).fillna(99),
    )
    # the setting first, then compression (and its options), then strategy (and its options):
    # fedavg + none, the baseline, leads each setting
    setting = [k for k in keys if k.split(".")[0] not in ("strategy", "compression")]
    comp = [k for k in keys if k.startswith("compression.")]
    strat = [k for k in keys if k.startswith("strategy.")]
    for k in (*setting, *comp, *strat):
        sort[k] = sort[k].astype(str)
    order = sort.sort_values([*setting, "_c", *comp, "_s", *strat], kind="stable").index
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
