"""Local training of one client: minibatch SGD on in-memory tensors.

One module per distinct sub-model shape is built once and reused: a client's starting weights
are copied into it, so there is no per-client ``deepcopy`` and no DataLoader. Shuffling uses a
generator seeded from (seed, round, client), so a run is reproducible and resumable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..data import Samples
from ..models import FLModel

Params = dict[str, torch.Tensor]


@dataclass
class LocalJob:
    """Everything one client needs to train: its starting weights, data and RNG seed."""

    client: int
    units: dict[str, int]
    weights: Params
    indices: torch.Tensor
    seed: int


@dataclass
class LocalResult:
    weights: Params
    loss: float  # mean training loss over all local steps (what AFD's score map reads)
    num_samples: int
    seconds: float


class SequentialTrainer:
    """Trains the round's clients one after another (a batched engine can replace it)."""

    def __init__(
        self,
        model: FLModel,
        data: Samples,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        device: torch.device,
    ):
        self.model, self.data, self.device = model, data, device
        self.epochs, self.batch_size = epochs, batch_size
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self._modules: dict[tuple[int, ...], nn.Module] = {}

    def module_for(self, units: dict[str, int]) -> nn.Module:
        key = tuple(units[k] for k in sorted(units))
        if key not in self._modules:
            self._modules[key] = self.model.with_units(units).to(self.device)
        return self._modules[key]

    def train(
        self, jobs: list[LocalJob], on_done: Callable[[], None] | None = None
    ) -> list[LocalResult]:
        results = []
        for job in jobs:
            results.append(self.train_one(job))
            if on_done:
                on_done()
        return results

    def train_one(self, job: LocalJob) -> LocalResult:
        t0 = time.perf_counter()
        module = self.module_for(job.units)
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, w in job.weights.items():
                params[name].copy_(w)
        opt = torch.optim.SGD(
            module.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        gen = torch.Generator().manual_seed(job.seed)
        idx = job.indices
        total, steps = torch.zeros((), device=self.device), 0
        module.train()
        for _ in range(self.epochs):
            order = idx[torch.randperm(len(idx), generator=gen)]
            for batch in order.split(self.batch_size):
                x, y = self.data.batch(batch)
                loss = F.cross_entropy(module(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach()
                steps += 1
        weights = {k: p.detach().clone() for k, p in params.items()}
        return LocalResult(
            weights, float(total) / max(steps, 1), len(idx), time.perf_counter() - t0
        )


@torch.no_grad()
def evaluate(module: nn.Module, data: Samples, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``module`` on all of ``data``."""
    module.eval()
    n = len(data)
    loss_sum, correct = 0.0, 0
    for batch in torch.arange(n).split(batch_size):
        x, y = data.batch(batch)
        out = module(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    return loss_sum / n, correct / n
