"""McMahan et al.'s "2NN": a multilayer perceptron."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .. import registry
from ..options import Options, option
from .base import Axis, FLModel


@dataclass
class MLPOptions(Options):
    hidden: int = option(200, "width of each of its two hidden layers", ge=1)


class MLP(FLModel):
    """McMahan et al.'s "2NN": two hidden ReLU layers (200 units each by default)."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, units: dict[str, int]):
        super().__init__()
        self.in_shape, self.num_classes, self.units = tuple(in_shape), num_classes, dict(units)
        self.fc1 = nn.Linear(math.prod(in_shape), units["fc1"])
        self.fc2 = nn.Linear(units["fc1"], units["fc2"])
        self.fc3 = nn.Linear(units["fc2"], num_classes)
        self.layout = {
            "fc1.weight": (Axis(0, "fc1"),),
            "fc1.bias": (Axis(0, "fc1"),),
            "fc2.weight": (Axis(0, "fc2"), Axis(1, "fc1")),
            "fc2.bias": (Axis(0, "fc2"),),
            "fc3.weight": (Axis(1, "fc2"),),
            "fc3.bias": (),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.masked("fc1", self.fc1(x.flatten(1))))
        x = F.relu(self.masked("fc2", self.fc2(x)))
        return self.fc3(x)

    def with_units(self, units: dict[str, int]) -> MLP:
        return MLP(self.in_shape, self.num_classes, units)


@registry.model("mlp", options=MLPOptions, input=("image", "vector"))
def mlp(in_shape: tuple[int, ...], num_classes: int, opts: MLPOptions) -> MLP:
    return MLP(in_shape, num_classes, {"fc1": opts.hidden, "fc2": opts.hidden})
