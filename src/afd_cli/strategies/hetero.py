"""Model-heterogeneous training: sub-models sized to each client (HeteroFL, FjORD, FedRolex).

Each client gets a *width* (:mod:`.widths`: tiers, shares, fixed / per round / from the
clock) and trains a sub-model with ``ceil(width * units)`` units of every droppable layer;
the output layer stays whole. They differ in which units:

* :class:`HeteroFL` (Diao et al., ICLR 2021): the first ``ceil(w * K)`` units of each layer
  (``fed.py``, ``Federation.split_model``: ``torch.arange(output_size)[:local_output_size]``),
  so the sub-models are nested.
* :class:`FedRolex` (Alam et al., NeurIPS 2022): a rolling window. In round ``t`` (0-based)
  a layer of ``K`` units keeps ``torch.roll(arange(K), t % K)[:ceil(w * K)]``
  (``resnet_server.py``, ``ResnetServerRoll.split_model``, ``overlap=None``): the window
  starts at unit ``(K - t % K) % K`` and wraps around; the round's clients share the start
  and differ only in width.
* :class:`FjORD` (Horvath et al., NeurIPS 2021): the nested prefixes of HeteroFL, and
  ordered dropout in local training: at every local step a width ``p`` is drawn uniformly
  from the tiers no wider than the client's (Flower's baseline, ``od/samplers/fixed_od.py``)
  and only the first ``ceil(p * K)`` units train in that step (:class:`~afd_cli.federated.
  client.StepPlan`). With ``strategy.distill`` each step first trains the client's widest
  sub-model on the labels, then the drawn width on its softmax (``models.py``, ``train``).

Aggregation is the run's mask-aware mean (:class:`~afd_cli.federated.aggregate.MaskedMean`):
every entry is averaged over the clients whose sub-model held it, and entries no client
trained in the round keep their value, as in all three codes. The three codes average the
*weights* of those clients; ours adds the sample-weighted mean update, which is FjORD's
weighting (``strategy.py``, ``fjord_average``) and, with equal sample counts, HeteroFL's and
FedRolex's plain mean (they count clients; FedRolex's code weights biases and the output
layer otherwise, see ``tests/test_hetero_reference.py``).

What we leave out, because our models have no normalisation layers: HeteroFL's static batch
norm and FjORD's per-width batch norm. HeteroFL's *scaler* (outputs divided by the width in
training, ``modules.Scaler``) exists to keep the next normalisation's statistics comparable
across widths; without normalisation a ReLU network's next layer sees proportionally smaller
inputs from a narrower layer either way, so we train and evaluate unscaled, as FjORD does.
Both reference codes also mask the output layer to each client's labels (``label_split``);
here the output layer is aggregated whole, like every other strategy's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import registry
from ..federated.client import StepPlan
from ..options import option
from ..submodel import View, prefix_keep, units_at_width
from .fd import generator
from .widths import ASSIGN, EVAL_WIDTHS, Sized, WidthOptions, _widths_ok

if TYPE_CHECKING:
    from ..registry import Setup

FJORD_TAG = 0xF70D  # FjORD's per-step widths: a stream of their own
FJORD_TIERS = (0.2, 0.4, 0.6, 0.8, 1.0)  # Flower's baseline, conf/common.yaml p_s


def _widths(default: str) -> list[float] | None:
    return option(
        None,
        f"the width tiers (share of each layer's units kept), or with assign=listed one width "
        f"per client; null = {default}",
        test=_widths_ok,
        expected="a list of numbers in (0, 1]",
    )


@dataclass
class HeteroOptions(WidthOptions):
    """HeteroFL's and FedRolex's keys (the width keys of :mod:`.widths`)."""

    widths: list[float] | None = _widths("HeteroFL's 1, 1/2, 1/4, 1/8, 1/16")

    eval_widths: str = option(
        "last",
        "test each tier's sub-model too (widths.csv): off, at the last round, or every evaluation",
        choices=EVAL_WIDTHS,
    )


@dataclass
class RolexOptions(HeteroOptions):
    assign: str = option(
        "per_round",
        "fixed: a client keeps its tier; per_round: redrawn each round (FedRolex's runs); "
        "device: from the clock (widest tier that fits network.deadline_s, else by speed "
        "quantile); listed: widths[i] is client i's",
        choices=ASSIGN,
    )


@dataclass
class FjORDOptions(HeteroOptions):
    widths: list[float] | None = _widths("FjORD's 0.2, 0.4, 0.6, 0.8, 1")
    distill: bool = option(
        False, "self-distillation: each step also trains the client's widest sub-model"
    )


class _Nested(Sized):
    """Sub-models of ``ceil(w * K)`` units per layer; a width of 1 is the full model."""

    def __init__(self, opts: WidthOptions, setup: Setup) -> None:
        super().__init__(opts, setup)
        self._views: dict[float, View] = {}

    def keep(self, round: int, width: float) -> dict[str, torch.Tensor]:
        return prefix_keep(self.model, width)

    def view(self, round: int, width: float) -> View:
        if width >= 1:
            return View(self.model, None, width=1.0)
        return View(self.model, self.keep(round, width), width=width)

    def select(self, round: int, clients: list[int]) -> list[View]:
        widths = self.widths(round, clients)
        views = {w: self.view(round, w) for w in set(widths)}
        return [views[w] for w in widths]


@registry.strategy("heterofl")
class HeteroFL(_Nested):
    """Nested prefixes: every client trains the first ``ceil(w * K)`` units of each layer."""

    options = HeteroOptions


@registry.strategy("fedrolex")
class FedRolex(_Nested):
    """A rolling window: round ``t`` keeps ``roll(arange(K), t % K)[:ceil(w * K)]``."""

    options = RolexOptions

    def keep(self, round: int, width: float) -> dict[str, torch.Tensor]:
        return {
            name: torch.roll(torch.arange(n), round % n, -1)[: units_at_width(n, width)]
            for name, n in self.model.units.items()
        }


@registry.strategy("fjord")
class FjORD(_Nested):
    """Nested prefixes, and a width per local step up to the client's (ordered dropout)."""

    options = FjORDOptions
    plans_steps = True
    default_tiers = FJORD_TIERS

    def step_widths(self, width: float) -> list[float]:
        """The widths a client of this width draws from: every tier no wider (FjORD's
        ``p_s`` up to ``max_p``), ascending as in its sampler."""
        return sorted(w for w in set(self.per_client or self.tiers) if w <= width)

    def local_plan(self, round: int, client: int, view: View, steps: int) -> StepPlan:
        allowed = self.step_widths(view.width)
        gen = generator(self.seed, round, client, FJORD_TAG)
        draws = torch.randint(len(allowed), (steps,), generator=gen).tolist()
        units = {w: self.units_of(w) for w in allowed}
        return StepPlan([units[allowed[i]] for i in draws], distill=self.opts.distill)

    def flops_of(self, width: float, samples: int) -> int:
        """The expected FLOPs: the mean over the step widths, plus the widest pass with
        self-distillation (what the clock will charge, on average)."""
        assert self.cost is not None
        allowed = self.step_widths(width)
        flops = float(np.mean([self.cost.flops(self.units_of(w), samples) for w in allowed]))
        if self.opts.distill:
            flops += self.cost.flops(self.units_of(width), samples)
        return round(flops)
