"""Sub-models by unit indices: ``extract`` a smaller set of tensors, ``inflate`` an update back.

A :class:`View` is one client's cut of the full model: for each droppable layer, the sorted
indices of the units it keeps. Extraction slices every parameter along the dimensions its
model's layout ties to those layers (rows of a layer, matching input columns of the next,
the spatial block of each kept filter for conv -> dense, all four gates of an LSTM unit), so
the result loads into ``model.with_units(view.units)``, a genuinely smaller module.
"""

from __future__ import annotations

import math

import torch

from .models import Axis, FLModel

Params = dict[str, torch.Tensor]


def units_to_keep(total: int, rate: float) -> int:
    """SPEC 2: each droppable layer keeps ceil((1 - p) * units) units."""
    return max(1, min(total, math.ceil((1.0 - rate) * total - 1e-9)))


class View:
    """One client's sub-model: kept unit indices per droppable layer (``None`` = everything)."""

    def __init__(self, model: FLModel, keep: dict[str, torch.Tensor] | None = None):
        self.full_units = dict(model.units)
        self.layout = model.layout
        self.keep = None if keep is None else {k: v.sort().values for k, v in keep.items()}
        self.units = (
            self.full_units if keep is None else {k: len(self.keep[k]) for k in self.full_units}
        )
        self._index: dict[str, list[tuple[int, torch.Tensor]]] = {}
        if self.keep is not None:
            for name, axes in self.layout.items():
                self._index[name] = [(a.dim, self._expand(a)) for a in axes]

    @property
    def is_full(self) -> bool:
        return self.keep is None

    def _expand(self, a: Axis) -> torch.Tensor:
        idx = self.keep[a.layer]
        if a.repeat > 1:
            n = self.full_units[a.layer]
            idx = torch.cat([idx + g * n for g in range(a.repeat)])
        if a.block > 1:
            idx = (idx[:, None] * a.block + torch.arange(a.block)).flatten()
        return idx

    def extract(self, full: Params) -> Params:
        """Full-shape tensors -> sub-model-shape copies of the kept entries."""
        if self.keep is None:
            return {k: v.clone() for k, v in full.items()}
        out = {}
        for name, w in full.items():
            for dim, idx in self._index[name]:
                w = w.index_select(dim, idx.to(w.device))
            out[name] = w if self._index[name] else w.clone()
        return out

    def scatter_(self, full: Params, sub: Params) -> None:
        """Write sub-model values into the kept entries of ``full``, in place."""
        if self.keep is None:
            for k, v in sub.items():
                full[k].copy_(v)
            return
        for name, s in sub.items():
            full[name][self._slices(name, full[name].device)] = s

    def add_(self, full: Params, sub: Params, alpha: float = 1.0) -> None:
        """``full[kept] += alpha * sub``: the accumulation step of masked aggregation."""
        if self.keep is None:
            for k, v in sub.items():
                full[k].add_(v, alpha=alpha)
            return
        for name, s in sub.items():
            full[name][self._slices(name, full[name].device)] += s * alpha

    def _slices(self, name: str, device: torch.device) -> tuple[torch.Tensor | slice, ...]:
        """Advanced-index tuple selecting the kept block of a parameter (open mesh)."""
        axes = self._index[name]
        if not axes:
            return (slice(None),)
        ndim = max(d for d, _ in axes) + 1
        parts: list[torch.Tensor | slice] = [slice(None)] * ndim
        for j, (dim, idx) in enumerate(axes):
            shape = [1] * len(axes)
            shape[j] = -1
            parts[dim] = idx.to(device).view(shape)
        return tuple(parts)

    def inflate(self, sub: Params, like: Params) -> tuple[Params, Params]:
        """Scatter a sub-model update into zeros of full shape, plus the presence mask."""
        full = {k: torch.zeros_like(v) for k, v in like.items()}
        mask = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in like.items()}
        self.scatter_(full, sub)
        self.scatter_(mask, {k: torch.ones_like(v, dtype=torch.bool) for k, v in sub.items()})
        return full, mask

    def num_kept(self, full: Params) -> int:
        """Parameters in the sub-model (computed from shapes, no tensor work)."""
        if self.keep is None:
            return sum(v.numel() for v in full.values())
        total = 0
        for name, w in full.items():
            shape = list(w.shape)
            for dim, idx in self._index[name]:
                shape[dim] = len(idx)
            total += math.prod(shape)
        return total


def random_keep(model: FLModel, rate: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Federated Dropout's choice: a uniformly random ceil((1-p)*n) units per layer."""
    return {
        name: torch.randperm(n, generator=gen)[: units_to_keep(n, rate)]
        for name, n in model.units.items()
    }


def extract(model: FLModel, full: Params, keep: dict[str, torch.Tensor] | None) -> Params:
    return View(model, keep).extract(full)


def inflate(
    model: FLModel, sub: Params, keep: dict[str, torch.Tensor] | None, like: Params
) -> tuple[Params, Params]:
    return View(model, keep).inflate(sub, like)
