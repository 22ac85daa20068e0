"""Federated Dropout (Caldas et al., arXiv 1812.07210): independent random sub-models.

Every round, every sampled client gets its own uniformly random ``ceil((1-p) n)`` units per
droppable layer (SPEC 3). The draw is seeded from ``(seed, round, client)`` only, so a resumed
run draws exactly what the uninterrupted run would.

With ``strategy.widths`` each client's rate is ``1 - width`` of its tier
(:mod:`.widths`); left null, every client has ``rate``, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import registry
from ..options import Options, option
from ..submodel import View, random_keep, units_to_keep
from .widths import Sized, WidthOptions

FD_TAG = 0xFD  # keeps these streams apart from the trainer's client_seed streams
AFD_TAG = 0xAFD


def generator(seed: int, round: int, client: int | None, tag: int) -> torch.Generator:
    """A fresh torch generator that is a pure function of (seed, round, client, tag)."""
    key = [seed, round, tag] if client is None else [seed, round, client, tag]
    return torch.Generator().manual_seed(int(np.random.default_rng(key).integers(2**62)))


@dataclass
class DropoutOptions(Options):
    rate: float = option(
        0.25,
        "fraction of units dropped per droppable layer (0.25 as in the papers; 0 = FedAvg)",
        ge=0,
        lt=1,
    )


@dataclass
class SizedDropoutOptions(WidthOptions, DropoutOptions):
    """A dropout rate, and optionally a width (``1 - rate``) per client (:mod:`.widths`)."""


class SizedDropout(Sized):
    """A dropout strategy whose clients may have their own rates: ``1 - width``.

    With ``strategy.widths`` null there is one tier, ``1 - rate``, and every client's rate is
    ``strategy.rate`` itself (so the numbers are exactly those of a fixed rate).
    """

    def default_widths(self) -> tuple[float, ...]:
        return (1.0 - self.opts.rate,)

    def rate_of(self, width: float) -> float:
        return self.opts.rate if self.opts.widths is None else 1.0 - width

    def units_of(self, width: float) -> dict[str, int]:
        rate = self.rate_of(width)
        return {k: units_to_keep(n, rate) for k, n in self.model.units.items()}


@registry.strategy("fd")
class FederatedDropout(SizedDropout):
    options = SizedDropoutOptions

    def select(self, round: int, clients: list[int]) -> list[View]:
        views = []
        for c, w in zip(clients, self.widths(round, clients), strict=True):
            rate = self.rate_of(w)
            if rate <= 0:
                views.append(View(self.model, None, width=1.0))
                continue
            keep = random_keep(self.model, rate, generator(self.seed, round, c, FD_TAG))
            views.append(View(self.model, keep, width=w))
        return views
