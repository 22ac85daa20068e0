"""A strategy: every client trains the same sub-model, the first units of each layer.

The simplest fixed-index rule (HeteroFL's, at one width): no randomness, no server state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from afd_cli import registry
from afd_cli.options import Options, option
from afd_cli.strategies.base import Strategy
from afd_cli.submodel import View, units_to_keep


@dataclass
class PrefixOptions(Options):
    rate: float = option(0.5, "fraction of units dropped from the end of each layer", ge=0, lt=1)


@registry.strategy("prefix")
class PrefixDropout(Strategy):
    options = PrefixOptions

    def select(self, round: int, clients: list[int]) -> list[View]:
        keep = {
            layer: torch.arange(units_to_keep(n, self.opts.rate))
            for layer, n in self.model.units.items()
        }
        return [View(self.model, keep)] * len(clients)
