"""(d), (e): the sequential and the batched trainer, client-samples per second."""

from __future__ import annotations

import time
from typing import Any

import torch
from rich.table import Table
from torch.nn import functional as F

from . import _sync, console


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
    from .. import models
    from ..data import TensorSamples
    from ..federated.batched import BatchedTrainer
    from ..federated.client import LocalJob, LocalSGD, SequentialTrainer
    from ..submodel import View

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
