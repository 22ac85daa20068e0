"""The activation score map of Adaptive Federated Dropout (Bouacida et al., arXiv 2011.04050).

One :class:`ScoreMap` is the server's memory about one sub-model lineage: a real score per unit
(filter, neuron, LSTM hidden unit) of every droppable layer, the currently kept set ``A`` and
the loss ``l`` seen the last time the map was updated. Multi-Model AFD (paper Algorithm 1)
keeps one map per client, Single-Model AFD (Algorithm 2) one map for everyone; the rule below
is the same for both and lives only here.

The rule (paper Sec. "Adaptive Federated Dropout" / Algorithms 1-2, SPEC 4):

* first selection: ``A`` = a uniformly random ``ceil((1-p) n)`` units per layer (as FD);
* ``update(l_t)``: if ``l_t < l``: ``S[a] = (l - l_t) / l`` for every ``a`` in ``A``
  (``score_update="absolute"``: ``l - l_t``; plus ``score_init``, 0 in the paper) and ``A`` is
  kept for the next selection;
  otherwise ``A`` is dropped and the next selection redraws it by *weighted random selection*;
  either way ``l = l_t``. Scores of units outside ``A`` never change, and a loss increase
  does not lower any score (the paper only assigns scores on a decrease).
* weighted random selection, per layer, exactly ``budget`` units: units with a non-zero
  score are drawn without replacement with probability proportional to their score
  (``torch.multinomial``), the rest of the budget is filled uniformly at random from the
  units not yet drawn.

Choices where the paper is vague (each one a config option or documented here; the table in
docs/concepts/algorithms.md says what each outside implementation does):

* the very first ``update`` has no previous loss: it only records ``l`` and counts as
  "not improved", so ``A`` is redrawn (with all scores still 0 that redraw is uniform).
* ``explore`` (``AFDOptions`` default 0, the paper's literal rule; it was 0.2 until the
  measurement in docs/results/afd-rule.md): that share of each layer's budget is always drawn
  uniformly on a redraw, whatever the scores. Without it the literal rule freezes: once one
  improvement has given the whole of ``A`` a non-zero score, every redraw draws exactly ``A``
  again, because the number of scored units equals the budget.
* ``score_init`` (default 0 = paper): the initial score of every unit. A positive value
  makes every unit a weighted candidate (another way to keep exploring). A credit
  *overwrites* a kept unit's score with ``score_init + gain`` (with 0, the paper's
  ``S[a] = gain``), so a credited unit always outweighs an uncredited one.
* a relative update with ``l <= 0`` (a perfect previous loss) falls back to ``l - l_t``.

The redraw happens lazily in :meth:`ScoreMap.select`, with the caller's generator, so all
randomness is a pure function of the generator the strategy seeds from ``(seed, round,
client)``; a resumed run continues identically.
"""

from __future__ import annotations

from typing import Any

import torch

from .submodel import units_to_keep

Keep = dict[str, torch.Tensor]
SCORE_UPDATES = ("relative", "absolute")


def weighted_keep(
    scores: torch.Tensor, budget: int, gen: torch.Generator, explore: float = 0.0
) -> torch.Tensor:
    """Exactly ``budget`` distinct unit indices: scored units by weight, the rest uniform.

    ``floor((1 - explore) * budget)`` draws at most go to units with a non-zero score
    (without replacement, probability proportional to score); the remainder is a uniform
    draw from the units not yet chosen.
    """
    n = scores.numel()
    scored = scores > 0
    weighted_max = int((1.0 - explore) * budget + 1e-9)
    k = min(weighted_max, int(scored.sum()))
    chosen = torch.zeros(n, dtype=torch.bool)
    if k > 0:
        picked = torch.multinomial(
            scores.clamp(min=0).double(), k, replacement=False, generator=gen
        )
        chosen[picked] = True
    rest = (~chosen).nonzero().flatten()
    fill = rest[torch.randperm(len(rest), generator=gen)[: budget - k]]
    chosen[fill] = True
    return chosen.nonzero().flatten()


