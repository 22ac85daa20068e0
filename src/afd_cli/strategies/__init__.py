"""Strategies choose sub-models and keep server-side state such as AFD score maps."""

from __future__ import annotations

from .. import registry
from ..config import StrategyConfig
from ..models import FLModel
from ..state import StateStore
from .afd import MultiModelAFD, SingleModelAFD
from .base import Strategy
from .fd import FederatedDropout
from .fedavg import FedAvg

NAMES = registry.names("strategy")


def build(
    cfg: StrategyConfig, model: FLModel, seed: int, store: StateStore | None = None
) -> Strategy:
    """The strategy named by ``cfg.name`` (see :mod:`afd_cli.registry`); ``rate == 0`` makes
    every one of them FedAvg.

    ``store``: where Multi-Model AFD keeps its per-client score maps (the run's store).
    """
    return registry.load("strategy", cfg.name).from_config(cfg, model, seed, store=store)


__all__ = [
    "NAMES",
    "FedAvg",
    "FederatedDropout",
    "MultiModelAFD",
    "SingleModelAFD",
    "Strategy",
    "build",
]
