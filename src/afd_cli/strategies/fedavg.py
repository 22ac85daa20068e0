"""FedAvg (McMahan et al. 2017): every client gets the full model."""

from __future__ import annotations

from .. import registry
from ..submodel import View
from .base import Strategy


@registry.strategy("fedavg")
class FedAvg(Strategy):
    """No options, no state, no randomness: the identity view for every client."""

    def select(self, round: int, clients: list[int]) -> list[View]:
        return [self.full] * len(clients)
