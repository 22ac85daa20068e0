"""Local training of one client: minibatch SGD on in-memory tensors.

One module per distinct sub-model shape is built once and reused: a client's starting weights
are copied into it, so there is no per-client ``deepcopy`` and no DataLoader. Shuffling uses a
generator seeded from (seed, round, client), so a run is reproducible and resumable.

Speed without changing the numbers' meaning: conv models train and evaluate in channels_last
(NHWC) memory layout, which this CPU's conv kernels run faster; weights handed in and out stay
in the standard contiguous layout, so nothing downstream sees the difference. On CPU, clients
(and slices of the test set) run side by side on ``workers`` threads with one intra-op thread
each (:mod:`.workers` says why). ``precision=bf16`` autocasts forward passes (a choice that
does change the numbers).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from ..data import Samples
from ..models import FLModel
from .workers import map_ordered

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StepPlan:
    """How a client trains its sub-model step by step (FjORD's ordered dropout).

    ``units[s]``: the units of each droppable layer that local step ``s`` trains, a prefix of
    the job's sub-model (the other units' outputs are multiplied by 0 in that step, so they
    neither contribute nor receive a gradient: the prefix sub-model's step, on the job's
    weights). ``distill``: every step first trains the job's whole sub-model on the labels,
    then the step's prefix on the whole sub-model's softmax (FjORD's self-distillation).
    """

    units: list[dict[str, int]]
    distill: bool = False


@dataclass
class LocalJob:
    """Everything one client needs to train: its starting weights, data and RNG seed."""

    client: int
    units: dict[str, int]
    weights: Params
    indices: torch.Tensor
    seed: int
    plan: StepPlan | None = None  # None: every step trains the whole sub-model
    lr_scale: float = 1.0  # times LocalSGD.lr this round (schedule.lr_warmup_rounds)


@dataclass
class LocalResult:
    weights: Params
    loss: float  # mean training loss over all local steps (what AFD's score map reads)
    num_samples: int
    seconds: float


def warmup_lr_scale(round: int, warmup_rounds: int) -> float:
    """Linear learning-rate warm-up: round ``r`` (0-based) of the first ``W`` trains at
    ``lr * (r + 1) / (W + 1)``, then at ``lr``.

    Lin et al.'s DGC code warms up over 5 epochs (Goyal et al.'s rule, per step, from
    ``lr / workers`` to ``lr``); federated rounds have no worker count that scales the rate,
    so the ramp starts at ``lr / (W + 1)`` and rises by the same step every round.
    """
    if round >= warmup_rounds:
        return 1.0
    return (round + 1) / (warmup_rounds + 1)


@dataclass(frozen=True)
class LocalSGD:
    """What every client runs: ``epochs`` of minibatch SGD with torch.optim.SGD's rule."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    precision: str = "fp32"  # fp32 | bf16 (autocast of the forward pass)


class Trainer(Protocol):
    """Trains a round's clients: the seam between the round loop and how training is done."""

    def train(
        self, jobs: list[LocalJob], on_done: Callable[[], None] | None = None
    ) -> list[LocalResult]:
        """One result per job, in order; weights on the trainer's device, contiguous."""
        ...


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for forward passes, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(module: nn.Module) -> torch.memory_format:
    """channels_last for models with 2-d convolutions, else the standard layout."""
    if any(isinstance(m, nn.Conv2d) for m in module.modules()):
        return torch.channels_last
    return torch.contiguous_format


