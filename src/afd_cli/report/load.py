"""Reading runs: find every ``metrics.csv``, check it, attach the run's config, and cut runs
at ``--rounds`` so runs of different lengths compare "after the same rounds".

Each run's config comes from its ``summary.json`` (``"config"``), else ``.hydra/config.yaml``,
else the config columns of ``metrics.csv``. A broken CSV is skipped with a warning (the report
still covers the others) unless nothing usable is left.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..registry import GROUPS, unread
from ..run.degenerate import degenerate_reason, loss_explosion
from ..run.rundir import HYDRA, METRICS, STATUS, SUMMARY
from .common import BEFORE_KEYS, CORE_KEYS, IGNORED_KEYS, REQUIRED_COLUMNS, ReportError, Run


def find_metrics(paths: Sequence[Path]) -> list[Path]:
    """Every ``metrics.csv`` under ``paths`` (each a run dir, a sweep dir or a CSV file)."""
    found: dict[Path, None] = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ReportError(f"{p} does not exist")
        if p.is_file():
            if p.name != METRICS:
                raise ReportError(f"{p} is not a metrics.csv or a directory of runs")
            found[p.resolve()] = None
            continue
        for f in sorted(p.rglob(METRICS)):
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


def unread_keys(flat: dict[str, Any]) -> set[str]:
    """Flattened keys (``strategy.rate``) the run's plug-ins do not read (registry.unread)."""
    out = set()
    for group in GROUPS:
        n = len(group) + 1
        keys = [k[n:] for k in flat if k[:n] == f"{group}."]
        out |= {f"{group}.{k}" for k in unread(group, flat.get(group), keys)}
    return out


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json (``{}`` when missing or unreadable: an unfinished run)."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's config (flattened), from summary.json or .hydra/config.yaml; None if neither."""
    cfg = read_summary(run_dir).get("config")
    if isinstance(cfg, dict):
        return _normalise_config(_flatten(cfg))
    hydra_cfg = run_dir / HYDRA / "config.yaml"
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
        # an empty cell is "not evaluated"; nan / inf / -inf are values (a diverged run)
        col = df[c].replace("", np.nan)
        try:
            df[c] = pd.to_numeric(col)
        except (ValueError, TypeError):
            bad = next((v for v in col.dropna() if not _is_number(v)), None)
            if bad is not None:
                raise ReportError(f"column {c!r} holds a non-number {bad!r}") from None
            df[c] = col.astype(float)  # numbers, some written as nan / inf
    if "cum_bytes" not in df.columns:
        df["cum_bytes"] = df["cum_bytes_down"] + df["cum_bytes_up"]
    if df["round"].isna().any() or not df["round"].is_monotonic_increasing:
        raise ReportError("the round column is not increasing")
    return df


def nonfinite_round(df: pd.DataFrame) -> int | None:
    """The first round with a non-finite loss or accuracy (an empty, not-evaluated test cell
    is not one; ``train_loss`` is written every round, so a blank one is an old NaN)."""
    bad = ~np.isfinite(df["train_loss"]) if "train_loss" in df.columns else False
    for c in ("test_loss", "test_acc"):
        if c in df.columns:
            bad = bad | np.isinf(df[c])
    if "test_loss" in df.columns and "test_acc" in df.columns:
        bad = bad | (df["test_loss"].isna() != df["test_acc"].isna())
    rounds = df.loc[bad, "round"] if isinstance(bad, pd.Series) else []
    return int(rounds.iloc[0]) if len(rounds) else None


def finite_rounds(df: pd.DataFrame) -> pd.Series:
    """Which rows hold a finite test accuracy, and a finite test loss where the column is there
    (not evaluated, nan or inf: no). Only these may reach or set a target: a NaN loss's
    accuracy is that of whatever class argmax falls on."""
    ok = pd.Series(np.isfinite(df["test_acc"].to_numpy(dtype=float)), index=df.index)
    if "test_loss" in df.columns:
        ok &= np.isfinite(df["test_loss"].to_numpy(dtype=float))
    return ok


def degenerate_of(df: pd.DataFrame, summary: dict[str, Any]) -> str | None:
    """Why the run of these rows is degenerate (:mod:`afd_cli.run.degenerate`), or None: its
    train loss against round 1's, and its best finite accuracy against ``summary.json``'s
    majority baseline (not known without a summary). Computed from the rows the report uses,
    so a run cut at ``--rounds`` is judged on its rounds up to there."""
    finite = df.loc[finite_rounds(df), "test_acc"]
    rows = df[["round", "train_loss"]] if "train_loss" in df.columns else None
    return degenerate_reason(
        {
            "best_acc": float(finite.max()) if len(finite) else None,
            "majority_baseline": summary.get("majority_baseline"),
            "loss_explosion": (
                loss_explosion(rows["round"], rows["train_loss"]) if rows is not None else None
            ),
        }
    )


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status.json (``{}`` when missing or unreadable)."""
    try:
        status = json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


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
        run_dir = f.parent
        status = read_status(run_dir)
        try:
            df = read_metrics(f)
            if rounds is not None:
                df = _cut(df, rounds)
        except ReportError as e:
            why = str(e)
            if status.get("status") == "diverged":
                why = f"diverged before any round was recorded: {status.get('error')}"
            problems.append(f"{f}: {why}")
            continue
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
        for k, v in BEFORE_KEYS.items():  # recorded before the key existed
            cfg.setdefault(k, v)
        # options a run's plug-ins do not read (compression.sparsity of a dense codec) must
        # not split a sweep's groups
        unused = unread_keys(cfg)
        cfg = {k: v for k, v in cfg.items() if k not in unused}
        cfg.pop("seed", None)
        df = df.assign(seed=cfg_seed if cfg_seed is not None else str(run_dir.name))
        finished = (run_dir / SUMMARY).exists()
        bad_round = nonfinite_round(df)
        diverged = status.get("status") == "diverged" or bad_round is not None
        if status.get("status") == "diverged":
            _warn(
                f"{run_dir}: diverged ({status.get('error', 'non-finite values')}); "
                f"using its {len(df)} rounds before it"
            )
        elif bad_round is not None:
            _warn(f"{run_dir}: diverged (non-finite loss or accuracy in round {bad_round})")
        elif not finished:
            _warn(f"{run_dir}: unfinished run (no summary.json); using its {len(df)} rounds")
        degenerate = degenerate_of(df, read_summary(run_dir))
        if degenerate:
            why = f"degenerate, its rounds neither reach a target nor set one: {degenerate}"
            _warn(f"{run_dir}: {why}")
        runs.append(Run(run_dir, cfg, df, finished, diverged, degenerate))
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


def _n_runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"
