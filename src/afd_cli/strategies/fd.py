"""Federated Dropout (Caldas et al., arXiv 1812.07210): independent random sub-models.

Every round, every sampled client gets its own uniformly random ``ceil((1-p) n)`` units per
droppable layer (SPEC 3). The draw is seeded from ``(seed, round, client)`` only, so the
strategy holds no state and a resumed run draws exactly what the uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import registry
from ..options import Options, option
from ..submodel import View, random_keep
from .base import Strategy

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


@registry.strategy("fd")
class FederatedDropout(Strategy):
    options = DropoutOptions

    def select(self, round: int, clients: list[int]) -> list[View]:
        rate = self.opts.rate
        if rate == 0:
            return [self.full] * len(clients)
        return [
            View(self.model, random_keep(self.model, rate, generator(self.seed, round, c, FD_TAG)))
            for c in clients
        ]
