"""The model contract: a model is built from a dict of *unit counts* per droppable layer.

That one idea is what makes sub-models real: a sub-model is the same class built with fewer
units (fewer filters, neurons, LSTM hidden units), so it has genuinely smaller tensors and
fewer FLOPs. Each model also declares its ``layout``: for every parameter, which tensor
dimensions are indexed by which droppable layer's units. :mod:`afd_cli.submodel` needs
nothing else to slice a full model into a sub-model and to scatter an update back.

A ``model=`` option is a factory ``(input_shape, num_classes, options) -> FLModel``,
registered with ``@registry.model(name, options=..., input="image" | "text")``; the output
layer (the last one) is never droppable, so every sub-model predicts every class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Axis:
    """Dimension ``dim`` of a parameter is indexed by the units of droppable layer ``layer``.

    ``repeat``: the dimension stacks ``repeat`` blocks of ``units`` entries (LSTM gates i,f,g,o),
    so unit ``u`` owns entries ``u + g * units`` for every gate ``g``.
    ``block``: each unit owns ``block`` consecutive entries (a conv filter flattened into the
    next dense layer's input owns its ``H*W`` spatial columns).
    """

    dim: int
    layer: str
    repeat: int = 1
    block: int = 1


Layout = dict[str, tuple[Axis, ...]]


class FLModel(nn.Module):
    """Base class: ``units`` (full or reduced widths) and the parameter ``layout``.

    ``unit_masks`` (None but during a FjORD step): a 0/1 vector per droppable layer that
    the forward pass multiplies that layer's outputs by, so a masked unit neither feeds the
    next layer nor gets a gradient: the step trains a prefix sub-model without slicing.
    """

    units: dict[str, int]
    layout: Layout
    unit_masks: dict[str, torch.Tensor] | None = None

    def masked(self, layer: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` (units along dim 1) times the layer's unit mask; ``x`` itself without one."""
        masks = self.unit_masks
        if masks is None or layer not in masks:
            return x
        return x * masks[layer].view(1, -1, *([1] * (x.dim() - 2)))

    def with_units(self, units: dict[str, int]) -> FLModel:
        """A fresh model of the same family with other unit counts (used for sub-models)."""
        raise NotImplementedError


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
