"""(h): what torchrun costs. The same run as one process and as two (``torchrun
--nproc_per_node=2``): CPU seconds of the whole launch (user + sys of every process, from
``/usr/bin/time -v`` when there is one, else ``resource``), seconds per round, the checkpoints'
seconds (rank 0's, the final one included), and whether ``metrics.csv`` is the same.

Three launches per repeat: one process with 1 thread (the CPU-seconds reference), one process
with 2 threads (the round-time reference: the same cores as two processes), two processes with
1 thread each. CPU seconds are less sensitive to a busy machine than wall seconds; both are
reported, as ratios to the one-process launches of the same repeat.

    python -m afd_cli.bench --only h [--repeats 2]

Only the standard library here (the runs are subprocesses), so the file also runs as a script
against another checkout (``PYTHONPATH=<other>/src python .../torchrun.py``): the before and
after of a change, measured by the same code.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SETUP = (
    "dataset=mnist",
    "partition=iid",
    "strategy=single",
    "compression=dgc",
    "compression.downlink=true",
    "schedule.clients_per_round=20",
    "progress=none",
    "device=cpu",
)
MODELS = {"mlp": 6, "cnn_mnist": 3}  # model: rounds (cnn_mnist: ~10 CPU s a round here)
TIMING = ("wall_s", "train_s", "eval_s")


def _launch(procs: int, threads: int, run_dir: Path, model: str) -> dict[str, Any]:
    """One launch: its CPU seconds and wall seconds, and what its run directory says."""
    afd = [sys.executable, "-m", "afd_cli.cli", "run", *SETUP, f"threads={threads}"]
    afd += [f"model={model}", f"schedule.rounds={MODELS[model]}"]
    afd.append(f"hydra.run.dir={run_dir}")
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*launcher, f"--nproc_per_node={procs}", "--no-python", *afd]
    else:
        cmd = afd
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    timed = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if timed:
        p = subprocess.run([timed, "-v", *cmd], env=env, capture_output=True, text=True)
        fields = dict(
            line.strip().rsplit(": ", 1) for line in p.stderr.splitlines() if ": " in line
        )
        cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
        peak_mb = int(fields["Maximum resident set size (kbytes)"]) / 1024
    else:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        peak_mb = after.ru_maxrss / 1024
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = [float(r["wall_s"]) for r in rows[1:]]  # after the first (warm-up) round
    return {
        "processes": procs,
        "threads": threads,
        "cpu_s": cpu,
        "peak_rss_mb": peak_mb,
        "round_s": statistics.median(rounds),
        "checkpoint_s": summary["checkpoint_s"],
        "rows": [{k: v for k, v in r.items() if k not in TIMING} for r in rows],
    }


def torchrun_cost(repeats: int = 2, model: str = "mlp") -> list[dict[str, Any]]:
    """``repeats`` x (1 process x 1 thread, 1 x 2, 2 x 1), each repeat in a new order."""
    out = []
    kinds = [(1, 1), (1, 2), (2, 1)]
    with tempfile.TemporaryDirectory(prefix="afd-bench-h-") as tmp:
        for r in range(repeats):
            got = {}
            for procs, threads in kinds[r % 3 :] + kinds[: r % 3]:
                got[(procs, threads)] = _launch(
                    procs, threads, Path(tmp) / f"r{r}-{procs}x{threads}", model
                )
            one, two_threads, two = got[(1, 1)], got[(1, 2)], got[(2, 1)]
            out.append(
                {
                    "model": model,
                    "repeat": r,
                    "load_avg": os.getloadavg()[0],
                    "cpu_s": [one["cpu_s"], two["cpu_s"]],
                    "cpu_ratio": two["cpu_s"] / one["cpu_s"],
                    "round_s": [two_threads["round_s"], two["round_s"]],
                    "round_ratio": two["round_s"] / two_threads["round_s"],
                    "checkpoint_s": [one["checkpoint_s"], two["checkpoint_s"]],
                    "checkpoint_ratio": two["checkpoint_s"] / one["checkpoint_s"],
                    "identical": one["rows"] == two["rows"] == two_threads["rows"],
                }
            )
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def _print_torchrun(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from . import console

    t = Table(title="(h) torchrun: 2 processes x 1 thread against 1 process (mnist, dgc)")
    for c in ("model", "repeat", "load", "CPU s 1x1 / 2x1", "ratio", "round s 1x2 / 2x1", "ratio"):
        t.add_column(c, justify="right")
    t.add_column("ckpt s 1x1 / 2x1", justify="right")
    t.add_column("ratio", justify="right")
    t.add_column("same metrics")
    for r in rows:
        t.add_row(
            r["model"],
            str(r["repeat"]),
            f"{r['load_avg']:.1f}",
            " / ".join(f"{x:.1f}" for x in r["cpu_s"]),
            f"{r['cpu_ratio']:.2f}x",
            " / ".join(f"{x:.2f}" for x in r["round_s"]),
            f"{r['round_ratio']:.2f}x",
            " / ".join(f"{x:.2f}" for x in r["checkpoint_s"]),
            f"{r['checkpoint_ratio']:.2f}x",
            "yes" if r["identical"] else "NO",
        )
    console.print(t)


if __name__ == "__main__":
    args = sys.argv[1:]
    repeats, model = (int(args[0]) if args else 2), (args[1] if len(args) > 1 else "mlp")
    print(json.dumps(torchrun_cost(repeats, model), indent=2))
