"""Local training of a round's clients together, as one stacked computation per sub-model shape.

Why: batching is a GPU lever. A round trains up to a hundred small models on small batches;
one at a time, a GPU spends its time launching tiny kernels. Stacking the clients' weights as
``[C, ...]`` tensors and mapping one module over them with :func:`torch.func.vmap` turns C
small steps into one big one (issue 11 quotes ~14x a sequential loop for 100 clients on an
H100). On this 2-core CPU cnn_mnist ran at 0.6x of the sequential trainer (vmapped
convolutions become grouped ones; ``make benchmark``, e), so ``trainer=auto`` picks
sequential on CPU.

What it computes is exactly what :class:`~.client.SequentialTrainer` computes, up to fp32
rounding (tests check it):

* Jobs are grouped by sub-model shape (``job.units``); sub-models of one rate share shapes
  even though they keep different units. One module per shape is built once and used through
  :func:`torch.func.functional_call` with each client's stacked weights.
* A client's batches are the sequential ones: ``gen = Generator().manual_seed(job.seed)``,
  each epoch ``order = indices[randperm(n, generator=gen)]`` cut into ``batch_size`` pieces.
  Its steps are its batches of all epochs in order; step ``t`` of the stacked computation is
  step ``t`` of every client that has one. Batches are padded to ``[C, batch_size]`` with a
  validity mask: a short last batch averages its loss over its real samples only, and a
  client whose batches have run out (fewer samples than others) does not move at that step
  (weights and momentum buffer unchanged, no weight decay).
* SGD is torch.optim.SGD's (dampening 0, no Nesterov) on stacked tensors:
  ``g = grad + wd * w``; ``buf = g`` at a client's first step, else ``momentum * buf + g``;
  ``w -= lr * buf`` (``w -= lr * g`` without momentum).
* A client's loss is the mean of its own steps' batch losses (what AFD's score map reads).
  A client without samples (partitions never make one) keeps its weights and gets loss 0,
  where the sequential loop would take one step on an empty batch with a NaN loss.
* ``chunk`` clients are trained together at most (``None``: on CUDA as many as fit in about
  half of the free memory, measured with a one-client probe step; on CPU 32). Chunking does
  not change the numbers: clients never interact.
* ``char_lstm``: ``nn.LSTM`` has no vmap batching rule, so :class:`~..models.CharLSTM` runs
  a functional LSTM (same gate order and equations, zero initial state). Any other model
  with a recurrent module falls back to the sequential trainer, with a one-line note.
* ``precision=bf16`` autocasts the forward pass; the loss is computed in fp32.

Loss sums stay on the device; the only host syncs are one per chunk (the per-client losses).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from ..data import Samples
from ..models import FLModel
from ..models.char_lstm import CharLSTM
from ..models.char_lstm import lstm_layer as _lstm_layer
from .client import LocalJob, LocalResult, LocalSGD, Params, SequentialTrainer, autocast

CPU_CHUNK = 32  # clients trained together on CPU when chunk is None
MEMORY_SHARE = 0.5  # share of the available GPU memory the auto chunk plans to use

Forward = Callable[[Params, torch.Tensor], torch.Tensor]
StepFn = Callable[..., tuple[Params, torch.Tensor]]


def _key(units: dict[str, int]) -> tuple[int, ...]:
    return tuple(units[k] for k in sorted(units))


def char_lstm_forward(model: CharLSTM) -> Forward:
    """``CharLSTM.forward`` as a function of its parameters (``nn.LSTM`` cannot be vmapped)."""
    layers = model.num_layers

    def forward(p: Params, x: torch.Tensor) -> torch.Tensor:
        h = F.embedding(x, p["embed.weight"])
        for i in range(layers):
            w = [p[f"lstms.{i}.{n}_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            h = _lstm_layer(h, *w, sequence=i < layers - 1)
        return F.linear(h, p["fc.weight"], p["fc.bias"])

    return forward


def chunk_from_memory(available: int, per_client: int, clients: int) -> int:
    """Clients that fit in ``MEMORY_SHARE`` of ``available`` bytes, at least 1, at most all."""
    fit = int(available * MEMORY_SHARE) // max(per_client, 1)
    return max(1, min(clients, fit))


class BatchedTrainer:
    """Trains the round's clients together with vmap (:class:`SequentialTrainer`'s numbers)."""

    def __init__(
        self,
        model: FLModel,
        data: Samples,
        sgd: LocalSGD,
        *,
        device: torch.device,
        chunk: int | None = None,
    ):
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 or None, got {chunk}")
        self.model, self.data, self.sgd = model, data, sgd
        self.device, self.chunk = torch.device(device), chunk
        self._steps: dict[tuple[int, ...], tuple[list[str], StepFn]] = {}
        self._per_client: dict[tuple[int, ...], int] = {}  # probed bytes per client (CUDA)
        self._sequential: SequentialTrainer | None = None
        recurrent = any(isinstance(m, nn.RNNBase) for m in model.modules())
        self.batched = type(model) is CharLSTM or not recurrent

    # -- building blocks ---------------------------------------------------------------------

    def step_for(self, units: dict[str, int]) -> tuple[list[str], StepFn]:
        """Parameter names and the vmapped (grads, loss) function for one sub-model shape."""
        key = _key(units)
        if key not in self._steps:
            module = self.model.with_units(units).to(self.device).train()
            names = [n for n, _ in module.named_parameters()]
            if type(module) is CharLSTM:
                forward = char_lstm_forward(module)
            else:

                def forward(p: Params, x: torch.Tensor, module: nn.Module = module):
                    return functional_call(module, p, (x,))

            device, precision = self.device, self.sgd.precision

            def loss_fn(p: Params, x, y, valid, count) -> torch.Tensor:
                with autocast(device, precision):
                    out = forward(p, x)
                per = F.cross_entropy(out.float(), y, reduction="none")
                return torch.where(valid, per, 0.0).sum() / count

            self._steps[key] = (names, vmap(grad_and_value(loss_fn)))
        return self._steps[key]

    def schedule(self, jobs: list[LocalJob]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Padded batch indices ``[T, C, B]``, their validity mask, and each client's steps.

        Client ``c``'s step ``t`` is its ``t``-th batch over all epochs, cut exactly as
        SequentialTrainer cuts it; rows past a client's last step are all invalid.
        """
        b, epochs = self.sgd.batch_size, self.sgd.epochs
        rows, masks = [], []
        for job in jobs:
            idx = job.indices.cpu()
            n = len(idx)
            k = -(-n // b)  # batches per epoch
            gen = torch.Generator().manual_seed(job.seed)
            valid = (torch.arange(k * b) < n).view(k, b)
            for _ in range(epochs):
                order = idx[torch.randperm(n, generator=gen)]
                padded = torch.zeros(k * b, dtype=torch.long)
                padded[:n] = order
                rows.append(padded.view(k, b))
                masks.append(valid)
        steps = [(-(-len(job.indices) // b)) * epochs for job in jobs]
        total = max(steps, default=0)
        index = torch.zeros(total, len(jobs), b, dtype=torch.long)
        valid = torch.zeros(total, len(jobs), b, dtype=torch.bool)
        for c, s in enumerate(steps):
            if s:
                mine = slice(c * epochs, (c + 1) * epochs)
                index[:s, c] = torch.cat(rows[mine])
                valid[:s, c] = torch.cat(masks[mine])
        return index, valid, steps

    def chunk_size(self, job: LocalJob, clients: int) -> int:
        """``chunk``, or an estimate of how many clients of ``job``'s shape fit on the device."""
        if self.chunk is not None:
            return min(self.chunk, clients)
        if self.device.type != "cuda":
            return min(CPU_CHUNK, clients)
        key = _key(job.units)
        if key not in self._per_client:
            self._per_client[key] = self._probe(job)
        free, _ = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return chunk_from_memory(free + cached, self._per_client[key], clients)

    def _probe(self, job: LocalJob) -> int:
        """Bytes one client needs: a measured one-client step (activations, grads, temporaries)
        plus its stacked weights, momentum buffer and updated weights."""
        names, step = self.step_for(job.units)
        w = {k: job.weights[k].to(self.device)[None] for k in names}
        weight_bytes = sum(t.numel() * t.element_size() for t in w.values())
        index, valid, _ = self.schedule([job])
        if not len(index):
            return 4 * weight_bytes
        index, valid = index[0].to(self.device), valid[0].to(self.device)  # [1, B]
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        x, y = self.data.batch(index.reshape(-1))
        x, y = x.reshape(1, -1, *x.shape[1:]), y.reshape(1, -1)
        grads, loss = step(w, x, y, valid, valid.sum(-1).float())
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - before
        del grads, loss, x, y
        return peak + 3 * weight_bytes

    # -- training ----------------------------------------------------------------------------

    def train(
        self, jobs: list[LocalJob], on_done: Callable[[], None] | None = None
    ) -> list[LocalResult]:
        if not self.batched:
            return self._fallback().train(jobs, on_done)
        results: list[LocalResult | None] = [None] * len(jobs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(_key(job.units), []).append(i)
        for members in groups.values():
            size = self.chunk_size(jobs[members[0]], len(members))
            for start in range(0, len(members), size):
                part = members[start : start + size]
                for i, result in zip(part, self.train_chunk([jobs[i] for i in part]), strict=True):
                    results[i] = result
                    if on_done:
                        on_done()
        return results  # type: ignore[return-value]

    def train_chunk(self, jobs: list[LocalJob]) -> list[LocalResult]:
        """Train jobs of one sub-model shape together; one result per job, in order."""
        t0 = time.perf_counter()
        dev, n = self.device, len(jobs)
        names, step = self.step_for(jobs[0].units)
        w = {k: torch.stack([job.weights[k].to(dev) for job in jobs]) for k in names}
        index, valid, steps = self.schedule(jobs)
        total = len(index)
        active = torch.arange(total)[:, None] < torch.tensor(steps)[None, :]  # [T, C], host
        all_active = active.all(1).tolist()
        index, valid, active = index.to(dev), valid.to(dev), active.to(dev)
        count = valid.sum(-1).clamp(min=1).float()  # real samples per client and step
        loss_sum = torch.zeros(n, device=dev)
        mom, wd = self.sgd.momentum, self.sgd.weight_decay
        lr = self.sgd.lr * jobs[0].lr_scale  # one round's jobs: one warm-up scale
        buf: Params = {}
        for t in range(total):
            x, y = self.data.batch(index[t].reshape(-1))
            x, y = x.reshape(n, -1, *x.shape[1:]), y.reshape(n, -1)
            grads, loss = step(w, x, y, valid[t], count[t])
            loss_sum += loss  # an idle client's masked loss is exactly 0
            for k in names:
                p, g = w[k], grads[k]
                if wd:
                    g = g.add(p, alpha=wd)
                if mom:
                    g = g if t == 0 else buf[k].mul(mom).add_(g)
                new = p.add(g, alpha=-lr)
                if not all_active[t]:
                    on = active[t].view(n, *[1] * (p.dim() - 1))
                    new = torch.where(on, new, p)
                    if mom and t > 0:
                        g = torch.where(on, g, buf[k])
                w[k] = new
                if mom:
                    buf[k] = g
        losses = loss_sum.tolist()  # the one host sync of the chunk
        seconds = (time.perf_counter() - t0) / n
        return [
            LocalResult(
                {k: w[k][c].contiguous() for k in names},
                losses[c] / max(steps[c], 1),
                len(job.indices),
                seconds,
            )
            for c, job in enumerate(jobs)
        ]

    def _fallback(self) -> SequentialTrainer:
        if self._sequential is None:
            name = type(self.model).__name__
            print(
                f"note: {name} has a recurrent layer vmap cannot batch; "
                "training its clients sequentially",
                file=sys.stderr,
            )
            self._sequential = SequentialTrainer(
                self.model, self.data, self.sgd, device=self.device
            )
        return self._sequential
