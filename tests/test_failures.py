"""Failing loudly and safely: divergence, colliding run directories, Ctrl-C, newcomer hints."""

import subprocess
import sys
from pathlib import Path

import pytest

from afd_cli import cli
from afd_cli.config import ConfigError, validate

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
