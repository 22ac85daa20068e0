"""LEAF's Shakespeare model: a character LSTM."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import registry
from ..options import Options, option
from .base import Axis, FLModel


@dataclass
class CharLSTMOptions(Options):
    embed_dim: int = option(8, "character embedding width", ge=1)
    lstm_hidden: int = option(256, "hidden units of each LSTM layer", ge=1)
    lstm_layers: int = option(2, "stacked LSTM layers", ge=1)


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


@registry.model("char_lstm", options=CharLSTMOptions, input="text")
def char_lstm(in_shape: tuple[int, ...], num_classes: int, opts: CharLSTMOptions) -> CharLSTM:
    units = {f"lstm{i + 1}": opts.lstm_hidden for i in range(opts.lstm_layers)}
    return CharLSTM(num_classes, units, opts.embed_dim)
