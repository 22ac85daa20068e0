"""Metrics identical across x86 CPUs (docs: reproducibility): with the kernels pinned to the
baseline instruction set, one round's weights must be the bytes recorded here.

Recorded on an AMD EPYC with AVX2 only (2026-12-07). Every CI run re-checks it on whatever
CPU CI lands on (AVX2-only or AVX512-BF16 EPYCs): a failure there means the pins do not make
runs portable across those CPUs, and the docs' claim must change with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import AFD

from afd_cli.run import checkpoint

PORTABLE = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "COMPATIBLE",
}
RUN = [
    "dataset=mnist",
    "model=cnn_mnist",
    "schedule.num_clients=100",
    "schedule.clients_per_round=2",
    "schedule.rounds=1",
    "dataset.max_test_samples=500",
    "progress=none",
]
# sha256 of the global weights after round 1 (sorted names, raw fp32 bytes), and the row
RECORDED = "f5bb181b58e268dd140d3ec522d7d5b54a3173926de30ca1e3bf22bed0a4efd4"
ROW = {"train_loss": 0.679855, "test_loss": 1.47202, "test_acc": 0.534}


def digest(run_dir: Path) -> str:
    weights = checkpoint.load(run_dir / "checkpoint.pt")["weights"]
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(weights[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def run(tmp_path: Path, name: str, threads: int, pins: dict[str, str]) -> Path:
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE} | pins
    out = tmp_path / name
    p = subprocess.run(
        [*AFD, "run", *RUN, f"threads={threads}", f"hydra.run.dir={out}"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return out


@pytest.mark.slow
@pytest.mark.data
def test_pinned_kernels_give_the_recorded_weights_on_any_x86_cpu(tmp_path):
    for threads in (1, 2):  # under the pins the thread count does not change them either
        out = run(tmp_path, f"t{threads}", threads, PORTABLE)
        where = f"threads={threads} on {_cpu()}"
        assert digest(out) == RECORDED, where
        row = pd.read_csv(out / "metrics.csv").iloc[0]
        assert {k: row[k] for k in ROW} == ROW, where
        # summary.json names the pins in force: two runs that differ can be told apart
        assert json.loads((out / "summary.json").read_text())["cpu"]["pins"] == PORTABLE


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "an unknown CPU"
