"""What the report modules share: the grouping constants, the error type and the two records
(a loaded run, a finished report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

CORE_KEYS = ("dataset", "model", "partition", "strategy", "compression")
# Config keys that never make two runs different experiments.
IGNORED_KEYS = {
    "seed",
    "device",
    "data_dir",
    "progress",
    "resume",
    "checkpoint_every",
    "on_degenerate",  # stops a run or not: its rounds are the same
    "schedule.eval_batch_size",
    "state.fsync",  # when files reach the disk, not what they hold
}
# Keys added after runs were recorded, each with the value that reproduces those runs. A run
# recorded without the key is read as having that value (where its plug-in reads the key), so
# old and new runs of one setting share a group instead of splitting on null; where a new
# default changed behaviour (DGC's reference rules, issue 26) the old runs show what they ran.
BEFORE_KEYS: dict[str, Any] = {
    "network.compute": True,
    "schedule.lr_warmup_rounds": 0,
    "strategy.assign": "fixed",
    "strategy.eval_widths": "off",
    "compression.dense_rule": "size",
    "compression.k_rounding": "nearest",
    "compression.fp16_residual": True,
    "compression.dense_momentum": False,
}
REQUIRED_COLUMNS = ("round", "test_acc", "cum_bytes_down", "cum_bytes_up")
BASELINE = {"strategy": "fedavg", "compression": "none"}
DEFAULT_TARGET_SHARE = 0.99
MB = 1e6
HOUR = 3600.0  # simulated seconds per hour (the time columns and figure)


class ReportError(ValueError):
    """A user-facing problem with the inputs of a report; its message is one line."""


@dataclass
class Run:
    path: Path  # the run directory
    config: dict[str, Any]  # flattened: {"dataset": "mnist", "strategy.rate": 0.25, ...}
    metrics: pd.DataFrame
    finished: bool
    # stopped by a non-finite loss or update (status.json "diverged"), or holds nan / inf
    diverged: bool = False
    # why it is degenerate (run/degenerate.py), as far as its rows and summary.json tell; None:
    # it is not. Its rounds neither reach a target nor set one.
    degenerate: str | None = None


@dataclass
class Report:
    summary: pd.DataFrame  # one row per configuration
    curves: pd.DataFrame  # all rounds of all runs, with a "config" label column
    keys: list[str]  # the grouping keys, in display order
    runs: list[Run]
    target_note: str
    warnings: list[str] = field(default_factory=list)
    clock_note: str = ""  # how the simulated times were made, e.g. "re-timed (--network lte)"


def constant_keys(report: Report) -> dict[str, Any]:
    """Grouping keys with one value over the whole report (shown once, not per row)."""
    s = report.summary
    return {k: s[k].iloc[0] for k in report.keys if s[k].astype(str).nunique() == 1}
