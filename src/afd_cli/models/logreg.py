"""Multinomial logistic regression: the model FedProx trains on Synthetic(alpha, beta).

One dense layer from the flattened input to the classes (60 x 10 + 10 = 610 parameters on
Synthetic). It has no droppable layer, so every sub-model is the full model: dropout-based
strategies (fd, single, multi) send it whole, and only a codec makes its messages smaller;
``model=mlp`` gives them hidden units to drop.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import registry
from ..options import NoOptions, Options
from .base import FLModel


class LogReg(FLModel):
    """``softmax(W x + b)``; the loss (cross-entropy) applies the softmax."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, units: dict[str, int]):
        super().__init__()
        self.in_shape, self.num_classes, self.units = tuple(in_shape), num_classes, dict(units)
        self.fc = nn.Linear(math.prod(in_shape), num_classes)
        self.layout = {"fc.weight": (), "fc.bias": ()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))

    def with_units(self, units: dict[str, int]) -> LogReg:
        return LogReg(self.in_shape, self.num_classes, units)


@registry.model("logreg", options=NoOptions, input=("image", "vector"))
def logreg(in_shape: tuple[int, ...], num_classes: int, opts: Options) -> LogReg:
    return LogReg(in_shape, num_classes, {})
