"""(f): the cost of a checkpoint once every client holds DGC state: incremental with and
without ``state.fsync``, a full one with every client inline, and the resume's check of every
file the index names (sizes and CRC-32s)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from . import console


def checkpoint_cost(repeats: int) -> dict[str, Any]:
    """(f): see the module docstring. Rounds 51.. (DGC at its 99.9% target); the store keeps
    the configured ``state.memory_mb``, so some clients live on disk as in a real run. Rounds
    alternate ``state.fsync`` on and off (``2 * repeats`` rounds)."""
    from ..compose import check
    from ..run import checkpoint
    from ..run.build import build
    from ..run.resume import comparable
    from ..run.rundir import CHECKPOINT
    from ..run.state import RunState
    from ..submodel import View

    cfg = check(["experiment=paper_mnist", "compression=dgc", "progress=none"])
    with tempfile.TemporaryDirectory(prefix="afd-bench-ckpt-") as tmp:
        run_dir = Path(tmp)
        sim = build(cfg, run_dir=run_dir)
        comp, full, gen = sim.compressor, View(sim.model), torch.Generator().manual_seed(0)
        for c in range(cfg.schedule.num_clients):  # every client has taken part
            comp.up.gather(c, full, sim.weights)
            for key in comp.up.keys:
                small = {
                    n: 1e-6 * torch.randn(w.shape, generator=gen) for n, w in sim.weights.items()
                }
                comp.up.scatter(c, full, key, small)
        path, state = run_dir / CHECKPOINT, RunState(round=50)
        checkpoint.save(path, comparable(cfg), sim, state, {})
        rounds, full_s, full_mb = [], [], []
        incremental: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for t in range(50, 50 + 2 * repeats):
            t0 = time.perf_counter()
            sim.round(t)
            sim.evaluate(sim.weights)
            rounds.append(time.perf_counter() - t0)
            sim.store.fsync = t % 2 == 0
            t0 = time.perf_counter()
            written = checkpoint.save(path, comparable(cfg), sim, state, {})
            incremental[sim.store.fsync].append((time.perf_counter() - t0, written / 1e6))
            if t % 2:
                continue
            t0 = time.perf_counter()
            inline = run_dir / "inline.pt"
            torch.save(
                {
                    "weights": {k: w.cpu() for k, w in sim.weights.items()},
                    "strategy": sim.strategy.state_dict(),
                    "compressor": sim.compressor.state_dict(),
                },
                inline,
            )
            full_s.append(time.perf_counter() - t0)
            full_mb.append(inline.stat().st_size / 1e6)
            inline.unlink()
        verify = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            checkpoint.load(path)  # reads and checks every state file the index names
            verify.append(time.perf_counter() - t0)
        named = sum(p.stat().st_size for p in (run_dir / "state").rglob("*.bin"))
        return {
            "setting": "experiment=paper_mnist compression=dgc, 100 clients with state",
            "state_memory_mb": cfg.state.memory_mb,
            "state_mb": sim.store.nbytes() / 1e6,
            "round_s": statistics.median(rounds),
            "incremental_s": statistics.median(s for s, _ in incremental[True]),
            "incremental_mb": statistics.median(mb for _, mb in incremental[True]),
            "nosync_s": statistics.median(s for s, _ in incremental[False]),
            "nosync_mb": statistics.median(mb for _, mb in incremental[False]),
            "verify_s": statistics.median(verify),
            "verify_mb": named / 1e6,
            "full_s": statistics.median(full_s),
            "full_mb": statistics.median(full_mb),
        }


def _print_checkpoint(r: dict[str, Any]) -> None:
    t = Table(title=f"(f) checkpoint cost, {r['setting']} ({r['state_mb']:,.0f} MB)")
    for col in ("checkpoint", "s", "MB written (read)", "% of a round"):
        t.add_column(col, justify="right" if col != "checkpoint" else "left")
    t.add_row("round (with evaluation)", f"{r['round_s']:.2f}", "", "")
    for name, key in (
        ("incremental, state.fsync=true", "incremental"),
        ("incremental, state.fsync=false", "nosync"),
        ("full, all inline (no fsync)", "full"),
        ("resume check: read + CRC-32 every file (page cache)", "verify"),
    ):
        s, mb = r[f"{key}_s"], r[f"{key}_mb"]
        t.add_row(name, f"{s:.2f}", f"{mb:,.1f}", f"{100 * s / r['round_s']:.1f}%")
    console.print(t)
