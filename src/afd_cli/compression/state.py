"""Per-client buffers kept in FULL-model coordinates, so they survive changing sub-models.

Each call gathers the client's current sub-model part with ``view.extract`` (fp32 copies)
and writes it back with ``view.scatter_``. Buffers exist only for clients that have taken
part, on ``device`` (the host by default, where numpy updates the copies in place; the
model's device when a compressor keeps its state there). ``gather_many`` / ``scatter_many``
do the same for a :class:`~afd_cli.submodel.ViewBatch` of clients of one sub-model shape as
``[C, *sub]`` stacks.

The buffers live in a :class:`~afd_cli.state.StateStore` namespace: all of a client's
buffers are one flat slot (so spilling a client to disk is one file), kept in the store's
``dtype``; a run gives every compressor its one store with a memory budget, a compressor
built alone gets a private, unbounded one.

The full shapes come from ``shapes`` given at construction, else from a ``full_shapes``
attribute of the view, else the sub-model shapes are taken as full (right for the identity
view of FedAvg, wrong for sub-model strategies -- pass ``shapes`` there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from afd_cli.state import StateStore

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
    """Named full-coordinate buffers (e.g. ``u``, ``v``) per client id, in one store namespace."""

    def __init__(
        self,
        keys: Sequence[str],
        shapes: Shapes | None = None,
        fill: float = 0.0,
        device: torch.device | str = "cpu",
        store: StateStore | None = None,
        name: str = "client",
    ):
        self.keys = tuple(keys)
        self.device = torch.device(device)
        self.fill = fill  # initial value of a new client's buffers (NaN marks "unknown")
        self.store = store if store is not None else StateStore()
        self.name = name
        self._shapes = dict(shapes) if shapes is not None else None
        self._layout: list[tuple[str, str, tuple[int, ...], int]] | None = None
        if self._shapes is not None:
            self._register({n: tuple(int(d) for d in s) for n, s in self._shapes.items()})

    # -- layout: which part of a client's flat slot is which buffer ---------------------------
    def _register(self, shapes: dict[str, tuple[int, ...]]) -> None:
        layout, offset = [], 0
        for key in self.keys:
            for name, shape in shapes.items():
                layout.append((key, name, shape, offset))
                offset += math.prod(shape)
        described = [(k, n, list(s)) for k, n, s, _ in layout]
        self.store.space(  # a compressor's per-client state: only where the client trains
            self.name, offset, device=self.device, fill=self.fill, layout=described, sharded=True
        )
        self._layout = layout

    def _views(self, flat: torch.Tensor) -> dict[str, Params]:
        assert self._layout is not None
        out: dict[str, Params] = {k: {} for k in self.keys}
        for key, name, shape, offset in self._layout:
            out[key][name] = flat[offset : offset + math.prod(shape)].view(shape)
        return out

    def _bufs(self, client: int, create: bool = False) -> dict[str, Params]:
        """The client's buffers as views of its slot (valid until the next store access)."""
        return self._views(self.store.get(self.name, client, create=create))

    @property
    def dtype(self) -> torch.dtype:
        return self.store.dtype

    def _fp32(self, params: Params) -> Params:
        if self.store.dtype == torch.float32:
            return params
        return {n: t.float() for n, t in params.items()}

    # -- clients ------------------------------------------------------------------------------
    def __contains__(self, client: int) -> bool:
        return self.store.has(self.name, client)

    def clients(self) -> list[int]:
        """Ids of the clients holding state (those that have taken part)."""
        return self.store.clients(self.name)

    def _full_shapes(self, view: View, like: Params) -> dict[str, tuple[int, ...]]:
        shapes = self._shapes or getattr(view, "full_shapes", None)
        if shapes is None:
            return {name: tuple(t.shape) for name, t in like.items()}
        return {name: tuple(int(d) for d in shapes[name]) for name in like}

    def gather(self, client: int, view: View, like: Params) -> dict[str, Params]:
        """``{key: sub-model-shape fp32 copies}`` of the client's buffers (created on first
        use)."""
        if self._layout is None:
            self._register(self._full_shapes(view, like))
        bufs = self._bufs(client, create=True)
        return {key: self._fp32(view.extract(bufs[key])) for key in self.keys}

    def gather_many(
        self, clients: Sequence[int], batch: ViewBatch, like: Params
    ) -> dict[str, Params]:
        """``{key: {name: [C, *sub]}}`` fp32 copies of the clients' buffers (``like``:
        ``[C, *sub]``).

        The clients' full buffers are stacked and gathered with the batch's flat indices:
        one ``stack`` and one ``gather`` per buffer and parameter.
        """
        if self._layout is None:
            shapes = self._shapes or {n: tuple(t.shape[1:]) for n, t in like.items()}
            self._register({n: tuple(int(d) for d in shapes[n]) for n in like})
        # each client once, in order: under a small budget a client read back may push out
        # an earlier one, whose views stay valid for reading
        bufs = [self._bufs(c, create=True) for c in clients]
        return {
            key: self._fp32(
                batch.extract_rows({n: torch.stack([b[key][n] for b in bufs]) for n in like})
            )
            for key in self.keys
        }

    def scatter_many(self, clients: Sequence[int], batch: ViewBatch, key: str, sub: Params) -> None:
        """Write ``{name: [C, *sub]}`` back into the clients' ``key`` buffers.

        One ``index_copy_`` per client and parameter (each client's buffer is its own slot).
        """
        for row, c in enumerate(clients):
            bufs = self._bufs(c)[key]
            for name, s in sub.items():
                dst = bufs[name]
                if batch.all_full:
                    dst.copy_(s[row])
                else:
                    idx = batch.index(name, dst)[row].reshape(-1)
                    dst.view(-1).index_copy_(0, idx, s[row].reshape(-1).to(dst.dtype))
            self.store.mark_dirty(self.name, c)

    def extract(self, client: int, view: View) -> dict[str, Params]:
        """``{key: sub-model-shape fp32 copies}`` of an existing client's buffers."""
        bufs = self._bufs(client)
        return {key: self._fp32(view.extract(bufs[key])) for key in self.keys}

    def scatter(self, client: int, view: View, key: str, sub: Params) -> None:
        """Write sub-model-shape ``sub`` back into the client's ``key`` buffers."""
        if self.store.dtype != torch.float32:
            sub = {n: t.to(self.store.dtype) for n, t in sub.items()}
        view.scatter_(self._bufs(client)[key], sub)
        self.store.mark_dirty(self.name, client)

    def nbytes(self) -> int:
        """Bytes held by all buffers of all clients (in memory or spilled to disk)."""
        return self.store.nbytes(self.name)

    def state_dict(self) -> dict[str, Any]:
        """Plain nested dict ``{client: {key: {name: fp32 host tensor}}}``, or, in a run's
        store (checkpointed by the run), ``{"store": name}``."""
        if not self.store.inline:
            return {"store": self.name}
        return {
            c: {
                k: {n: t.detach().cpu().float().clone() for n, t in p.items()}
                for k, p in self._views(self.store.peek(self.name, c)).items()
            }
            for c in self.clients()
        }

    def load_state_dict(self, state: Mapping[Any, Any]) -> None:
        """Inverse of :meth:`state_dict` (a reference: the run restored its store already)."""
        if "store" in state:
            return
        self.store.clear(self.name)
        for c, bufs in state.items():
            if self._layout is None:
                first = next(iter(bufs.values()))
                self._register({n: tuple(t.shape) for n, t in first.items()})
            views = self._bufs(int(c), create=True)
            for k, p in bufs.items():
                for n, t in p.items():
                    views[k][n].copy_(t)
            self.store.mark_dirty(self.name, int(c))
