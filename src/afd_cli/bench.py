"""``make benchmark``: figures, not pass/fail (a few minutes on 2 CPU cores).

(a) simulation throughput: the runner's round (``federated.round.run_round`` with the real
    strategy, compressor and trainer; no test evaluation) against a bare hand-written
    centralised PyTorch loop doing the same SGD steps (same model, batch size, steps and data
    tensors), in client-samples/s, and the runner's overhead in %;
(b) seconds per round and peak RSS of fedavg, single and single+dgc, each in a subprocess;
(c) codec sizes against the entropy bound (sparse at 99% / 99.9%, dense fp32 / fp16 / q8);
(d) (a) and (b) again on CUDA when a GPU is present.

Setup: MNIST iid, 100 clients, 10 per round, E=1, B=10, lr 0.05. Times are medians of
``--repeats`` repeats. Results are printed and written to ``outputs/benchmarks/<time>.json``.

    python -m afd_cli.bench [--repeats 3] [--out outputs/benchmarks] [--only a,b,c,d]
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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 120)
MODELS = ("cnn_mnist", "cnn_femnist")
ROUND_CONFIGS = (("fedavg", "none"), ("single", "none"), ("single", "dgc"))


def _config(strategy: str = "fedavg", compression: str = "none", device: str = "cpu"):
    from .config import CompressionConfig, RootConfig, StrategyConfig

    cfg = RootConfig()
    cfg.dataset.name = "mnist"
    cfg.partition.name = "iid"
    cfg.model.name = "cnn_mnist"
    s = cfg.schedule
    s.num_clients, s.clients_per_round, s.local_epochs, s.batch_size, s.lr = 100, 10, 1, 10, 0.05
    cfg.strategy = (
        StrategyConfig(name=strategy, rate=0.25, explore=0.2)
        if strategy != "fedavg"
        else StrategyConfig(name="fedavg")
    )
    cfg.compression = CompressionConfig(name=compression)
    cfg.device = device
    cfg.data_dir = os.environ.get("AFD_DATA_DIR", "~/.cache/afd-cli")
    return cfg


class Setup:
    """``experiment.build``'s simulation, plus the bare loop's batches of the same round."""

    def __init__(self, cfg, ds=None):
        from .experiment import build

        self.sim = build(cfg, ds)
        self.cfg, self.device, self.ds = cfg, self.sim.device, self.sim.ds
        self.train, self.parts, self.full_size = (
            self.sim.train,
            self.sim.part_tensors,
            self.sim.full_size,
        )
        self.new_model, self.round = self.sim.new_model, self.sim.round

    def batches(self, t: int) -> tuple[list[torch.Tensor], int]:
        """The minibatch index tensors the round-``t`` clients train on, in order."""
        from .federated.round import client_seed, sample_clients

        s = self.cfg.schedule
        out, samples = [], 0
        for c in sample_clients(self.cfg.seed, t, len(self.parts), s.clients_per_round):
            idx = self.parts[c]
            gen = torch.Generator().manual_seed(client_seed(self.cfg.seed, t, c))
            for _ in range(s.local_epochs):
                order = idx[torch.randperm(len(idx), generator=gen)]
                out += list(order.split(s.batch_size))
                samples += len(idx)
        return out, samples


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(model: torch.nn.Module, setup: Setup, batches: list[torch.Tensor]) -> float:
    """A centralised SGD loop over the same batches: the floor the runner is measured against."""
    from torch.nn import functional as F

    opt = torch.optim.SGD(model.parameters(), lr=setup.cfg.schedule.lr)
    model.train()
    _sync(setup.device)
    t0 = time.perf_counter()
    for b in batches:
        x, y = setup.train.batch(b)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(setup.device)
    return time.perf_counter() - t0


def throughput(model_name: str, device: str, repeats: int, ds=None) -> dict[str, Any]:
    """(a): runner round vs bare loop, same steps; medians over ``repeats`` rounds."""
    cfg = _config(device=device)
    cfg.model = replace(cfg.model, name=model_name)
    setup = Setup(cfg, ds)
    bare_model = setup.new_model()
    warm, _ = setup.batches(10_000)
    bare_loop(bare_model, setup, warm[:20])  # allocator / kernel warm-up
    runner_s, bare_s, samples = [], [], 0
    for t in range(repeats):
        batches, samples = setup.batches(t)
        _sync(setup.device)
        t0 = time.perf_counter()
        r = setup.round(t)
        _sync(setup.device)
        runner_s.append(time.perf_counter() - t0)
        bare_s.append(bare_loop(bare_model, setup, batches))
        assert len(r.clients) == cfg.schedule.clients_per_round
    run_med, bare_med = statistics.median(runner_s), statistics.median(bare_s)
    return {
        "model": model_name,
        "device": str(setup.device),
        "params": setup.full_size,
        "client_samples_per_round": samples,
        "steps_per_round": len(batches),
        "runner_s": runner_s,
        "bare_s": bare_s,
        "runner_samples_per_s": samples / run_med,
        "bare_samples_per_s": samples / bare_med,
        "ratio": run_med / bare_med,
        "overhead_pct": 100 * (run_med / bare_med - 1),
    }


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
    setup = Setup(_config(strategy, compression, device))
    times = []
    for t in range(rounds):
        _sync(setup.device)
        t0 = time.perf_counter()
        r = setup.round(t)
        _sync(setup.device)
        times.append(time.perf_counter() - t0)
    return {
        "strategy": strategy,
        "compression": compression,
        "device": str(setup.device),
        "round_s": times,
        "median_round_s": statistics.median(times),
        "last_round_bytes": r.bytes_down + r.bytes_up,
        "peak_rss_mb": _peak_rss_mb(),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20
        if setup.device.type == "cuda"
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


def _print_throughput(rows: list[dict[str, Any]]) -> None:
    t = Table(title="(a) simulation throughput: runner round vs bare PyTorch loop (same steps)")
    for c in ("model", "device", "steps", "runner s", "bare s", "runner samples/s"):
        t.add_column(c, justify="right" if c not in ("model", "device") else "left")
    t.add_column("bare samples/s", justify="right")
    t.add_column("overhead", justify="right")
    for r in rows:
        t.add_row(
            r["model"],
            r["device"],
            str(r["steps_per_round"]),
            f"{statistics.median(r['runner_s']):.2f}",
            f"{statistics.median(r['bare_s']):.2f}",
            f"{r['runner_samples_per_s']:,.0f}",
            f"{r['bare_samples_per_s']:,.0f}",
            f"{r['overhead_pct']:+.1f}%",
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m afd_cli.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per measurement")
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    ap.add_argument("--only", default="a,b,c,d", help="sections to run, e.g. a,c")
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
        "setup": "mnist iid, 100 clients, 10 per round, E=1, B=10, lr 0.05, no test eval",
    }
    console.print(
        f"[bold]afd benchmark[/]: {results['setup']}; medians of {args.repeats} rounds; "
        f"{results['cpu_count']} CPUs, torch {torch.__version__} ({results['torch_threads']} "
        "threads)"
    )
    cuda = torch.cuda.is_available()
    devices = ["cpu", *(["cuda"] if cuda and "d" in only else [])]
    ds = None
    if "a" in only:
        from .experiment import load_data

        ds = load_data(_config())
        rows = [throughput(m, dev, args.repeats, ds) for dev in devices for m in MODELS]
        results["throughput"] = rows
        _print_throughput(rows)
    if "b" in only:
        rows = [r for dev in devices for r in rounds_in_subprocesses(dev, args.repeats)]
        results["rounds"] = rows
        _print_rounds(rows)
    if "c" in only:
        results["codec"] = codec_sizes()
        _print_codec(results["codec"])
    if "d" in only and not cuda:
        console.print("(d) CUDA: skipped, no GPU visible (torch.cuda.is_available() is False)")
    results["wall_s"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {path} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
