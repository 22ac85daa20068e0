"""The per-client state of efsign, qsgd and powersgd (residuals, warm-start Q, downlink
copies) survives a checkpoint and a resume exactly, spilled to disk under a 0 MB budget."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import SMALL, afd_run

from afd_cli.metrics import COLUMNS, TIMING_COLUMNS

KEEP = [c for c in COLUMNS if c not in TIMING_COLUMNS]
BASE = [o for o in SMALL if not o.startswith("progress=")] + [
    "progress=none",
    "strategy=multi",
    "strategy.rate=0.25",
    "compression.downlink=true",
    "state.memory_mb=0",
]


@pytest.mark.parametrize("codec", ["efsign", "qsgd", "powersgd"])
def test_stop_and_resume_gives_the_uninterrupted_run(tmp_path: Path, codec: str) -> None:
    args = [*BASE, f"compression={codec}"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    p = afd_run(tmp_path, "run", *args, "schedule.rounds=4", f"hydra.run.dir={straight}")
    assert p.returncode == 0, p.stderr
    p = afd_run(tmp_path, "run", *args, "schedule.rounds=2", f"hydra.run.dir={stopped}")
    assert p.returncode == 0, p.stderr
    assert list((stopped / "state").rglob("*.bin"))  # the state went to disk
    p = afd_run(tmp_path, "resume", str(stopped), "schedule.rounds=4")
    assert p.returncode == 0, p.stderr
    pd.testing.assert_frame_equal(
        pd.read_csv(straight / "metrics.csv")[KEEP], pd.read_csv(stopped / "metrics.csv")[KEEP]
    )
    assert (straight / "clients.csv").read_bytes() == (stopped / "clients.csv").read_bytes()
