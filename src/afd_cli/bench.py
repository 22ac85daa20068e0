"""``make benchmark``: figures, not pass/fail (several minutes on 2 CPU cores).

(a) seconds per round of ``afd run`` (``experiment.run`` in a real run directory: local
    training, codecs, aggregation, test evaluation every round, CSV and checkpoint) next to
    the loop a researcher writes by hand for the same work -- standard NCHW fp32 tensors, one
    client module reused with ``load_state_dict`` per client, FedAvg over ``state_dict``s, the
    10k test images evaluated every round in batches of 1000 -- on the same clients, batches
    and initial weights, as a ratio measured in the same process;
(b) seconds per round and peak RSS of fedavg, single and single+dgc, each in a subprocess
    (no evaluation);
(c) codec sizes against the entropy bound (sparse at 99% / 99.9%, dense fp32 / fp16 / q8);
(d) CUDA only: client-samples/s of the sequential and the batched trainer at C = 10, 50, 100
    clients (cnn_femnist, B=10, 200 samples per client) next to one big batch of the same
    total size through one model, with peak GPU memory; then (b) on the GPU;
(e) the same trainers on CPU (cnn_mnist and mlp, 10 clients x 600 samples): the measurement
    behind ``trainer=auto`` choosing sequential on CPU;
(f) checkpoint cost in ``experiment=paper_mnist compression=dgc`` once all 100 clients hold
    DGC state (filled directly): seconds and MB of the incremental checkpoint after a round,
    next to the round itself (with evaluation) and to a full checkpoint with every client's
    state inline (what every checkpoint was before the client-state store).

Setup of (a), (b): MNIST iid, 100 clients, 10 per round, E=1, B=10, lr 0.05. Times are
medians over ``--repeats`` rounds after one warm-up round. Results are printed and written to
``outputs/benchmarks/<time>.json``.

    python -m afd_cli.bench [--repeats 3] [--out outputs/benchmarks] [--only a,b,c,d,e,f]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from torch.nn import functional as F

console = Console(width=None if sys.stdout.isatty() else 120)
ROUND_CONFIGS = (("fedavg", "none"), ("single", "none"), ("single", "dgc"))
TRAINER_CLIENTS = (10, 50, 100)


def _config(strategy: str = "fedavg", compression: str = "none", device: str = "cpu"):
    from .config import CompressionConfig, RootConfig, StrategyConfig

    cfg = RootConfig()
    cfg.dataset.name = "mnist"
    cfg.partition.name = "iid"
    cfg.model.name = "cnn_mnist"
    s = cfg.schedule
    s.num_clients, s.clients_per_round, s.local_epochs, s.batch_size, s.lr = 100, 10, 1, 10, 0.05
    cfg.strategy = StrategyConfig(name=strategy)  # the schema's defaults are afd run's
    cfg.compression = CompressionConfig(name=compression)
    cfg.device = device
    cfg.progress = "none"
    cfg.data_dir = os.environ.get("AFD_DATA_DIR", "~/.cache/afd-cli")
    return cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------ (a) afd vs a bare loop


def client_batches(sim, t: int, client: int) -> list[torch.Tensor]:
    """The minibatch index tensors client ``client`` trains on in round ``t`` (as afd does)."""
    from .federated.round import client_seed

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
    from .federated.round import sample_clients

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
    from .experiment import build, resolve_device, resolve_precision, run

    cfg = _config(device=device)
    cfg.schedule.rounds = repeats + 1  # the first round of each side is a warm-up
    default = resolve_precision(cfg.precision, resolve_device(cfg.device))
    rows_by: dict[str, pd.DataFrame] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for precision in dict.fromkeys((default, "fp32")):
        cfg.precision = precision
        with tempfile.TemporaryDirectory() as tmp:
            summaries[precision] = run(cfg, Path(tmp))
            rows_by[precision] = pd.read_csv(Path(tmp) / "metrics.csv")
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


# ------------------------------------------------------------------ (d) trainers on CUDA


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_mb(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None


def trainer_throughput(
    clients: int,
    device: str = "cuda",
    samples: int = 200,
    model_name: str = "cnn_femnist",
    workers: int = 1,
) -> dict[str, Any]:
    """Client-samples/s of the sequential and batched trainers on one round of ``clients``
    (B=10, ``samples`` each, random 28x28 images), next to one big batch of the same total
    size through one model; peak GPU memory of each on CUDA. (d) on CUDA, (e) on CPU."""
    from . import models
    from .data import TensorSamples
    from .federated.batched import BatchedTrainer
    from .federated.client import LocalJob, LocalSGD, SequentialTrainer
    from .submodel import View

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    n = clients * samples
    data = TensorSamples(torch.rand(n, 1, 28, 28, generator=gen), torch.randint(62, (n,)))
    data = data.to(dev)
    torch.manual_seed(0)
    model = models.build(model_name, (1, 28, 28), 62).to(dev)
    weights = {k: p.detach() for k, p in model.named_parameters()}
    view = View(model)
    jobs = [
        LocalJob(
            c,
            view.units,
            view.extract(weights),
            torch.arange(c * samples, (c + 1) * samples, device=dev),
            c,
        )
        for c in range(clients)
    ]
    sgd = LocalSGD(epochs=1, batch_size=10, lr=0.05)
    out: dict[str, Any] = {"model": model_name, "device": str(dev), "clients": clients}
    out["client_samples"] = n
    for name, trainer in (
        ("sequential", SequentialTrainer(model, data, sgd, device=dev, workers=workers)),
        ("batched", BatchedTrainer(model, data, sgd, device=dev)),
    ):
        trainer.train(jobs[: min(2, clients)])  # warm-up: kernels, allocator, module cache
        _sync(dev)
        _reset_peak(dev)
        t0 = time.perf_counter()
        trainer.train(jobs)
        _sync(dev)
        out[f"{name}_samples_per_s"] = n / (time.perf_counter() - t0)
        out[f"{name}_peak_mb"] = _peak_mb(dev)
    big = models.build(model_name, (1, 28, 28), 62).to(dev)
    opt = torch.optim.SGD(big.parameters(), lr=0.05)
    steps = samples // 10
    batches = torch.randperm(n, generator=gen).to(dev).split(clients * 10)

    def one_pass() -> None:
        for b in batches[:steps]:
            x, y = data.batch(b)
            loss = F.cross_entropy(big(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    one_pass()
    _sync(dev)
    _reset_peak(dev)
    t0 = time.perf_counter()
    one_pass()
    _sync(dev)
    out["big_batch_samples_per_s"] = n / (time.perf_counter() - t0)
    out["big_batch_peak_mb"] = _peak_mb(dev)
    out["batched_vs_sequential"] = out["batched_samples_per_s"] / out["sequential_samples_per_s"]
    out["batched_vs_big_batch"] = out["batched_samples_per_s"] / out["big_batch_samples_per_s"]
    return out


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
    from .experiment import build

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


def checkpoint_cost(repeats: int) -> dict[str, Any]:
    """(f): see the module docstring. Rounds 51.. (DGC at its 99.9% target); the store keeps
    the configured ``state.memory_mb``, so some clients live on disk as in a real run."""
    from . import cli, experiment
    from .submodel import View

    cfg = cli.check(["experiment=paper_mnist", "compression=dgc", "progress=none"])
    with tempfile.TemporaryDirectory(prefix="afd-bench-ckpt-") as tmp:
        run_dir = Path(tmp)
        sim = experiment.build(cfg, run_dir=run_dir)
        comp, full, gen = sim.compressor, View(sim.model), torch.Generator().manual_seed(0)
        for c in range(cfg.schedule.num_clients):  # every client has taken part
            comp.up.gather(c, full, sim.weights)
            for key in comp.up.keys:
                small = {
                    n: 1e-6 * torch.randn(w.shape, generator=gen) for n, w in sim.weights.items()
                }
                comp.up.scatter(c, full, key, small)
        path, state = run_dir / experiment.CHECKPOINT, {"round": 50}
        experiment._save_checkpoint(path, cfg, sim, state, {})
        rounds, incremental, full_s, full_mb = [], [], [], []
        for t in range(50, 50 + repeats):
            t0 = time.perf_counter()
            sim.round(t)
            sim.evaluate(sim.weights)
            rounds.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            written = experiment._save_checkpoint(path, cfg, sim, state, {})
            incremental.append((time.perf_counter() - t0, written / 1e6))
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
        return {
            "setting": "experiment=paper_mnist compression=dgc, 100 clients with state",
            "state_memory_mb": cfg.state.memory_mb,
            "state_mb": sim.store.nbytes() / 1e6,
            "round_s": statistics.median(rounds),
            "incremental_s": statistics.median(s for s, _ in incremental),
            "incremental_mb": statistics.median(mb for _, mb in incremental),
            "full_s": statistics.median(full_s),
            "full_mb": statistics.median(full_mb),
        }


def codec_sizes() -> list[dict[str, Any]]:
    """(c): cnn_mnist-sized random tensors, sparse top-k and dense, against the bound."""
    from . import models
    from .compression.codec import (
        Dense,
        Sparse,
        decode,
        encode,
        encode_params,
        entropy_bound_bits,
    )

    model = models.build("cnn_mnist", (1, 28, 28), 10)
    gen = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(p.shape, generator=gen) for k, p in model.named_parameters()}
    n_total = sum(t.numel() for t in tensors.values())
    rows = []
    for fmt in ("fp32", "fp16", "q8"):
        size = len(encode_params(tensors, fmt))
        rows.append(
            {
                "payload": f"dense {fmt}",
                "bytes": size,
                "bound_bytes": n_total * {"fp32": 4, "fp16": 2, "q8": 1}[fmt],
                "bits_per_sent_entry": 8 * size / n_total,
            }
        )
    for sparsity in (0.99, 0.999):
        records, bound_bits, index_bytes, k_total, n_sparse = [], 0.0, 0, 0, 0
        for t in tensors.values():
            n = t.numel()
            if n < 1024:  # biases go dense, as in topk / dgc
                records.append(Dense(t))
                bound_bits += 32 * n
                continue
            k = max(1, math.ceil((1 - sparsity) * n))
            idx = torch.sort(t.flatten().abs().topk(k).indices).values
            rec = Sparse(tuple(t.shape), idx, t.flatten()[idx])
            records.append(rec)
            index_bytes += len(encode([rec])) - 8 - 4 * k  # minus header and values
            bound_bits += entropy_bound_bits(n, k) + 32 * k
            k_total, n_sparse = k_total + k, n_sparse + n
        enc_s, dec_s = math.inf, math.inf
        for _ in range(3):  # best of 3: the codec sits on every client's upload
            t0 = time.perf_counter()
            payload = encode(records)
            t1 = time.perf_counter()
            decode(payload)
            enc_s, dec_s = min(enc_s, t1 - t0), min(dec_s, time.perf_counter() - t1)
        size = len(payload)
        rows.append(
            {
                "payload": f"sparse fp32 {sparsity:.1%}",
                "bytes": size,
                "encode_ms": 1e3 * enc_s,
                "decode_ms": 1e3 * dec_s,
                "bound_bytes": bound_bits / 8,
                "sent_entries": k_total,
                "index_bits_per_entry": 8 * index_bytes / k_total,
                "bound_index_bits_per_entry": sum(
                    entropy_bound_bits(t.numel(), max(1, math.ceil((1 - sparsity) * t.numel())))
                    for t in tensors.values()
                    if t.numel() >= 1024
                )
                / k_total,
            }
        )
    for r in rows:
        r["over_bound_pct"] = 100 * (r["bytes"] / r["bound_bytes"] - 1)
        r["vs_dense_fp32"] = rows[0]["bytes"] / r["bytes"]
    return rows


# --------------------------------------------------------------------------- printing


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


def _print_trainers(rows: list[dict[str, Any]], title: str) -> None:
    t = Table(title=title)
    for c in ("model", "clients", "sequential", "batched", "one big batch", "batched/seq"):
        t.add_column(c, justify="right")
    t.add_column("batched/big", justify="right")
    t.add_column("peak MB seq / batched / big", justify="right")
    for r in rows:
        t.add_row(
            r["model"],
            str(r["clients"]),
            f"{r['sequential_samples_per_s']:,.0f}",
            f"{r['batched_samples_per_s']:,.0f}",
            f"{r['big_batch_samples_per_s']:,.0f}",
            f"{r['batched_vs_sequential']:.1f}x",
            f"{r['batched_vs_big_batch']:.0%}",
            " / ".join(
                f"{r[k]:,.0f}" if r[k] is not None else "-"
                for k in ("sequential_peak_mb", "batched_peak_mb", "big_batch_peak_mb")
            ),
        )
    console.print(t)


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


def _print_codec(rows: list[dict[str, Any]]) -> None:
    t = Table(title="(c) codec: one cnn_mnist-sized update (1.66 M fp32 entries)")
    for c in ("payload", "bytes", "bound bytes", "over bound", "x smaller than fp32"):
        t.add_column(c, justify="left" if c == "payload" else "right")
    t.add_column("index bits/entry (bound)", justify="right")
    t.add_column("encode / decode ms", justify="right")
    for r in rows:
        idx = (
            f"{r['index_bits_per_entry']:.2f} ({r['bound_index_bits_per_entry']:.2f})"
            if "index_bits_per_entry" in r
            else "-"
        )
        t.add_row(
            r["payload"],
            f"{r['bytes']:,}",
            f"{r['bound_bytes']:,.0f}",
            f"{r['over_bound_pct']:+.2f}%",
            f"{r['vs_dense_fp32']:.1f}",
            idx,
            f"{r['encode_ms']:.1f} / {r['decode_ms']:.1f}" if "encode_ms" in r else "-",
        )
    console.print(t)


def _print_checkpoint(r: dict[str, Any]) -> None:
    t = Table(title=f"(f) checkpoint cost, {r['setting']} ({r['state_mb']:,.0f} MB)")
    for col in ("checkpoint", "s", "MB written", "% of a round"):
        t.add_column(col, justify="right" if col != "checkpoint" else "left")
    t.add_row("round (with evaluation)", f"{r['round_s']:.2f}", "", "")
    for name, key in (("incremental (now)", "incremental"), ("full, all inline", "full")):
        s, mb = r[f"{key}_s"], r[f"{key}_mb"]
        t.add_row(name, f"{s:.2f}", f"{mb:,.1f}", f"{100 * s / r['round_s']:.1f}%")
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m afd_cli.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per measurement")
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    ap.add_argument("--only", default="a,b,c,d,e,f", help="sections to run, e.g. a,c")
    ap.add_argument("--child", nargs=4, metavar=("STRATEGY", "COMPRESSION", "DEVICE", "ROUNDS"))
    args = ap.parse_args(argv)
    if args.child:
        s, c, d, n = args.child
        print(json.dumps(child(s, c, d, int(n))), flush=True)
        return 0

    only = set(args.only.split(","))
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "setup": "mnist iid, 100 clients, 10 per round, E=1, B=10, lr 0.05",
    }
    console.print(
        f"[bold]afd benchmark[/]: {results['setup']}; medians of {args.repeats} rounds; "
        f"{results['cpu_count']} CPUs, torch {torch.__version__} ({results['torch_threads']} "
        "threads)"
    )
    cuda = torch.cuda.is_available()
    if "a" in only:
        results["afd_vs_bare"] = afd_vs_researcher(args.repeats)
        _print_afd_vs_bare(results["afd_vs_bare"])
    if "b" in only:
        results["rounds"] = rounds_in_subprocesses("cpu", args.repeats)
        _print_rounds(results["rounds"])
    if "c" in only:
        results["codec"] = codec_sizes()
        _print_codec(results["codec"])
    if "d" in only and cuda:
        results["trainers_cuda"] = [trainer_throughput(c) for c in TRAINER_CLIENTS]
        _print_trainers(
            results["trainers_cuda"],
            "(d) CUDA trainers, B=10, 200 samples/client: client-samples/s",
        )
        results["rounds_cuda"] = rounds_in_subprocesses("cuda", args.repeats)
        _print_rounds(results["rounds_cuda"])
    elif "d" in only:
        console.print("(d) CUDA: skipped, no GPU visible (torch.cuda.is_available() is False)")
    if "e" in only:
        workers = torch.get_num_threads()
        results["trainers_cpu"] = [
            trainer_throughput(10, "cpu", 600, m, workers) for m in ("cnn_mnist", "mlp")
        ]
        _print_trainers(
            results["trainers_cpu"],
            f"(e) CPU trainers (why trainer=auto is sequential here), 10 clients x 600 "
            f"samples, B=10, {workers} threads: client-samples/s",
        )
    if "f" in only:
        results["checkpoint"] = checkpoint_cost(args.repeats)
        _print_checkpoint(results["checkpoint"])
    results["wall_s"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {path} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
