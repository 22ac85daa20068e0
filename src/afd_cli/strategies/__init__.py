"""Strategies choose sub-models and keep server-side state such as AFD score maps.

The contract is :class:`~.base.Strategy`; each strategy registers itself with
``@registry.strategy(name)`` in its own module here (or in another package, by entry point).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import registry
from ..options import Options
from .base import Strategy

if TYPE_CHECKING:
    from ..flops import TrainingCost
    from ..models import FLModel
    from ..network import Clock
    from ..state import StateStore


def build(opts: Options, setup: registry.Setup) -> Strategy:
    """The strategy ``opts.name`` names, built from its options and the run's setup."""
    return registry.load("strategy", opts.name)(opts, setup)


def make(
    name: str,
    model: FLModel,
    seed: int = 0,
    store: StateStore | None = None,
    *,
    samples: tuple[int, ...] | None = None,
    clock: Clock | None = None,
    cost: TrainingCost | None = None,
    **values: Any,
) -> Strategy:
    """A strategy built by hand (tests, benchmarks): ``make("fd", model, rate=0.5)``; keys
    ``name`` does not read are ignored, as in a config. ``samples``, ``clock`` and ``cost``:
    what widths from the clock need (:class:`~afd_cli.registry.Setup`)."""
    import torch

    from ..config import options_of
    from ..state import StateStore

    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    device = next(model.parameters()).device if shapes else torch.device("cpu")
    setup = registry.Setup(model, shapes, seed, device, store or StateStore(), samples, clock, cost)
    values = registry.read_values("strategy", name, values)
    return build(options_of("strategy", name, **values), setup)


__all__ = ["Strategy", "build", "make"]
