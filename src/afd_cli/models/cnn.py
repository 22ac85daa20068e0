"""Convolutional models: McMahan et al.'s MNIST CNN and LEAF's FEMNIST CNN."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .. import registry
from ..options import NoOptions, Options
from .base import Axis, FLModel


class CNN(FLModel):
    """Two 5x5 conv layers ('same' padding, 2x2 max-pool each), one hidden dense layer.

    With (32, 64, 512) on 28x28 this is McMahan et al.'s MNIST CNN (1,663,370 parameters);
    with (32, 64, 2048) it is LEAF's FEMNIST CNN.
    """

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, units: dict[str, int]):
        super().__init__()
        self.in_shape, self.num_classes, self.units = tuple(in_shape), num_classes, dict(units)
        c, h, w = in_shape
        self.spatial = (h // 4) * (w // 4)
        self.conv1 = nn.Conv2d(c, units["conv1"], 5, padding=2)
        self.conv2 = nn.Conv2d(units["conv1"], units["conv2"], 5, padding=2)
        self.fc1 = nn.Linear(units["conv2"] * self.spatial, units["fc1"])
        self.fc2 = nn.Linear(units["fc1"], num_classes)
        self.layout = {
            "conv1.weight": (Axis(0, "conv1"),),
            "conv1.bias": (Axis(0, "conv1"),),
            "conv2.weight": (Axis(0, "conv2"), Axis(1, "conv1")),
            "conv2.bias": (Axis(0, "conv2"),),
            "fc1.weight": (Axis(0, "fc1"), Axis(1, "conv2", block=self.spatial)),
            "fc1.bias": (Axis(0, "fc1"),),
            "fc2.weight": (Axis(1, "fc1"),),
            "fc2.bias": (),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.masked("conv1", self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.masked("conv2", self.conv2(x))), 2)
        x = F.relu(self.masked("fc1", self.fc1(x.flatten(1))))
        return self.fc2(x)

    def with_units(self, units: dict[str, int]) -> CNN:
        return CNN(self.in_shape, self.num_classes, units)


@registry.model("cnn_mnist", options=NoOptions)
def cnn_mnist(in_shape: tuple[int, ...], num_classes: int, opts: Options) -> CNN:
    """McMahan et al. 2017: conv5x5(32)-pool-conv5x5(64)-pool-fc512 (1,663,370 parameters)."""
    return CNN(in_shape, num_classes, {"conv1": 32, "conv2": 64, "fc1": 512})


@registry.model("cnn_femnist", options=NoOptions)
def cnn_femnist(in_shape: tuple[int, ...], num_classes: int, opts: Options) -> CNN:
    """LEAF FEMNIST: conv5x5(32)-pool-conv5x5(64)-pool-fc2048."""
    return CNN(in_shape, num_classes, {"conv1": 32, "conv2": 64, "fc1": 2048})