class ScoreMap:
    """Scores per unit, the kept set ``A`` and the last loss ``l``: one AFD sub-model lineage."""

    def __init__(
        self,
        units: dict[str, int],
        rate: float,
        *,
        score_init: float = 0.0,
        explore: float = 0.0,
        score_update: str = "relative",
    ):
        if score_update not in SCORE_UPDATES:
            raise ValueError(f"score_update={score_update!r}; choose one of {SCORE_UPDATES}")
        if score_init < 0:
            raise ValueError("score_init must be >= 0 (scores are sampling weights)")
        self.units = dict(units)
        self.budget = {k: units_to_keep(n, rate) for k, n in units.items()}
        self.explore, self.score_update = explore, score_update
        self.score_init = float(score_init)
        self.scores = {
            k: torch.full((n,), float(score_init), dtype=torch.float64) for k, n in units.items()
        }
        self.keep: Keep | None = None  # A; None = draw a new one at the next select
        self.last_loss: float | None = None

    def set_rate(self, rate: float) -> None:
        """Another budget (a client's or a round's width changed): the next :meth:`select`
        redraws ``A`` by the scores if its size no longer fits."""
        self.budget = {k: units_to_keep(n, rate) for k, n in self.units.items()}

    def select(self, gen: torch.Generator) -> Keep:
        """The kept units ``A``: the retained set, or a fresh weighted random draw (also when
        the budget changed since ``A`` was drawn)."""
        if self.keep is not None and any(len(v) != self.budget[k] for k, v in self.keep.items()):
            self.keep = None
        if self.keep is None:
            self.keep = {
                k: weighted_keep(s, self.budget[k], gen, self.explore)
                for k, s in self.scores.items()
            }
        return {k: v.clone() for k, v in self.keep.items()}

    def update(self, loss: float) -> bool:
        """Credit ``A`` with the loss decrease and keep it, or mark it for a redraw.

        Returns whether the loss improved. Call after the round that trained ``A``.
        """
        prev, self.last_loss = self.last_loss, float(loss)
        improved = prev is not None and loss < prev  # NaN compares False: a redraw
        if improved and self.keep is not None:
            gain = prev - loss
            if self.score_update == "relative" and prev > 0:
                gain /= prev
            for k, idx in self.keep.items():  # overwrite, above the uncredited units' init
                self.scores[k][idx] = self.score_init + gain
        else:
            self.keep = None
        return improved

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and floats (server state saved in the run checkpoint)."""
        return {
            "scores": {k: v.clone() for k, v in self.scores.items()},
            "keep": None if self.keep is None else {k: v.clone() for k, v in self.keep.items()},
            "last_loss": self.last_loss,
        }

    def flat_size(self) -> int:
        """Entries of :meth:`to_flat`: scores and a kept-mask per unit, then 3 flags/values."""
        return 2 * sum(self.units.values()) + 3

    def to_flat(self) -> torch.Tensor:
        """The map as one float64 vector (a client's slot in the state store), exactly:
        ``[scores, kept mask, has A, has l, l]`` (A is a sorted index set, so a mask holds it).
        """
        n = sum(self.units.values())
        out = torch.zeros(self.flat_size(), dtype=torch.float64)
        offset = 0
        for k, count in self.units.items():
            out[offset : offset + count] = self.scores[k]
            if self.keep is not None:
                out[n + offset + self.keep[k]] = 1.0
            offset += count
        out[2 * n] = float(self.keep is not None)
        out[2 * n + 1] = float(self.last_loss is not None)
        out[2 * n + 2] = self.last_loss if self.last_loss is not None else 0.0
        return out

    def load_flat(self, flat: torch.Tensor) -> None:
        """Inverse of :meth:`to_flat`."""
        if flat.numel() != self.flat_size():
            raise ValueError("score map does not match the model's droppable layers")
        flat = flat.detach().cpu().to(torch.float64)
        n = sum(self.units.values())
        has_keep, has_loss = bool(flat[2 * n]), bool(flat[2 * n + 1])
        offset, scores, keep = 0, {}, {}
        for k, count in self.units.items():
            scores[k] = flat[offset : offset + count].clone()
            keep[k] = flat[n + offset : n + offset + count].nonzero().flatten()
            offset += count
        self.scores = scores
        self.keep = keep if has_keep else None
        self.last_loss = float(flat[2 * n + 2]) if has_loss else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scores = {k: v.detach().cpu().to(torch.float64) for k, v in state["scores"].items()}
        if {k: v.numel() for k, v in scores.items()} != self.units:
            raise ValueError("score map does not match the model's droppable layers")
        self.scores = scores
        keep = state["keep"]
        self.keep = None if keep is None else {k: v.detach().cpu().long() for k, v in keep.items()}
        self.last_loss = None if state["last_loss"] is None else float(state["last_loss"])