class SequentialTrainer:
    """Trains the round's clients one after another (:mod:`.batched` trains them together)."""

    def __init__(
        self,
        model: FLModel,
        data: Samples,
        sgd: LocalSGD,
        *,
        device: torch.device,
        workers: int = 1,
    ):
        self.model, self.data, self.sgd = model, data, sgd
        self.device = torch.device(device)
        self.format = memory_format(model)
        self.workers = workers if self.device.type == "cpu" else 1
        self._local = threading.local()  # each worker thread reuses its own modules

    def module_for(self, units: dict[str, int]) -> nn.Module:
        modules = self._local.__dict__.setdefault("modules", {})
        key = tuple(units[k] for k in sorted(units))
        if key not in modules:
            module = self.model.with_units(units).to(self.device)
            modules[key] = module.to(memory_format=self.format)
        return modules[key]

    def train(
        self, jobs: list[LocalJob], on_done: Callable[[], None] | None = None
    ) -> list[LocalResult]:
        if self.device.type != "cpu":
            results = []
            for job in jobs:
                results.append(self.train_one(job))
                if on_done:
                    on_done()
            return results
        return map_ordered(self.train_one, jobs, self.workers, on_done)

    def train_one(self, job: LocalJob) -> LocalResult:
        t0 = time.perf_counter()
        module = self.module_for(job.units)
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, w in job.weights.items():
                params[name].copy_(w)
        sgd = self.sgd
        opt = torch.optim.SGD(
            module.parameters(),
            lr=sgd.lr * job.lr_scale,
            momentum=sgd.momentum,
            weight_decay=sgd.weight_decay,
        )
        gen = torch.Generator().manual_seed(job.seed)
        data, idx = self.data.local(job.indices)
        total, steps = torch.zeros((), device=self.device), 0
        module.train()
        if job.plan is not None:
            total, steps = self._train_plan(module, opt, job, gen)
            return self._result(params, total, steps, len(idx), t0)
        for _ in range(sgd.epochs):
            order = idx[torch.randperm(len(idx), generator=gen)]
            for batch in order.split(sgd.batch_size):
                x, y = data.batch(batch)
                if x.dim() == 4:
                    x = x.contiguous(memory_format=self.format)
                with autocast(self.device, sgd.precision):
                    loss = F.cross_entropy(module(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach()
                steps += 1
        return self._result(params, total, steps, len(idx), t0)

    @staticmethod
    def _result(
        params: dict[str, nn.Parameter], total: torch.Tensor, steps: int, n: int, t0: float
    ) -> LocalResult:
        weights = {
            k: p.detach().clone(memory_format=torch.contiguous_format) for k, p in params.items()
        }
        return LocalResult(weights, float(total) / max(steps, 1), n, time.perf_counter() - t0)

    def _train_plan(
        self, module: nn.Module, opt: torch.optim.Optimizer, job: LocalJob, gen: torch.Generator
    ) -> tuple[torch.Tensor, int]:
        """Local SGD with a :class:`StepPlan`: the same batches as without one; at step ``s``
        the units outside ``plan.units[s]`` are masked (FjORD's code: ``models.train``)."""
        plan, sgd = job.plan, self.sgd
        assert plan is not None
        total, steps = torch.zeros((), device=self.device), 0
        idx = job.indices
        expected = -(-len(idx) // sgd.batch_size) * sgd.epochs
        if len(plan.units) != expected:
            raise ValueError(f"a plan of {len(plan.units)} steps for {expected} local steps")
        try:
            for _ in range(sgd.epochs):
                order = idx[torch.randperm(len(idx), generator=gen)]
                for batch in order.split(sgd.batch_size):
                    x, y = self.data.batch(batch)
                    if x.dim() == 4:
                        x = x.contiguous(memory_format=self.format)
                    opt.zero_grad(set_to_none=True)
                    target: torch.Tensor = y
                    if plan.distill:
                        module.unit_masks = None
                        with autocast(self.device, sgd.precision):
                            full = module(x).float()
                        F.cross_entropy(full, y).backward()
                        target = full.detach().softmax(dim=1)
                    module.unit_masks = self._masks(job.units, plan.units[steps])
                    with autocast(self.device, sgd.precision):
                        loss = F.cross_entropy(module(x).float(), target)
                    loss.backward()
                    opt.step()
                    total += loss.detach()
                    steps += 1
        finally:
            module.unit_masks = None
        return total, steps

    def _masks(self, units: dict[str, int], step: dict[str, int]) -> dict[str, torch.Tensor] | None:
        """0/1 masks over each layer's units keeping the first ``step[layer]`` (cached)."""
        if all(step[k] >= units[k] for k in units):
            return None
        cache = self._local.__dict__.setdefault("masks", {})
        key = (tuple(sorted(units.items())), tuple(sorted(step.items())))
        if key not in cache:
            cache[key] = {
                k: (torch.arange(n, device=self.device) < step[k]).float() for k, n in units.items()
            }
        return cache[key]


@torch.inference_mode()
def _evaluate_batches(
    module: nn.Module, data: Samples, batches: list[torch.Tensor], precision: str
) -> torch.Tensor:
    """``[loss sum, correct]`` per batch, kept on the device (no host sync per batch)."""
    device = next(module.parameters()).device
    fmt = memory_format(module)
    out = torch.zeros(len(batches), 2, dtype=torch.float64, device=device)
    for i, batch in enumerate(batches):
        x, y = data.batch(batch)
        if x.dim() == 4:
            x = x.contiguous(memory_format=fmt)
        with autocast(device, precision):
            logits = module(x).float()
        out[i, 0] = F.cross_entropy(logits, y, reduction="sum")
        out[i, 1] = (logits.argmax(1) == y).sum()
    return out


def evaluate(
    module: nn.Module,
    data: Samples,
    batch_size: int,
    precision: str = "fp32",
    modules: list[nn.Module] | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``module`` on all of ``data``.

    With ``modules`` (copies of ``module``, CPU), contiguous runs of batches are evaluated on
    that many threads; per-batch sums are added in batch order, so the result does not depend
    on how many there are.
    """
    return mean_of(batch_sums(module, data, batch_size, precision, modules), len(data))


def batch_sums(
    module: nn.Module,
    data: Samples,
    batch_size: int,
    precision: str = "fp32",
    modules: list[nn.Module] | None = None,
    share: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """``[loss sum, correct]`` per test batch (host, float64) of the ``share[0]``-th of
    ``share[1]`` contiguous runs of batches (a distributed run's processes each take one)."""
    module.eval()
    device = next(module.parameters()).device
    batches = list(torch.arange(len(data), device=device).split(batch_size))
    part, parts = share
    per = -(-len(batches) // parts)
    batches = batches[part * per : (part + 1) * per]
    copies = modules or [module]
    for m in copies:
        m.eval()
    per_copy = -(-len(batches) // len(copies))
    runs = [(m, batches[i * per_copy : (i + 1) * per_copy]) for i, m in enumerate(copies)]
    sums = map_ordered(lambda r: _evaluate_batches(r[0], data, r[1], precision), runs, len(runs))
    return torch.cat(sums).cpu()


def mean_of(sums: torch.Tensor, n: int) -> tuple[float, float]:
    """Mean loss and accuracy from all of the test set's per-batch sums, added in batch order."""
    return float(sums[:, 0].sum()) / n, float(sums[:, 1].sum()) / n


class Evaluator:
    """Evaluates the global weights with its own channels_last copy of the model.

    The global model stays in the standard layout (the codecs, sub-model slicing and
    checkpoints read its tensors as they are); copying 1.7 M weights into this module costs
    far less than the layout saves on 10,000 test images.
    """

    def __init__(
        self,
        model: FLModel,
        data: Samples,
        batch_size: int,
        precision: str = "fp32",
        workers: int = 1,
    ):
        device = next(model.parameters()).device
        workers = workers if device.type == "cpu" else 1
        self.modules = [
            model.with_units(model.units).to(device).to(memory_format=memory_format(model))
            for _ in range(workers)
        ]
        self.data, self.batch_size, self.precision = data, batch_size, precision

    def __call__(self, weights: Params) -> tuple[float, float]:
        return mean_of(self.sums(weights), len(self.data))

    def sums(self, weights: Params, share: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """:func:`batch_sums` of ``weights`` for one ``share`` of the test batches."""
        with torch.no_grad():
            for module in self.modules:
                for name, p in module.named_parameters():
                    p.copy_(weights[name])
        return batch_sums(
            self.modules[0], self.data, self.batch_size, self.precision, self.modules, share
        )
