"""FedAvg (McMahan et al. 2017): every client gets the full model."""

from __future__ import annotations

from ..models import FLModel
from ..submodel import View
from .base import Stateless


class FedAvg(Stateless):
    name = "fedavg"

    def __init__(self, model: FLModel):
        self._full = View(model)

    def select(self, round: int, clients: list[int]) -> list[View]:
        return [self._full] * len(clients)
