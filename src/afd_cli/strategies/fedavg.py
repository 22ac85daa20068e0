"""FedAvg (McMahan et al. 2017): every client gets the full model."""

from __future__ import annotations

from typing import Any

from ..models import FLModel
from ..submodel import View


class FedAvg:
    name = "fedavg"

    def __init__(self, model: FLModel):
        self._full = View(model)

    def select(self, round: int, clients: list[int]) -> list[View]:
        return [self._full] * len(clients)

    def observe(
        self, round: int, clients: list[int], losses: list[float], num_samples: list[int]
    ) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
