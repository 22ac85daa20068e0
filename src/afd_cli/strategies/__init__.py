"""Strategies choose sub-models and keep server-side state such as AFD score maps."""

from __future__ import annotations

from ..config import StrategyConfig
from ..models import FLModel
from ..state import StateStore
from .afd import MultiModelAFD, SingleModelAFD
from .base import Strategy
from .fd import FederatedDropout
from .fedavg import FedAvg

NAMES = ("fedavg", "fd", "multi", "single")


def build(
    cfg: StrategyConfig, model: FLModel, seed: int, store: StateStore | None = None
) -> Strategy:
    """The strategy named by ``cfg.name``; ``rate == 0`` makes every one of them FedAvg.

    ``store``: where Multi-Model AFD keeps its per-client score maps (the run's store).
    """
    if cfg.name == "fedavg":
        return FedAvg(model)
    if cfg.name == "fd":
        return FederatedDropout(model, cfg.rate, seed)
    if cfg.name in ("multi", "single"):
        opts = {} if cfg.name == "single" else {"store": store}
        cls = MultiModelAFD if cfg.name == "multi" else SingleModelAFD
        return cls(
            model,
            cfg.rate,
            seed,
            **opts,
            score_init=cfg.score_init,
            explore=cfg.explore,
            score_update=cfg.score_update,
        )
    raise ValueError(f"strategy {cfg.name!r} is not valid; choose one of: {', '.join(NAMES)}")


__all__ = [
    "NAMES",
    "FedAvg",
    "FederatedDropout",
    "MultiModelAFD",
    "SingleModelAFD",
    "Strategy",
    "build",
]
