"""FLOPs of local training: what a client's device computes, for the simulated clock.

A client trains its (sub-)model for ``epochs`` passes over its ``samples``. The FLOPs of one
training sample (forward + backward, as ``torch.utils.flop_counter.FlopCounterMode`` counts
them: 2 per multiply-add of every matmul and convolution, the backward pass only for the
gradients it needs) are counted once per sub-model shape on one real input and cached, so
nothing is counted per client or per round. Every model here is linear in the batch size, so
a client's FLOPs are exactly ``per_sample * samples * epochs``.

``nn.LSTM`` runs as one fused op that FlopCounterMode does not count; ``char_lstm`` is counted
through the functional LSTM of the batched trainer instead (same gates, same matmuls).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from .models import FLModel
from .models.char_lstm import CharLSTM

if TYPE_CHECKING:
    from .federated.client import StepPlan


def training_flops(module: FLModel, x: torch.Tensor) -> int:
    """FLOPs of one forward + backward pass of ``module`` on the batch ``x`` (cross-entropy)."""
    params = dict(module.named_parameters())
    if type(module) is CharLSTM:
        from .federated.batched import char_lstm_forward

        forward = char_lstm_forward(module)
    else:
        forward = None
    with FlopCounterMode(display=False) as counter:
        logits = forward(params, x) if forward is not None else module(x)
        F.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long)).backward()
    return int(counter.get_total_flops())


class TrainingCost:
    """Local steps and FLOPs of a client's training, per sub-model shape (counted once).

    ``example`` is one training input (a batch of one sample, any device); counting runs on
    a fresh CPU copy of the sub-model, never on the trained modules.
    """

    def __init__(self, model: FLModel, example: torch.Tensor, epochs: int, batch_size: int):
        self.model, self.epochs, self.batch_size = model, epochs, batch_size
        self.example = example[:1].detach().cpu()
        self._per_sample: dict[tuple[int, ...], int] = {}

    def per_sample(self, units: dict[str, int]) -> int:
        """Training FLOPs of one sample for the sub-model with these unit counts."""
        key = tuple(units[k] for k in sorted(units))
        if key not in self._per_sample:
            module = self.model.with_units(units)  # a fresh CPU module; weights do not matter
            self._per_sample[key] = training_flops(module, self.example)
        return self._per_sample[key]

    def flops(self, units: dict[str, int], samples: int) -> int:
        return self.per_sample(units) * samples * self.epochs

    def plan_flops(self, plan: StepPlan, units: dict[str, int], samples: int) -> int:
        """FLOPs of local training by a :class:`~afd_cli.federated.client.StepPlan`: each
        step's batch (``B`` samples, the epoch's last one ``samples % B``) at that step's
        units, plus the whole sub-model's pass (``units``) with self-distillation."""
        sizes = [self.batch_size] * (samples // self.batch_size)
        if samples % self.batch_size:
            sizes.append(samples % self.batch_size)
        sizes = sizes * self.epochs
        if len(sizes) != len(plan.units):
            raise ValueError(f"a plan of {len(plan.units)} steps for {len(sizes)} local steps")
        total = sum(self.per_sample(u) * n for u, n in zip(plan.units, sizes, strict=True))
        if plan.distill:
            total += self.per_sample(units) * samples * self.epochs
        return total

    def steps(self, samples: int) -> int:
        """SGD steps: ``ceil(samples / B)`` batches per epoch (a short last batch counts)."""
        return math.ceil(samples / self.batch_size) * self.epochs
