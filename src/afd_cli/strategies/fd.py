"""Federated Dropout (Caldas et al., arXiv 1812.07210): independent random sub-models.

Every round, every sampled client gets its own uniformly random ``ceil((1-p) n)`` units per
droppable layer (SPEC 3). The draw is seeded from ``(seed, round, client)`` only, so the
strategy holds no state and a resumed run draws exactly what the uninterrupted run would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..models import FLModel
from ..submodel import View, random_keep
from .base import Stateless

if TYPE_CHECKING:
    from ..config import StrategyConfig
    from ..state import StateStore

FD_TAG = 0xFD  # keeps these streams apart from the trainer's client_seed streams
AFD_TAG = 0xAFD


def generator(seed: int, round: int, client: int | None, tag: int) -> torch.Generator:
    """A fresh torch generator that is a pure function of (seed, round, client, tag)."""
    key = [seed, round, tag] if client is None else [seed, round, client, tag]
    return torch.Generator().manual_seed(int(np.random.default_rng(key).integers(2**62)))


class FederatedDropout(Stateless):
    name = "fd"

    def __init__(self, model: FLModel, rate: float, seed: int):
        self.model, self.rate, self.seed = model, rate, seed
        self._full = View(model)

    @classmethod
    def from_config(
        cls, cfg: StrategyConfig, model: FLModel, seed: int, store: StateStore | None = None
    ) -> FederatedDropout:
        return cls(model, cfg.rate, seed)

    def select(self, round: int, clients: list[int]) -> list[View]:
        if self.rate == 0:
            return [self._full] * len(clients)
        return [
            View(
                self.model,
                random_keep(self.model, self.rate, generator(self.seed, round, c, FD_TAG)),
            )
            for c in clients
        ]
