"""Per-client buffers kept in FULL-model coordinates, so they survive changing sub-models.

Each call gathers the client's current sub-model part with ``view.extract`` and writes it
back with ``view.scatter_``. Buffers exist only for clients that have taken part (fp32, CPU).

The full shapes come from ``shapes`` given at construction, else from a ``full_shapes``
attribute of the view, else the sub-model shapes are taken as full (right for the identity
view of FedAvg, wrong for sub-model strategies -- pass ``shapes`` there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .base import Params, View

Shapes = Mapping[str, Sequence[int]]


def np_view(t: torch.Tensor) -> np.ndarray:
    """numpy alias of a contiguous fp32 CPU tensor (in-place ops write through).

    Elementwise updates go through numpy because torch's threaded kernels are several times
    slower on the small shared CPUs these runs use.
    """
    if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("np_view needs a contiguous fp32 CPU tensor")
    return t.detach().numpy()


class ClientStore:
    """Named full-coordinate buffers (e.g. ``u``, ``v``) per client id."""

    def __init__(self, keys: Sequence[str], shapes: Shapes | None = None, fill: float = 0.0):
        self.keys = tuple(keys)
        self.fill = fill  # initial value of a new client's buffers (NaN marks "unknown")
        self._shapes = dict(shapes) if shapes is not None else None
        self._data: dict[int, dict[str, Params]] = {}

    def __contains__(self, client: int) -> bool:
        return client in self._data

    def clients(self) -> list[int]:
        """Ids of the clients holding state (those that have taken part)."""
        return sorted(self._data)

    def _full_shapes(self, view: View, like: Params) -> dict[str, tuple[int, ...]]:
        shapes = self._shapes or getattr(view, "full_shapes", None)
        if shapes is None:
            return {name: tuple(t.shape) for name, t in like.items()}
        return {name: tuple(int(d) for d in shapes[name]) for name in like}

    def gather(self, client: int, view: View, like: Params) -> dict[str, Params]:
        """``{key: sub-model-shape copies}`` of the client's buffers (created on first use)."""
        bufs = self._data.get(client)
        if bufs is None:
            shapes = self._full_shapes(view, like)
            bufs = {
                key: {
                    name: torch.full(shape, self.fill, dtype=torch.float32)
                    for name, shape in shapes.items()
                }
                for key in self.keys
            }
            self._data[client] = bufs
        return self.extract(client, view)

    def extract(self, client: int, view: View) -> dict[str, Params]:
        """``{key: sub-model-shape copies}`` of an existing client's buffers."""
        bufs = self._data[client]
        return {key: view.extract(bufs[key]) for key in self.keys}

    def scatter(self, client: int, view: View, key: str, sub: Params) -> None:
        """Write sub-model-shape ``sub`` back into the client's ``key`` buffers."""
        view.scatter_(self._data[client][key], sub)

    def nbytes(self) -> int:
        """Bytes held by all buffers of all clients."""
        return sum(
            t.numel() * t.element_size()
            for bufs in self._data.values()
            for params in bufs.values()
            for t in params.values()
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain nested dict ``{client: {key: {name: tensor}}}`` (tensors cloned)."""
        return {
            c: {k: {n: t.clone() for n, t in p.items()} for k, p in bufs.items()}
            for c, bufs in self._data.items()
        }

    def load_state_dict(self, state: Mapping[int, Mapping[str, Params]]) -> None:
        """Inverse of :meth:`state_dict`."""
        self._data = {
            int(c): {
                k: {n: t.detach().to("cpu", torch.float32).clone() for n, t in p.items()}
                for k, p in bufs.items()
            }
            for c, bufs in state.items()
        }
