"""Sample-weighted, mask-aware averaging of client updates (SPEC 1.3).

Each parameter entry is averaged only over the clients whose sub-model contained it, with the
weights n_k renormalised over those clients; entries no client trained keep their value. For
full models this is exactly FedAvg's ``w + sum_k n_k/n * delta_k``.
"""

from __future__ import annotations

import torch

from ..submodel import View, ViewBatch

Params = dict[str, torch.Tensor]


STACK = 32  # clients whose updates add_many stacks into one scatter-add


class MaskedMean:
    """Accumulates ``sum n_k * delta_k`` and ``sum n_k`` per entry, then divides."""

    def __init__(self, like: Params):
        self.num = {k: torch.zeros_like(v) for k, v in like.items()}
        self.den: dict[str, torch.Tensor] | None = None  # per entry; None while all full
        self.total = 0.0
        self._like = like

    def add(self, view: View, update: Params, weight: float) -> None:
        view.add_(self.num, update, alpha=weight)
        if view.is_full and self.den is None:
            self.total += weight
            return
        if self.den is None:  # first partial update: materialise the per-entry weights so far
            self.den = {k: torch.full_like(v, self.total) for k, v in self._like.items()}
        view.add_(self.den, {k: torch.ones_like(v) for k, v in update.items()}, alpha=weight)

    def add_many(self, views: list[View], updates: list[Params], weights: list[float]) -> None:
        """``add`` for a whole round at once: one scatter-add per sub-model shape and parameter.

        Clients are grouped by sub-model shape (``view.units``); each group's updates are
        stacked as ``[C, *sub]`` and scatter-added with their weights by a :class:`ViewBatch`.
        Equal to calling :meth:`add` per client (up to the order of fp additions).
        """
        if not (len(views) == len(updates) == len(weights)):
            raise ValueError("add_many: views, updates and weights differ in length")
        if not views:
            return
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(tuple(v.units[k] for k in sorted(v.units)), []).append(i)
        # at most STACK clients stacked at once: a round of hundreds of clients must not hold
        # a second copy of all their updates
        parts = [m[j : j + STACK] for m in groups.values() for j in range(0, len(m), STACK)]
        batches = [(ViewBatch([views[i] for i in m]), m) for m in parts]
        for batch, members in batches:
            if batch.all_full:  # plain FedAvg sums: no stacked copy of the round's updates
                for i in members:
                    for k, u in updates[i].items():
                        self.num[k].add_(u, alpha=float(weights[i]))
                continue
            stacked = {k: torch.stack([updates[i][k] for i in members]) for k in updates[0]}
            batch.add_(self.num, stacked, [float(weights[i]) for i in members])
        if self.den is None and all(b.all_full for b, _ in batches):
            self.total += float(sum(weights))
            return
        if self.den is None:
            self.den = {k: torch.full_like(v, self.total) for k, v in self._like.items()}
        for batch, members in batches:
            batch.count_(self.den, [float(weights[i]) for i in members])

    def delta(self) -> Params:
        """The mean update itself (zero where no client held an entry), for server optimisers."""
        if self.den is None:
            scale = 1.0 / self.total if self.total > 0 else 0.0
            return {k: v * scale for k, v in self.num.items()}
        return {
            k: torch.where(d > 0, self.num[k] / d.clamp_min(1e-12), 0.0)
            for k, d in self.den.items()
        }

    def apply_(self, weights: Params) -> None:
        """``weights += mean update``, in place; untouched entries stay as they are."""
        for k, w in weights.items():
            if self.den is None:
                if self.total > 0:
                    w.add_(self.num[k], alpha=1.0 / self.total)
            else:
                den = self.den[k]
                w.add_(torch.where(den > 0, self.num[k] / den.clamp_min(1e-12), 0.0))
