"""The loop over rounds: build the run, start where it stands, run each round, then its
callbacks (evaluate, clock, totals, loss watch, checkpoint, rows, progress), then the summary.

Outputs in the run directory (names in :mod:`.rundir`): ``metrics.csv`` (a row per round),
``clients.csv`` (a row per client and round), ``partition.csv``, ``checkpoint.pt`` and
``state/`` (:mod:`.checkpoint`), ``summary.json`` (written last: it marks a finished run).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import data
from ..config import RootConfig
from ..federated import distributed
from ..metrics import sim_time_to, write_json_atomic
from . import callbacks as cb
from .build import Simulation, build, cpu_identity, majority_share
from .degenerate import degenerate_reason, first_and_explosion
from .resume import comparable, start
from .rundir import METRICS, PARTITION, SUMMARY
from .state import RunState

TARGET_SHARE = 0.99  # summary.json's target: this share of the run's best accuracy


def run(cfg: RootConfig, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) the experiment in ``run_dir``; return the summary."""
    t_start = time.perf_counter()
    lead = distributed.is_lead()  # the one process that reads and writes run_dir
    if cfg.progress != "none" and lead:  # loading (and verifying) a dataset can take seconds
        print(f"loading {cfg.dataset.name} ...", flush=True)
    sim = build(cfg, run_dir=run_dir)
    cfg = sim.cfg  # with precision=auto resolved for this machine
    if lead:
        partition_csv(sim).to_csv(run_dir / PARTITION, index=False)
    state, pending = start(sim, run_dir)
    keep = state.round - bool(pending)  # rows of metrics.csv to keep
    steps: list[cb.Callback] = [
        cb.Evaluate(sim),
        cb.SimulatedClock(sim),
        cb.Totals(sim),
        cb.LossWatch(sim, run_dir),
        cb.Checkpoint(sim, run_dir, comparable(cfg), lead),
        cb.Rows(run_dir, cfg.schedule.clients_per_round, keep, pending, lead),
        cb.Progress(sim, state.round, lead),
    ]
    try:
        for t in range(state.round, cfg.schedule.rounds):
            t0 = time.perf_counter()
            result = sim.round(t, on_client_done=steps[-1].client_done)
            end = cb.RoundEnd(t, t0, result)
            for step in steps:
                step.round_end(state, end)
            if end.stop is not None:  # asked for by a callback, the round's rows written
                raise end.stop
    finally:
        for step in reversed(steps):
            step.close()
    summary = summarize(sim, state, run_dir, time.perf_counter() - t_start, lead)
    if lead:
        write_json_atomic(run_dir / SUMMARY, summary)
    return summary


def partition_csv(sim: Simulation) -> pd.DataFrame:
    """``partition.csv``: each client's train samples and label histogram; for generated
    clients only the counts (their labels exist once a round samples them)."""
    if isinstance(sim.parts, data.ClientParts):
        n = sim.parts.num_train
        return pd.DataFrame({"client": np.arange(len(n), dtype=np.int64), "n": n})
    labels = sim.ds.train.labels.cpu().numpy()
    return data.partition_table(sim.parts, labels, sim.ds.num_classes)  # type: ignore[arg-type]


def summarize(
    sim: Simulation, state: RunState, run_dir: Path, wall_s: float, lead: bool
) -> dict[str, Any]:
    """``summary.json``: totals, the best and last accuracy, time to 99% of the best, sizes,
    and whether the run is degenerate (:mod:`.degenerate`)."""
    cfg, clocked = sim.cfg, sim.clock is not None
    target = TARGET_SHARE * state.best_acc if state.best_acc is not None else None
    client_bytes = distributed.total(sim.compressor.state_nbytes(), "adding up the state")
    own_state, alike = sim.store.sharded_nbytes()
    majority = majority_share(sim.test.labels)
    # the first round whose train loss was 1000x round 1's, or None (rank 0 has the file)
    exploded = first_and_explosion(run_dir / METRICS)[1] if lead else None
    degenerate = degenerate_reason(
        {"best_acc": state.best_acc, "majority_baseline": majority, "loss_explosion": exploded}
    )
    return {
        "rounds": state.round,
        "final_acc": state.last_acc,
        "best_acc": state.best_acc,
        "best_round": state.best_round,
        "total_bytes_down": state.cum_down,
        "total_bytes_up": state.cum_up,
        "total_bytes": state.cum_down + state.cum_up,
        "sim_time_s": state.sim_time if clocked else None,  # the network.* clock
        # simulated seconds to reach 99% of this run's best accuracy (afd report uses
        # fedavg + none's best in the same setting instead)
        "sim_time_to_target_s": (
            sim_time_to(run_dir / METRICS, target)
            if lead and clocked and target is not None  # rank 0 has the file
            else None
        ),
        "target_acc": target,
        "train_wall_s": state.elapsed,  # rounds incl. evaluation and checkpoints (wall_s)
        "checkpoint_s": state.checkpoint_s,  # checkpoints, all rounds (in wall_s)
        "checkpoint_bytes": state.checkpoint_bytes,  # written by them, all rounds
        "wall_s": wall_s,
        "num_params": sim.fed.full_size,
        "num_clients": len(sim.parts),
        "majority_baseline": majority,
        "loss_explosion": exploded,
        "degenerate": degenerate,  # why the run means little (run/degenerate.py), or None
        "compressor_state_bytes": client_bytes + sim.fed.server.nbytes(),
        # all per-client state, memory and disk: under torchrun each process's own clients'
        # (summed) and the state every process holds alike (once)
        "client_state_bytes": distributed.total(own_state, "adding up client state") + alike,
        # memory: each process's peak, summed (they need not coincide; shared state in each)
        "client_state_peak_memory_bytes": distributed.total(
            sim.store.peak_resident, "adding up peak state memory"
        ),
        "client_state_disk_bytes": sim.store.disk_bytes(),
        "device": str(sim.device),
        "cpu": cpu_identity(),  # what decides the kernels' numbers (docs: reproducibility)
        "processes": distributed.size(),
        "config": asdict(cfg),
    }
