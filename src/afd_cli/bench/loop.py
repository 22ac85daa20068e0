"""(a): ``afd run`` per round next to the loop a researcher writes by hand."""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.table import Table
from torch.nn import functional as F

from . import _config, _sync, console


def client_batches(sim, t: int, client: int) -> list[torch.Tensor]:
    """The minibatch index tensors client ``client`` trains on in round ``t`` (as afd does)."""
    from ..federated.round import client_seed

    idx = sim.part_tensors[client]
    gen = torch.Generator().manual_seed(client_seed(sim.cfg.seed, t, client))
    out = []
    for _ in range(sim.cfg.schedule.local_epochs):
        out += list(idx[torch.randperm(len(idx), generator=gen)].split(sim.cfg.schedule.batch_size))
    return out


def researcher_loop(sim, rounds: int) -> tuple[list[float], list[float], float]:
    """FedAvg as a researcher writes it by hand; returns seconds per round, seconds of
    evaluation per round and the final accuracy.

    Same clients, batches and initial weights as ``afd run`` with this config, so the final
    accuracies agree up to float rounding (a check that both did the same work).
    """
    from ..federated.round import sample_clients

    s = sim.cfg.schedule
    global_model, local = sim.new_model(), sim.new_model()
    global_model.load_state_dict({k: v.clone() for k, v in sim.weights.items()})
    times, eval_times, acc = [], [], math.nan
    for t in range(rounds):
        _sync(sim.device)
        t0 = time.perf_counter()
        states, sizes = [], []
        for c in sample_clients(sim.cfg.seed, t, len(sim.part_tensors), s.clients_per_round):
            local.load_state_dict(global_model.state_dict())
            opt = torch.optim.SGD(local.parameters(), lr=s.lr)
            local.train()
            for b in client_batches(sim, t, c):
                x, y = sim.train.batch(b)
                loss = F.cross_entropy(local(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            states.append({k: v.clone() for k, v in local.state_dict().items()})
            sizes.append(len(sim.part_tensors[c]))
        n = sum(sizes)
        avg = {
            k: sum(w * st[k] for w, st in zip(sizes, states, strict=True)) / n for k in states[0]
        }
        global_model.load_state_dict(avg)
        t_eval = time.perf_counter()
        global_model.eval()
        correct = 0
        with torch.no_grad():
            for b in torch.arange(len(sim.test)).split(1000):
                x, y = sim.test.batch(b)
                correct += int((global_model(x).argmax(1) == y).sum())
        acc = correct / len(sim.test)
        _sync(sim.device)
        times.append(time.perf_counter() - t0)
        eval_times.append(time.perf_counter() - t_eval)
    return times, eval_times, acc


def afd_vs_researcher(repeats: int, device: str = "cpu", ds=None) -> dict[str, Any]:
    """(a): ``experiment.run`` per round (with eval, CSV, checkpoint) vs the researcher loop.

    afd runs with the default ``precision`` and, where that resolves to bf16, once more in
    fp32, so the ratio with defaults and the fp32 one come from the same process."""
    from ..run.build import build, resolve_device, resolve_precision
    from ..run.loop import run
    from ..run.rundir import METRICS

    cfg = _config(device=device)
    cfg.schedule.rounds = repeats + 1  # the first round of each side is a warm-up
    default = resolve_precision(cfg.precision, resolve_device(cfg.device))
    rows_by: dict[str, pd.DataFrame] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for precision in dict.fromkeys((default, "fp32")):
        cfg.precision = precision
        with tempfile.TemporaryDirectory() as tmp:
            summaries[precision] = run(cfg, Path(tmp))
            rows_by[precision] = pd.read_csv(Path(tmp) / METRICS)
    bare_s, bare_eval_s, bare_acc = researcher_loop(build(cfg, ds), cfg.schedule.rounds)
    bare_s, bare_eval_s = bare_s[1:], bare_eval_s[1:]
    bare_med = statistics.median(bare_s)
    afd = []
    for precision, rows in rows_by.items():
        ckpt_per_round = summaries[precision]["checkpoint_s"] / cfg.schedule.rounds
        afd_s = [float(w) + ckpt_per_round for w in rows.wall_s.iloc[1:]]
        afd.append(
            {
                "precision": precision,
                "default": precision == default,
                "afd_round_s": afd_s,
                "afd_median_s": statistics.median(afd_s),
                "ratio": statistics.median(afd_s) / bare_med,
                "afd_checkpoint_s_per_round": ckpt_per_round,
                "afd_train_s": statistics.median(rows.train_s.iloc[1:]),
                "afd_eval_s": statistics.median(rows.eval_s.iloc[1:]),
                "afd_final_acc": float(rows.test_acc.iloc[-1]),
            }
        )
    return {
        "device": summaries[default]["device"],
        "rounds_timed": repeats,
        "afd": afd,  # the default precision first
        "bare_round_s": bare_s,
        "bare_median_s": bare_med,
        "bare_eval_s": statistics.median(bare_eval_s),
        "bare_final_acc": bare_acc,
    }


def _print_afd_vs_bare(r: dict[str, Any]) -> None:
    t = Table(title="(a) seconds per round: afd run vs the hand-written loop (same work)")
    for c in ("device", "afd precision", "afd s/round", "bare s/round", "afd / bare"):
        t.add_column(c, justify="left" if c in ("device", "afd precision") else "right")
    for c in ("eval s afd / bare", "checkpoint s/round", "final acc afd / bare"):
        t.add_column(c, justify="right")
    for a in r["afd"]:
        t.add_row(
            r["device"],
            a["precision"] + (" (default)" if a["default"] else ""),
            f"{a['afd_median_s']:.2f}",
            f"{r['bare_median_s']:.2f}",
            f"{a['ratio']:.2f}x",
            f"{a['afd_eval_s']:.2f} / {r['bare_eval_s']:.2f}",
            f"{a['afd_checkpoint_s_per_round']:.3f}",
            f"{a['afd_final_acc']:.4f} / {r['bare_final_acc']:.4f}",
        )
    console.print(t)
