"""The model zoo: one module per model family, each registering its ``model=`` options.

The contract (:class:`~.base.FLModel`: units, layout, ``with_units``) is in :mod:`.base`.
"""

from __future__ import annotations

from typing import Any

from .. import registry
from .base import Axis, FLModel, Layout, num_params


def build(name: str, in_shape: tuple[int, ...], num_classes: int, **values: Any) -> FLModel:
    """A full model of ``model=name`` for a dataset's input shape and class count; ``values``
    are its ``model.*`` options (``hidden``, ``lstm_hidden``, ...), the rest at their defaults."""
    plugin = registry.get("model", name)
    return plugin.obj(in_shape, num_classes, plugin.options(name=name, **values))


__all__ = ["Axis", "FLModel", "Layout", "build", "num_params"]
