"""FedAvg (McMahan et al. 2017): every client gets the full model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..models import FLModel
from ..submodel import View
from .base import Stateless

if TYPE_CHECKING:
    from ..config import StrategyConfig
    from ..state import StateStore


class FedAvg(Stateless):
    name = "fedavg"

    def __init__(self, model: FLModel):
        self._full = View(model)

    @classmethod
    def from_config(
        cls, cfg: StrategyConfig, model: FLModel, seed: int, store: StateStore | None = None
    ) -> FedAvg:
        return cls(model)  # no randomness, no options

    def select(self, round: int, clients: list[int]) -> list[View]:
        return [self._full] * len(clients)
