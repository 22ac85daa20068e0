"""Sub-model views for compressor tests: what a strategy hands a compressor (``extract`` the
client's part of the full model, ``scatter_`` it back), without a strategy or a model."""

from __future__ import annotations

import torch

from afd_cli.compression.base import Params

# cnn_mnist's parameter shapes (Caldas et al.'s CNN), for byte counts at the real sizes
CNN_MNIST = {
    "conv1.weight": (32, 1, 5, 5),
    "conv1.bias": (32,),
    "conv2.weight": (64, 32, 5, 5),
    "conv2.bias": (64,),
    "fc1.weight": (512, 3136),
    "fc1.bias": (512,),
    "fc2.weight": (10, 512),
    "fc2.bias": (10,),
}


class Identity:
    """FedAvg's view: the sub-model is the whole model."""

    def extract(self, full: Params) -> Params:
        return {n: t.clone() for n, t in full.items()}

    def scatter_(self, full: Params, sub: Params) -> None:
        for n, t in sub.items():
            full[n].copy_(t)


ID = Identity()


class Rows:
    """A sub-model keeping the given rows (dim 0) of every tensor, as FD keeps output units.
    ``full_shapes``: the full model's shapes, for compressors that ask the view for them."""

    def __init__(self, rows: list[int], full_shapes: dict[str, tuple[int, ...]] | None = None):
        self.rows = torch.tensor(rows)
        if full_shapes is not None:
            self.full_shapes = full_shapes

    def extract(self, full: Params) -> Params:
        return {n: t[self.rows].clone() for n, t in full.items()}

    def scatter_(self, full: Params, sub: Params) -> None:
        for n, t in sub.items():
            full[n][self.rows] = t


class Cols:
    """A sub-model keeping the given input columns (dim 1) of every tensor."""

    def __init__(self, cols: list[int]) -> None:
        self.cols = torch.tensor(cols)

    def extract(self, full: Params) -> Params:
        return {n: t[:, self.cols].clone() for n, t in full.items()}

    def scatter_(self, full: Params, sub: Params) -> None:
        for n, t in sub.items():
            full[n][:, self.cols] = t
