"""Adaptive Federated Dropout (Bouacida et al., arXiv 2011.04050), both variants.

* :class:`MultiModelAFD` (paper Algorithm 1): one :class:`~afd_cli.scoremap.ScoreMap` per
  client, created the first time the client is sampled (maps exist only for clients seen).
  Each client's sub-model comes from its own map; after the round its map is updated from
  that client's local training loss against its loss the previous time it was sampled.
* :class:`SingleModelAFD` (paper Algorithm 2): one shared map; all clients of a round get
  the same sub-model; the map is updated from the round's sample-weighted mean training loss
  against the previous round's.

The selection / score rule itself is in :mod:`afd_cli.scoremap`. Randomness: a map draws
with a generator seeded from ``(seed, round, client)`` (multi) or ``(seed, round)`` (single),
so a run resumed from :meth:`state_dict` continues identically. With ``rate == 0`` both
return the full model and keep no maps, i.e. they are FedAvg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..models import FLModel
from ..scoremap import ScoreMap
from ..submodel import View
from .fd import AFD_TAG, generator

if TYPE_CHECKING:
    from ..config import StrategyConfig


class _AFD:
    name = "afd"

    def __init__(
        self,
        model: FLModel,
        rate: float,
        seed: int,
        *,
        score_init: float = 0.0,
        explore: float = 0.0,
        score_update: str = "relative",
    ):
        self.model, self.rate, self.seed = model, rate, seed
        self._opts = {"score_init": score_init, "explore": explore, "score_update": score_update}
        self._full = View(model)

    @classmethod
    def from_config(cls, cfg: StrategyConfig, model: FLModel, seed: int) -> _AFD:
        return cls(
            model,
            cfg.rate,
            seed,
            score_init=cfg.score_init,
            explore=cfg.explore,
            score_update=cfg.score_update,
        )

    def _new_map(self) -> ScoreMap:
        return ScoreMap(self.model.units, self.rate, **self._opts)


class MultiModelAFD(_AFD):
    name = "multi"

    def __init__(self, model: FLModel, rate: float, seed: int, **opts: Any):
        super().__init__(model, rate, seed, **opts)
        self.maps: dict[int, ScoreMap] = {}

    def _map(self, client: int) -> ScoreMap:
        if client not in self.maps:
            self.maps[client] = self._new_map()
        return self.maps[client]

    def select(self, round: int, clients: list[int]) -> list[View]:
        if self.rate == 0:
            return [self._full] * len(clients)
        return [
            View(self.model, self._map(c).select(generator(self.seed, round, c, AFD_TAG)))
            for c in clients
        ]

    def observe(
        self, round: int, clients: list[int], losses: list[float], num_samples: list[int]
    ) -> None:
        if self.rate == 0:
            return
        for c, loss in zip(clients, losses, strict=True):
            self._map(c).update(loss)

    def state_dict(self) -> dict[str, Any]:
        return {"maps": {int(c): m.state_dict() for c, m in self.maps.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.maps = {}
        for c, s in state.get("maps", {}).items():
            self._map(int(c)).load_state_dict(s)


class SingleModelAFD(_AFD):
    name = "single"

    def __init__(self, model: FLModel, rate: float, seed: int, **opts: Any):
        super().__init__(model, rate, seed, **opts)
        self.map = self._new_map()

    def select(self, round: int, clients: list[int]) -> list[View]:
        if self.rate == 0:
            return [self._full] * len(clients)
        view = View(self.model, self.map.select(generator(self.seed, round, None, AFD_TAG)))
        return [view] * len(clients)

    def observe(
        self, round: int, clients: list[int], losses: list[float], num_samples: list[int]
    ) -> None:
        if self.rate == 0 or not clients:
            return
        self.map.update(float(np.average(losses, weights=num_samples)))

    def state_dict(self) -> dict[str, Any]:
        return {"map": self.map.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.map = self._new_map()
        if "map" in state:
            self.map.load_state_dict(state["map"])
