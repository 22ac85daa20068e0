"""The model zoo. Every model is built from a dict of *unit counts* per droppable layer.

That one idea is what makes sub-models real: a sub-model is the same class built with fewer
units (fewer filters, neurons, LSTM hidden units), so it has genuinely smaller tensors and
fewer FLOPs. Each model also declares its ``layout``: for every parameter, which tensor
dimensions are indexed by which droppable layer's units. :mod:`afd_cli.submodel` needs
nothing else to slice a full model into a sub-model and to scatter an update back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import registry
from .config import ModelConfig


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
    """Base class: ``units`` (full or reduced widths) and the parameter ``layout``."""

    units: dict[str, int]
    layout: Layout

    def with_units(self, units: dict[str, int]) -> FLModel:
        """A fresh model of the same family with other unit counts (used for sub-models)."""
        raise NotImplementedError


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
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)

    def with_units(self, units: dict[str, int]) -> CNN:
        return CNN(self.in_shape, self.num_classes, units)


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
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def with_units(self, units: dict[str, int]) -> MLP:
        return MLP(self.in_shape, self.num_classes, units)


class CharLSTM(FLModel):
    """LEAF's Shakespeare model: embedding 8, stacked LSTM, dense over the vocabulary.

    Predicts the character after an 80-character window from the last hidden state. A dropped
    LSTM unit removes its row in all four gates and its column in the recurrent matrix and in
    whatever reads that layer's output.
    """

    def __init__(self, vocab: int, units: dict[str, int], embed_dim: int = 8):
        super().__init__()
        self.vocab, self.embed_dim, self.units = vocab, embed_dim, dict(units)
        self.num_layers = len(units)
        self.embed = nn.Embedding(vocab, embed_dim)
        self.lstms = nn.ModuleList()
        self.layout = {"embed.weight": ()}
        prev, prev_name = embed_dim, None
        for i in range(self.num_layers):
            name = f"lstm{i + 1}"
            h = units[name]
            self.lstms.append(nn.LSTM(prev, h, batch_first=True))
            rows = Axis(0, name, repeat=4)
            ih = (rows, Axis(1, prev_name)) if prev_name else (rows,)
            self.layout |= {
                f"lstms.{i}.weight_ih_l0": ih,
                f"lstms.{i}.weight_hh_l0": (rows, Axis(1, name)),
                f"lstms.{i}.bias_ih_l0": (rows,),
                f"lstms.{i}.bias_hh_l0": (rows,),
            }
            prev, prev_name = h, name
        self.fc = nn.Linear(prev, vocab)
        self.layout |= {"fc.weight": (Axis(1, prev_name),), "fc.bias": ()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for lstm in self.lstms:
            h, _ = lstm(h)
        return self.fc(h[:, -1])

    def with_units(self, units: dict[str, int]) -> CharLSTM:
        return CharLSTM(self.vocab, units, self.embed_dim)


# One factory per ``model=`` option (registered in afd_cli.registry); ``opts`` carries the
# model.* keys, whose defaults live in ModelConfig only.
def cnn_mnist(in_shape: tuple[int, ...], num_classes: int, opts: ModelConfig) -> CNN:
    return CNN(in_shape, num_classes, {"conv1": 32, "conv2": 64, "fc1": 512})


def cnn_femnist(in_shape: tuple[int, ...], num_classes: int, opts: ModelConfig) -> CNN:
    return CNN(in_shape, num_classes, {"conv1": 32, "conv2": 64, "fc1": 2048})


def mlp(in_shape: tuple[int, ...], num_classes: int, opts: ModelConfig) -> MLP:
    return MLP(in_shape, num_classes, {"fc1": opts.hidden, "fc2": opts.hidden})


def char_lstm(in_shape: tuple[int, ...], num_classes: int, opts: ModelConfig) -> CharLSTM:
    units = {f"lstm{i + 1}": opts.lstm_hidden for i in range(opts.lstm_layers)}
    return CharLSTM(num_classes, units, opts.embed_dim)


def build(name: str, in_shape: tuple[int, ...], num_classes: int, **opts: Any) -> FLModel:
    """Build a full model of the zoo for a dataset's input shape and class count;
    ``opts`` are model.* keys (``hidden``, ``lstm_hidden``, ...), the rest keep their defaults."""
    return registry.load("model", name)(in_shape, num_classes, ModelConfig(name=name, **opts))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
