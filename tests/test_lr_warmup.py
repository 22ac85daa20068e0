"""``schedule.lr_warmup_rounds``: a linear learning-rate ramp over the first rounds (issue 26;
Lin et al.'s DGC code warms the rate up for 5 epochs in every run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from afd_cli import compose
from afd_cli.config import validate
from afd_cli.federated.client import warmup_lr_scale
from afd_cli.run.loop import run

TINY = [
    "dataset=digits",
    "model=mlp",
    "schedule.num_clients=6",
    "schedule.clients_per_round=2",
    "dataset.max_test_samples=200",
    "progress=none",
    "threads=1",
]


def test_scale_ramps_linearly_then_stays_at_one():
    assert [warmup_lr_scale(r, 3) for r in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_lr_scale(0, 0) == 1.0  # off


def _metrics(overrides: list[str], out: Path) -> pd.DataFrame:
    out.mkdir()
    run(validate(compose.compose([*TINY, *overrides])), out)
    return pd.read_csv(out / "metrics.csv")


@pytest.mark.parametrize("trainer", ["sequential", "batched"])
def test_a_warm_round_trains_at_the_scaled_rate(tmp_path, trainer):
    """Round 1 of W=1 at lr 0.2 is round 1 at lr 0.1 (scale 1/2, exact in binary); round 2
    is back at 0.2, so the two runs part."""
    warm = _metrics(
        [
            f"trainer={trainer}",
            "schedule.rounds=2",
            "schedule.lr=0.2",
            "schedule.lr_warmup_rounds=1",
        ],
        tmp_path / "warm",
    )
    half = _metrics(
        [f"trainer={trainer}", "schedule.rounds=1", "schedule.lr=0.1"], tmp_path / "half"
    )
    full = _metrics(
        [f"trainer={trainer}", "schedule.rounds=1", "schedule.lr=0.2"], tmp_path / "full"
    )
    cols = ["train_loss", "test_acc", "test_loss"]
    assert warm.iloc[0][cols].tolist() == half.iloc[0][cols].tolist()
    assert warm.iloc[0]["train_loss"] != full.iloc[0]["train_loss"]
