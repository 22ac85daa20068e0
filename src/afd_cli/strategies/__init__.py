"""Strategies choose sub-models and keep server-side state such as AFD score maps."""

from __future__ import annotations

from .. import registry
from ..config import StrategyConfig
from ..models import FLModel
from .afd import MultiModelAFD, SingleModelAFD
from .base import Strategy
from .fd import FederatedDropout
from .fedavg import FedAvg

NAMES = registry.names("strategy")


def build(cfg: StrategyConfig, model: FLModel, seed: int) -> Strategy:
    """The strategy named by ``cfg.name`` (see :mod:`afd_cli.registry`); ``rate == 0`` makes
    every one of them FedAvg."""
    return registry.load("strategy", cfg.name).from_config(cfg, model, seed)


__all__ = [
    "NAMES",
    "FedAvg",
    "FederatedDropout",
    "MultiModelAFD",
    "SingleModelAFD",
    "Strategy",
    "build",
]
