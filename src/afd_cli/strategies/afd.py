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

Widths per client (``strategy.widths``, :mod:`.widths`): a client's rate is ``1 - width``.
Multi: a client's map draws ``A`` with the client's current budget, and redraws it (by its
scores) when the budget changed since ``A`` was drawn. Single: the shared map draws ``A`` at the
round's widest width; a narrower client trains the best-scored units of ``A`` (ties in a seeded
random order), so the round's sub-models are nested, like HeteroFL's but ranked by score.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import registry
from ..options import option
from ..scoremap import SCORE_UPDATES, ScoreMap
from ..submodel import View
from .fd import AFD_TAG, SizedDropout, SizedDropoutOptions, generator

if TYPE_CHECKING:
    from ..registry import Setup

NAMESPACE = "afd"  # the multi maps' namespace in the state store


@dataclass
class AFDOptions(SizedDropoutOptions):
    """Bouacida et al.'s score map (:mod:`afd_cli.scoremap` has the rule and the open choices)."""

    score_init: float = option(
        0.0,
        "initial score (sampling weight) of every unit (0 = paper); a credit sets init + gain",
        ge=0,
    )
    explore: float = option(
        0.0,
        "share of each redraw taken uniformly; 0 = the paper's literal rule (Algorithms 1-2 as "
        "written), which freezes the map after its first improving round; 0.2 was the default "
        "before issue 26 measured both",
        ge=0,
        le=1,
    )
    score_update: str = option(
        "relative",
        "relative: (l_prev - l) / l_prev (paper); absolute: l_prev - l",
        choices=SCORE_UPDATES,
    )


class _AFD(SizedDropout):
    options = AFDOptions

    def __init__(self, opts: AFDOptions, setup: Setup) -> None:
        super().__init__(opts, setup)
        self.rate = opts.rate
        self._opts = {
            "score_init": opts.score_init,
            "explore": opts.explore,
            "score_update": opts.score_update,
        }

    def _new_map(self, rate: float | None = None) -> ScoreMap:
        return ScoreMap(self.model.units, self.rate if rate is None else rate, **self._opts)

    @property
    def plain(self) -> bool:
        """One rate for everyone, zero: FedAvg, no maps."""
        return self.rate == 0 and self.opts.widths is None


@registry.strategy("multi")
class MultiModelAFD(_AFD):
    """One score map per client, kept in the run's :class:`~afd_cli.state.StateStore`
    (namespace ``afd``, float64) so that it is bounded and checkpointed like the compressors'
    per-client state: a map is read from its slot, used, and written back."""

    def __init__(self, opts: AFDOptions, setup: Setup) -> None:
        super().__init__(opts, setup)
        self.store.space(NAMESPACE, self._new_map().flat_size(), torch.float64)

    @property
    def maps(self) -> Mapping[int, ScoreMap]:
        """Read-only ``{client: ScoreMap}`` (copies decoded from the store)."""
        return _Maps(self)

    def _map(self, client: int, rate: float | None = None) -> ScoreMap:
        m = self._new_map(rate)
        if self.store.has(NAMESPACE, client):
            m.load_flat(self.store.peek(NAMESPACE, client))
        return m

    def _keep(self, client: int, m: ScoreMap) -> None:
        self.store.put(NAMESPACE, client, m.to_flat())

    def select(self, round: int, clients: list[int]) -> list[View]:
        if self.plain:
            return [self.full] * len(clients)
        views = []
        for c, w in zip(clients, self.widths(round, clients), strict=True):
            m = self._map(c, self.rate_of(w))
            keep = m.select(generator(self.seed, round, c, AFD_TAG))
            views.append(View(self.model, keep, width=w))
            self._keep(c, m)  # a redraw of A changed the map
        return views

    def observe(
        self, round: int, clients: list[int], losses: list[float], num_samples: list[int]
    ) -> None:
        if self.plain:
            return
        for c, loss in zip(clients, losses, strict=True):
            m = self._map(c)
            m.update(loss)
            self._keep(c, m)

    def state_dict(self) -> dict[str, Any]:
        """``{"maps": {client: map state}}``, or ``{"store": "afd"}`` in a run's store."""
        sized = super().state_dict()
        if not self.store.inline:
            return {"store": NAMESPACE, **sized}
        return {"maps": {c: m.state_dict() for c, m in self.maps.items()}, **sized}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "store" in state:  # the run restored its store from the checkpoint's index
            return
        self.store.clear(NAMESPACE)
        for c, s in state.get("maps", {}).items():
            m = self._new_map()
            m.load_state_dict(s)
            self._keep(int(c), m)


class _Maps(Mapping[int, ScoreMap]):
    """The score maps of a :class:`MultiModelAFD`, read from its store."""

    def __init__(self, owner: MultiModelAFD) -> None:
        self._owner = owner

    def __getitem__(self, client: int) -> ScoreMap:
        if not self._owner.store.has(NAMESPACE, client):
            raise KeyError(client)
        return self._owner._map(client)

    def __iter__(self) -> Iterator[int]:
        return iter(self._owner.store.clients(NAMESPACE))

    def __len__(self) -> int:
        return len(self._owner.store.clients(NAMESPACE))


@registry.strategy("single")
class SingleModelAFD(_AFD):
    def __init__(self, opts: AFDOptions, setup: Setup) -> None:
        super().__init__(opts, setup)
        self.map = self._new_map()

    def select(self, round: int, clients: list[int]) -> list[View]:
        if self.plain:
            return [self.full] * len(clients)
        widths = self.widths(round, clients)
        widest = max(widths)
        self.map.set_rate(self.rate_of(widest))
        keep = self.map.select(generator(self.seed, round, None, AFD_TAG))
        view = View(self.model, keep, width=widest)
        if all(w == widest for w in widths):
            return [view] * len(clients)
        order = self._ranked(keep, round)
        views: dict[float, View] = {widest: view}
        for w in set(widths) - {widest}:
            budget = self._new_map(self.rate_of(w)).budget
            views[w] = View(self.model, {k: order[k][: budget[k]] for k in order}, width=w)
        return [views[w] for w in widths]

    def _ranked(self, keep: dict[str, torch.Tensor], round: int) -> dict[str, torch.Tensor]:
        """The units of ``A`` per layer, best score first, ties in a random order seeded from
        ``(seed, round)`` (its own stream: the map's draws stay those of one width)."""
        gen = generator(self.seed, round, None, AFD_TAG + 1)
        out = {}
        for k, idx in keep.items():
            shuffled = idx[torch.randperm(len(idx), generator=gen)]
            scores = self.map.scores[k][shuffled]
            out[k] = shuffled[torch.sort(scores, descending=True, stable=True).indices]
        return out

    def observe(
        self, round: int, clients: list[int], losses: list[float], num_samples: list[int]
    ) -> None:
        if self.plain or not clients:
            return
        self.map.update(float(np.average(losses, weights=num_samples)))

    def state_dict(self) -> dict[str, Any]:
        return {"map": self.map.state_dict(), **super().state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.map = self._new_map()
        if "map" in state:
            self.map.load_state_dict(state["map"])
