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


def units_at_width(total: int, width: float) -> int:
    """HeteroFL's, FedRolex's and FjORD's count: a layer of width ``width`` keeps
    ``ceil(width * units)`` units (at least one), computed as their code does, without slack
    for float noise (0.6 * 200 = 120.00000000000001 keeps 121, as ``np.ceil`` there)."""
    return max(1, min(total, math.ceil(width * total)))


def prefix_keep(model: FLModel, width: float) -> dict[str, torch.Tensor]:
    """HeteroFL's and FjORD's nested sub-model: the first ceil(width * units) units per layer."""
    return {name: torch.arange(units_at_width(n, width)) for name, n in model.units.items()}


class View:
    """One client's sub-model: kept unit indices per droppable layer (``None`` = everything).

    ``width``: the strategy's nominal width of this sub-model (``clients.csv``'s ``width``):
    HeteroFL's tier, ``1 - rate`` for dropout. Without one it is read off the unit counts.
    """

    def __init__(
        self,
        model: FLModel,
        keep: dict[str, torch.Tensor] | None = None,
        width: float | None = None,
    ):
        self._width = width
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

    @property
    def width(self) -> float:
        """The nominal width; without one, the smallest kept share of a layer's units."""
        if self._width is not None:
            return self._width
        if self.keep is None or not self.units:
            return 1.0
        return min(self.units[k] / self.full_units[k] for k in self.units)

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


class ViewBatch:
    """Views of one sub-model shape (same unit counts, different unit sets), as one operation.

    Per parameter it holds a flat index tensor ``[C, *sub_shape]`` into ``full.reshape(-1)``:
    entry ``[c, i, j, ...]`` is where client ``c``'s sub-model entry ``[i, j, ...]`` sits in
    the full tensor. It is built by broadcasting the clients' stacked kept-index tensors
    (one ``[C, len]`` tensor per axis) against the full tensor's strides, so gathering,
    scattering and scatter-adding all clients is one kernel per parameter, not a Python loop
    over clients. Full views (``keep=None``) take the identity slice; a batch of only full
    views skips the index entirely.

    Indices are built lazily per (parameter, full shape, device) and cached.
    """

    def __init__(self, views: list[View]):
        if not views:
            raise ValueError("ViewBatch needs at least one view")
        units = views[0].units
        if any(v.units != units for v in views):
            raise ValueError("ViewBatch: views must have the same unit counts (sub-model shapes)")
        self.views = list(views)
        self.units = dict(units)
        self.layout = views[0].layout
        self.all_full = all(v.is_full for v in views)
        self._cache: dict[tuple[str, tuple[int, ...], torch.device], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.views)

    def sub_shape(self, name: str, full_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of parameter ``name`` in this batch's sub-model."""
        shape = list(full_shape)
        for a in self.layout.get(name, ()):
            shape[a.dim] = self.units[a.layer] * a.repeat * a.block
        return tuple(shape)

    def index(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """Flat positions ``[C, *sub_shape]`` (int64, on ``full``'s device) of the kept entries."""
        key = (name, tuple(full.shape), full.device)
        idx = self._cache.get(key)
        if idx is None:
            idx = self._cache[key] = self._build_index(name, full.shape, full.device)
        return idx

    def _build_index(self, name: str, full_shape: torch.Size, device: torch.device) -> torch.Tensor:
        ndim, c = len(full_shape), len(self.views)
        strides = [1] * ndim
        for d in range(ndim - 2, -1, -1):
            strides[d] = strides[d + 1] * full_shape[d + 1]
        by_dim = {a.dim: a for a in self.layout.get(name, ())}
        flat = torch.zeros((c,) + (1,) * ndim, dtype=torch.int64, device=device)
        for d in range(ndim):
            shape = [1] * (ndim + 1)
            a = by_dim.get(d)
            if a is None:  # dimension not cut: every client keeps all of it
                part = torch.arange(full_shape[d], device=device)
                shape[d + 1] = -1
            else:  # [C, len]: the clients' kept positions along this dimension
                part = torch.stack(
                    [torch.arange(full_shape[d]) if v.is_full else v._expand(a) for v in self.views]
                ).to(device)
                shape[0], shape[d + 1] = c, -1
            flat = flat + part.view(shape) * strides[d]
        return flat.expand((c,) + self.sub_shape(name, tuple(full_shape))).contiguous()

    def _weights(self, weights, like: torch.Tensor) -> torch.Tensor:
        w = torch.as_tensor(weights, dtype=like.dtype).to(like.device)
        if w.shape != (len(self.views),):
            raise ValueError(f"need {len(self.views)} weights, got shape {tuple(w.shape)}")
        return w

    def extract(self, full: Params) -> Params:
        """Full-shape tensors -> ``{name: [C, *sub_shape]}`` (a gather; new tensors)."""
        c = len(self.views)
        if self.all_full:
            return {k: v.unsqueeze(0).expand(c, *v.shape).clone() for k, v in full.items()}
        return {k: torch.take(v, self.index(k, v)) for k, v in full.items()}

    def extract_rows(self, stacked_full: Params) -> Params:
        """``{name: [C, *full]}`` (client ``c``'s own full tensor in row ``c``) -> ``[C, *sub]``."""
        if self.all_full:
            return {k: v.clone() for k, v in stacked_full.items()}
        out = {}
        for k, v in stacked_full.items():
            idx = self.index(k, v[0])
            out[k] = torch.gather(v.reshape(len(v), -1), 1, idx.reshape(len(v), -1)).view(idx.shape)
        return out

    def add_(self, full: Params, stacked: Params, weights) -> None:
        """``full[kept_c] += weights[c] * stacked[c]`` for every client ``c`` (a scatter-add).

        Entries several clients keep receive the sum of their contributions.
        """
        for k, s in stacked.items():
            dst = full[k]
            w = self._weights(weights, s).view(-1, *[1] * (s.dim() - 1))
            if self.all_full:
                dst.add_((s * w).sum(0))
            else:
                idx = self.index(k, dst)
                dst.view(-1).index_add_(0, idx.reshape(-1), (s * w).reshape(-1))

    def count_(self, full: Params, weights) -> None:
        """``full[kept_c] += weights[c]`` for every client: the per-entry weight totals."""
        for k, dst in full.items():
            w = self._weights(weights, dst)
            if self.all_full:
                dst.add_(w.sum())
            else:
                idx = self.index(k, dst)
                src = w.view(-1, 1).expand(len(w), idx[0].numel())
                dst.view(-1).index_add_(0, idx.reshape(-1), src.reshape(-1))


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
