"""Per-client buffers kept in FULL-model coordinates, so they survive changing sub-models.

Each call gathers the client's current sub-model part with ``view.extract`` and writes it
back with ``view.scatter_``. Buffers exist only for clients that have taken part (fp32, on
``device``: the host by default, where numpy updates them in place; the model's device when
a compressor keeps its state there). ``gather_many`` / ``scatter_many`` do the same for a
:class:`~afd_cli.submodel.ViewBatch` of clients of one sub-model shape as ``[C, *sub]`` stacks.

The full shapes come from ``shapes`` given at construction, else from a ``full_shapes``
attribute of the view, else the sub-model shapes are taken as full (right for the identity
view of FedAvg, wrong for sub-model strategies -- pass ``shapes`` there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .base import Params, View

if TYPE_CHECKING:
    from afd_cli.submodel import ViewBatch

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

    def __init__(
        self,
        keys: Sequence[str],
        shapes: Shapes | None = None,
        fill: float = 0.0,
        device: torch.device | str = "cpu",
    ):
        self.keys = tuple(keys)
        self.device = torch.device(device)
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

    def _create(self, client: int, shapes: dict[str, tuple[int, ...]]) -> None:
        if client not in self._data:
            self._data[client] = {
                key: {
                    name: torch.full(shape, self.fill, dtype=torch.float32, device=self.device)
                    for name, shape in shapes.items()
                }
                for key in self.keys
            }

    def gather(self, client: int, view: View, like: Params) -> dict[str, Params]:
        """``{key: sub-model-shape copies}`` of the client's buffers (created on first use)."""
        if client not in self._data:
            self._create(client, self._full_shapes(view, like))
        return self.extract(client, view)

    def gather_many(
        self, clients: Sequence[int], batch: ViewBatch, like: Params
    ) -> dict[str, Params]:
        """``{key: {name: [C, *sub]}}`` of the clients' buffers (``like``: ``[C, *sub]``).

        The clients' full buffers are stacked and gathered with the batch's flat indices:
        one ``stack`` and one ``gather`` per buffer and parameter.
        """
        shapes = self._shapes or {n: tuple(t.shape[1:]) for n, t in like.items()}
        for c in clients:
            self._create(c, {n: tuple(int(d) for d in shapes[n]) for n in like})
        return {
            key: batch.extract_rows(
                {n: torch.stack([self._data[c][key][n] for c in clients]) for n in like}
            )
            for key in self.keys
        }

    def scatter_many(self, clients: Sequence[int], batch: ViewBatch, key: str, sub: Params) -> None:
        """Write ``{name: [C, *sub]}`` back into the clients' ``key`` buffers.

        One ``index_copy_`` per client and parameter (each client's buffer is its own tensor).
        """
        for name, s in sub.items():
            for row, c in enumerate(clients):
                dst = self._data[c][key][name]
                if batch.all_full:
                    dst.copy_(s[row])
                else:
                    idx = batch.index(name, dst)[row].reshape(-1)
                    dst.view(-1).index_copy_(0, idx, s[row].reshape(-1))

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
        """Plain nested dict ``{client: {key: {name: tensor}}}`` (host copies)."""
        return {
            c: {k: {n: t.detach().cpu().clone() for n, t in p.items()} for k, p in bufs.items()}
            for c, bufs in self._data.items()
        }

    def load_state_dict(self, state: Mapping[int, Mapping[str, Params]]) -> None:
        """Inverse of :meth:`state_dict`."""
        self._data = {
            int(c): {
                k: {n: t.detach().to(self.device, torch.float32).clone() for n, t in p.items()}
                for k, p in bufs.items()
            }
            for c, bufs in state.items()
        }
