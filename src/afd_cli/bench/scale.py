"""(g): cross-device scale. Synthetic(1, 1) with 1,000 ... 100,000 clients, 100 per round, DGC:
does a round cost what it samples, not what the federation holds?

Each federation size runs ``afd run``'s loop (``run.loop.run`` in a temporary run directory:
training, DGC, aggregation, evaluation, the clock, ``clients.csv``, checkpoints) in its own
process, so its peak RSS is its own. A round's seconds are ``metrics.csv``'s ``wall_s`` (the
whole round, checkpoint included), medians over the rounds after the first. Client sizes are
capped at 1000 samples (LEAF's cap) so that one huge client does not decide a round's time;
the rounds sample different clients at each size, so the table also gives the samples trained
per round and the time per 1,000 of them.

    python -m afd_cli.bench --only g [--clients 1000,10000,100000] [--repeats 5]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from . import console
from .rounds import _peak_rss_mb

SCALE_CLIENTS = (1_000, 10_000, 100_000)
PER_ROUND = 100
OVERRIDES = (
    "dataset=synthetic",
    "dataset.max_samples=1000",
    "compression=dgc",
    f"schedule.clients_per_round={PER_ROUND}",
    "progress=none",
    "threads=1",
)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), or what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def scale_child(num_clients: int, rounds: int) -> dict[str, Any]:
    """One federation size, in its own process: ``rounds`` rounds of a real run."""
    import pandas as pd

    from ..compose import compose
    from ..config import validate
    from ..run.loop import run

    cfg = validate(
        compose(
            [
                *OVERRIDES,
                f"schedule.num_clients={num_clients}",
                f"schedule.rounds={rounds}",
            ]
        )
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="afd-scale-") as tmp:
        summary = run(cfg, Path(tmp))
        metrics = pd.read_csv(Path(tmp) / "metrics.csv")
        clients = pd.read_csv(Path(tmp) / "clients.csv")
        run_dir_mb = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 2**20
    wall = metrics["wall_s"].tolist()[1:]
    samples = clients.groupby("round")["samples"].sum().tolist()[1:]
    return {
        "num_clients": num_clients,
        "per_round": PER_ROUND,
        "rounds": rounds,
        "round_s": wall,
        "median_round_s": statistics.median(wall),
        "samples_per_round": statistics.median(samples),
        "s_per_1k_samples": statistics.median(
            w / s * 1000 for w, s in zip(wall, samples, strict=True)
        ),
        "first_round_s": float(metrics["wall_s"].iloc[0]),
        "total_s": time.perf_counter() - t0,
        "final_acc": summary["final_acc"],
        "peak_rss_mb": _peak_rss_mb(),
        "run_dir_mb": run_dir_mb,
        "checkpoint_mb": summary["checkpoint_bytes"] / 2**20,
    }


def scale_in_subprocesses(
    sizes: tuple[int, ...] = SCALE_CLIENTS, repeats: int = 5
) -> dict[str, Any]:
    """Each size in a fresh process (``repeats`` timed rounds after a first one)."""
    rows = []
    for n in sizes:
        cmd = [sys.executable, "-m", "afd_cli.bench", "--scale-child", str(n), str(repeats + 1)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"scale benchmark at {n} clients failed: {tail}")
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return {"cpu": cpu_model(), "load_before": os.getloadavg(), "rows": rows}


def _print_scale(res: dict[str, Any]) -> None:
    rows = res["rows"]
    base = rows[0]
    t = Table(
        title=f"(g) Synthetic(1,1), logreg, dgc, {PER_ROUND} clients per round: seconds per "
        f"round after the first (median), peak RSS; {res['cpu']}, load "
        f"{res['load_before'][0]:.2f} before"
    )
    cols = ("clients", "s / round", "x 1k clients", "samples / round", "s / 1k samples")
    for c in (*cols, "x 1k (per sample)", "first round s", "peak RSS MB", "run dir MB"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(
            f"{r['num_clients']:,}",
            f"{r['median_round_s']:.3f}",
            f"{r['median_round_s'] / base['median_round_s']:.2f}",
            f"{r['samples_per_round']:,.0f}",
            f"{r['s_per_1k_samples']:.3f}",
            f"{r['s_per_1k_samples'] / base['s_per_1k_samples']:.2f}",
            f"{r['first_round_s']:.2f}",
            f"{r['peak_rss_mb']:,.0f}",
            f"{r['run_dir_mb']:,.1f}",
        )
    console.print(t)
