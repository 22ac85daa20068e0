"""Failing loudly and safely: divergence, colliding run directories, Ctrl-C, newcomer hints."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import fake_run  # pytest puts tests/ on sys.path

from afd_cli import cli
from afd_cli import report as rep
from afd_cli.config import ConfigError, validate
from afd_cli.metrics import COLUMNS

ROOT = Path(__file__).resolve().parents[1]
AFD = [sys.executable, "-m", "afd_cli.cli"]
SMALL = [
    "dataset=digits",
    "model=mlp",
    "schedule.num_clients=10",
    "schedule.clients_per_round=3",
    "progress=plain",
]


def afd(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*AFD, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


# --- non-finite values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "schedule.lr=inf",
        "schedule.momentum=nan",
        "partition.alpha=inf",
        "strategy.explore=nan",
        "compression.clip_norm=-inf",
        "dataset.test_fraction=nan",
    ],
)
def test_non_finite_numbers_are_rejected_naming_the_key(override):
    key, _, value = override.partition("=")
    with pytest.raises(ConfigError) as e:
        cli.check([*SMALL, override])
    assert str(e.value) == f"{key}={float(value)!r} is out of range; expected a finite number"


def test_on_nonfinite_takes_stop_or_skip_client():
    assert validate(cli.compose([])).on_nonfinite == "stop"
    with pytest.raises(ConfigError, match="on_nonfinite='drop' is not valid; choose one of: stop"):
        cli.check([*SMALL, "on_nonfinite=drop"])


def test_report_marks_diverged_runs(tmp_path):

    fake_run(tmp_path, "ok", seed=0, accs=[0.5, 0.8, 0.9], mb_round=10)
    d = fake_run(
        tmp_path, "bad", seed=1, accs=[0.5, 0.6], mb_round=10, extra={"schedule.rounds": 3}
    )
    msg = "round 3: client 4: non-finite local training loss (nan)"
    (d / "status.json").write_text(json.dumps({"status": "diverged", "error": msg, "round": 3}))
    warnings = []
    r = rep.build([tmp_path], warn=warnings.append)
    assert int(r.summary["diverged"].iloc[0]) == 1
    assert any("diverged" in w and msg in w for w in warnings)
    header, rows = rep.table_rows(r)
    assert rows[0][header.index("seeds")] == "2 (1 diverged)"


def test_report_names_a_run_that_diverged_before_any_round(tmp_path):

    fake_run(tmp_path, "ok", accs=[0.5, 0.8], mb_round=10)
    d = tmp_path / "bad"
    d.mkdir()
    (d / "metrics.csv").write_text(",".join(COLUMNS) + "\n")
    (d / "status.json").write_text(json.dumps({"status": "diverged", "error": "round 1: x"}))
    warnings = []
    rep.build([tmp_path], warn=warnings.append)
    assert any("diverged before any round was recorded: round 1: x" in w for w in warnings)
