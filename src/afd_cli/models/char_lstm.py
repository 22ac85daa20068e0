"""LEAF's Shakespeare model: a character LSTM."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

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
        if self.unit_masks is not None:
            return self._forward_masked(x, self.unit_masks)
        h = self.embed(x)
        for lstm in self.lstms:
            h, _ = lstm(h)
        return self.fc(h[:, -1])

    def _forward_masked(self, x: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """FjORD's masked step: the fused ``nn.LSTM`` cannot mask its recurrence, so the
        layers run as :func:`lstm_layer` with the mask inside it (same gates and equations)."""
        h = self.embed(x)
        for i, lstm in enumerate(self.lstms):
            w = (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
            last = i == self.num_layers - 1
            h = lstm_layer(h, *w, sequence=not last, mask=masks.get(f"lstm{i + 1}"))
        return self.fc(h)

    def with_units(self, units: dict[str, int]) -> CharLSTM:
        return CharLSTM(self.vocab, units, self.embed_dim)


@registry.model("char_lstm", options=CharLSTMOptions, input="text")
def char_lstm(in_shape: tuple[int, ...], num_classes: int, opts: CharLSTMOptions) -> CharLSTM:
    units = {f"lstm{i + 1}": opts.lstm_hidden for i in range(opts.lstm_layers)}
    return CharLSTM(num_classes, units, opts.embed_dim)


def lstm_layer(
    x: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
    sequence: bool,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ``nn.LSTM(batch_first=True)`` layer from zero state, written with vmap-able ops
    (the batched trainer's and the FLOP counter's LSTM).

    Returns the outputs of all time steps ``[B, T, H]`` if ``sequence``, else the last ``[B, H]``.
    ``mask`` (0/1 per hidden unit, FjORD's step width): the hidden state is masked at every
    time step, inside the recurrence, so a masked unit reaches neither the other units' gates
    nor the next layer: the layer computes exactly what the smaller LSTM of the kept units
    computes, and the masked units get no gradient.
    """
    hidden = w_hh.shape[1]
    xg = F.linear(x, w_ih, b_ih)  # input projection of every time step at once: [B, T, 4H]
    h = xg.new_zeros(xg.shape[0], hidden)
    c = torch.zeros_like(h, dtype=torch.float32)
    outs = []
    for t in range(xg.shape[1]):
        gates = xg[:, t] + F.linear(h, w_hh, b_hh)
        i, f, g, o = gates.chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        if mask is not None:
            h = h * mask
        if sequence:
            outs.append(h)
    return torch.stack(outs, 1) if sequence else h
