"""(b): seconds per round and peak RSS, each configuration in its own process."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from . import ROUND_CONFIGS, _config, _sync, console


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def child(strategy: str, compression: str, device: str, rounds: int) -> dict[str, Any]:
    """(b), in its own process: seconds per round (no eval) and the process's peak RSS."""
    from ..run.build import build

    sim = build(_config(strategy, compression, device))
    times = []
    for t in range(rounds):
        _sync(sim.device)
        t0 = time.perf_counter()
        r = sim.round(t)
        _sync(sim.device)
        times.append(time.perf_counter() - t0)
    return {
        "strategy": strategy,
        "compression": compression,
        "device": str(sim.device),
        "round_s": times,
        "median_round_s": statistics.median(times),
        "last_round_bytes": r.bytes_down + r.bytes_up,
        "peak_rss_mb": _peak_rss_mb(),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20
        if sim.device.type == "cuda"
        else None,
    }


def rounds_in_subprocesses(device: str, rounds: int) -> list[dict[str, Any]]:
    out = []
    for strategy, compression in ROUND_CONFIGS:
        cmd = [sys.executable, "-m", "afd_cli.bench", "--child", strategy, compression, device]
        cmd.append(str(rounds))
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"benchmark child {strategy}+{compression} failed: {tail}")
        res = json.loads(p.stdout.strip().splitlines()[-1])
        res["ru_maxrss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        out.append(res)
    return out


def _print_rounds(rows: list[dict[str, Any]]) -> None:
    t = Table(title="(b) cnn_mnist, 10 clients x ~600 samples: seconds per round, peak RSS")
    for c in ("config", "device", "s / round (median)", "MB on the wire", "peak RSS MB"):
        t.add_column(c, justify="left" if c in ("config", "device") else "right")
    for r in rows:
        t.add_row(
            f"{r['strategy']}+{r['compression']}",
            r["device"],
            f"{r['median_round_s']:.2f}",
            f"{r['last_round_bytes'] / 1e6:,.1f}",
            f"{r['peak_rss_mb']:,.0f}"
            + (f" (GPU {r['cuda_peak_mb']:,.0f})" if r.get("cuda_peak_mb") else ""),
        )
    console.print(t)
