"""``afd report --network NAME``: time finished runs under another network profile.

Without a deadline the simulated clock is a pure function of a run's ``clients.csv``, the
profile and the run's seed (:func:`afd_cli.network.retime`), so a report can replace every
run's ``sim_round_s`` / ``sim_time_s`` without training again. A deadline is different: it
decided which clients were aggregated, so a run made with one, or a profile that sets one,
needs a new run; both are refused with one line saying so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from .. import network
from ..metrics import CLIENT_INT_COLUMNS
from ..run.rundir import CLIENTS
from .common import ReportError, Run


def read_clients(path: Path) -> pd.DataFrame:
    """A run's ``clients.csv`` (integers only); ReportError naming the file when unusable."""
    if not path.exists():
        raise ReportError(
            f"{path} is missing (the run is older than the simulated clock); "
            "re-run it to time it under another network"
        )
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: not a readable CSV ({' '.join(str(e).split())})") from None
    missing = [c for c in CLIENT_INT_COLUMNS if c not in df.columns]  # width: optional
    if missing or df.empty or df[CLIENT_INT_COLUMNS].isna().any().any():
        why = f"missing column(s) {', '.join(missing)}" if missing else "empty or damaged"
        raise ReportError(f"{path}: {why}")
    return df


def _deadline(value: Any) -> float | None:
    if value is None or value == "null" or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def retime_run(run: Run, cfg: Any) -> Run:
    """``run`` with the simulated times of network config ``cfg`` (a new :class:`Run`)."""
    ran_with = _deadline(run.config.get("network.deadline_s"))
    if ran_with is not None:
        raise ReportError(
            f"{run.path} ran with network.deadline_s={ran_with:g}: the deadline dropped "
            "clients while it trained, so its time under another network needs a new run "
            "(afd run ... network=NAME)"
        )
    if cfg.deadline_s is not None:
        raise ReportError(
            f"network.deadline_s={cfg.deadline_s:g} changes which clients are aggregated, so "
            "it cannot be applied to finished runs; run them again with it "
            "(afd run ... network.deadline_s=...)"
        )
    df = run.metrics
    clients = read_clients(run.path / CLIENTS)
    clients = clients[clients["round"] <= int(df["round"].max())]
    profile = network.Profile.of(cfg)
    if profile is None:  # network=none: no clock
        times: dict[int, tuple[float, float]] = {}
    else:
        try:
            seed = int(df["seed"].iloc[0])
        except (TypeError, ValueError):
            raise ReportError(f"{run.path}: no seed recorded; cannot draw its clients") from None
        rounds, per_round, cumulative = network.retime(profile, seed, clients)
        times = dict(zip(rounds, zip(per_round, cumulative, strict=True), strict=True))
        missing = sorted(set(df["round"].astype(int)) - set(times))
        if missing:
            raise ReportError(
                f"{run.path / CLIENTS} has no rows for round {missing[0]} "
                f"({len(missing)} round(s) missing); re-run the run to time it"
            )
    nan = (math.nan, math.nan)
    metrics = df.assign(
        sim_round_s=[times.get(int(t), nan)[0] for t in df["round"]],
        sim_time_s=[times.get(int(t), nan)[1] for t in df["round"]],
    )
    config = {**run.config, **{f"network.{k}": v for k, v in asdict(cfg).items()}}
    return replace(run, metrics=metrics, config=config)


def retime_runs(runs: list[Run], network_for: Callable[[dict[str, Any]], Any]) -> list[Run]:
    """Every run re-timed with the network config ``network_for(run.config)`` gives."""
    return [retime_run(run, network_for(run.config)) for run in runs]
