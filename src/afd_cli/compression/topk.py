"""Plain top-k sparsification of uploads with error feedback: the baseline DGC improves on.

Per client a residual ``v`` (full-model coordinates) accumulates the update; the ``k``
largest ``|v|`` are sent and removed from ``v``, the rest waits for later rounds. No
warm-up, clipping or momentum. Also the template for :mod:`.dgc`, which overrides the hooks
(``sparsity_at``, ``_prepare``, ``_accumulate``, ``_select``, ``_after_send``).

Two backends compute the same payloads (the selections are exact top-k sets):

* ``numpy`` (default on CPU): upload state on the host, updated in place through numpy,
  which beats torch's threaded kernels on the small shared CPUs these runs use;
* ``torch`` (default when ``device`` is a GPU): upload state on ``device``, torch ops, and
  :meth:`TopKCompressor.encode_up_many` stacks a round's clients of one sub-model shape as
  ``[C, n]`` per tensor (accumulate, ``torch.topk`` or the sampled threshold per row, error
  feedback), so only the selected indices and values cross to the host for the codec.

The hooks take single-client tensors or ``[C, *shape]`` stacks alike (elementwise ops; the
selections work on ``[rows, n]``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .. import registry
from ..options import ConfigError, option
from . import codec
from .base import CompressionOptions, Compressor, Params, RoundContext, View
from .downlink import FIRST_COPY, SparseDownlink
from .sparsify import DENSE_RULES, keep_count, sent_whole, topk_indices, torch_topk_indices
from .state import ClientStore, np_view

if TYPE_CHECKING:
    from ..registry import Setup

BACKENDS = ("numpy", "torch")


@dataclass
class SparseOptions(CompressionOptions):
    """The keys of the sparse compressors (``topk``, ``dgc``)."""

    sparsity: float = option(0.999, "target fraction of upload entries NOT sent", ge=0, lt=1)
    values: str = option("fp32", "precision of the sent values", choices=("fp32", "fp16"))
    dense_rule: str = option(
        "size",
        "which tensors go dense (biases): size = under dense_below entries; ndim = one "
        "dimension or less (Lin et al.'s code)",
        choices=DENSE_RULES,
    )
    dense_below: int = option(1024, "dense_rule=size: tensors with fewer entries go dense", ge=0)
    k_rounding: str = option(
        "nearest",
        "entries sent of n: round(n * (1 - sparsity)), or its ceiling (Lin et al.'s code)",
        choices=("nearest", "ceil"),
    )
    fp16_residual: bool = option(
        True,
        "values=fp16: keep each sent value's fp16 rounding error in the residual (false: "
        "discard it, as Lin et al.'s code does)",
    )
    downlink: bool = option(
        False, "also compress the download (sparse diff vs the client's copy)", strict=True
    )
    first_copy: str = option(
        "fp32",
        "downlink: format of dense records (first copies, small tensors)",
        choices=FIRST_COPY,
        strict=True,
    )

    def check(self, prefix: str) -> None:
        if self.first_copy != "fp32" and not self.downlink:
            raise ConfigError(
                f"{prefix}first_copy={self.first_copy} needs {prefix}downlink=true with a "
                f"sparse compressor (it formats the downlink's dense records)"
            )


@registry.compressor("topk")
class TopKCompressor(Compressor):
    """Top-k uploads with residual; dense fp32 downloads, or sparse deltas when ``downlink``."""

    options = SparseOptions
    buffers: tuple[str, ...] = ("v",)

    def __init__(self, opts: SparseOptions, setup: Setup, backend: str | None = None) -> None:
        super().__init__(opts, setup)
        backend = backend or ("numpy" if self.device.type == "cpu" else "torch")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.cfg = opts
        self.values = opts.values
        self.backend = backend
        self.device = self.device if backend == "torch" else torch.device("cpu")  # upload state
        shapes, store = self._shapes, self.store  # one store for both directions
        self.up = ClientStore(self.buffers, shapes, device=self.device, store=store, name="up")
        self.ceil = opts.k_rounding == "ceil"
        self.down = (
            SparseDownlink(
                opts.values,
                (opts.dense_rule, opts.dense_below),
                shapes,
                opts.first_copy,
                store,
                ceil=self.ceil,
            )
            if opts.downlink
            else None
        )

    # -- hooks ----------------------------------------------------------------------------
    def sparsity_at(self, round: int) -> float:
        """Fraction of entries not sent in ``round`` (constant for plain top-k)."""
        return self.cfg.sparsity

    def _prepare(self, update: Params, ctx: RoundContext, stacked: bool = False) -> Params:
        """The update as fp32 tensors where the state lives (DGC clips here).

        ``stacked``: the tensors are ``[C, *shape]`` stacks of C clients' updates.
        """
        dev = self.device
        return {n: t.detach().to(dev, torch.float32).contiguous() for n, t in update.items()}

    def _accumulate(self, bufs: dict[str, Params], name: str, g: torch.Tensor) -> torch.Tensor:
        """Add ``g`` to the residual; returns the (contiguous) tensor to sparsify."""
        v = bufs["v"][name].contiguous()
        if self.backend == "torch":
            v.add_(g.reshape(v.shape))
        else:
            v_np = np_view(v)
            v_np += np_view(g.reshape(v.shape))
        bufs["v"][name] = v
        return v

    def _select(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        """Sorted flat indices to send (exact top-k here); per row for a ``[C, n]`` stack."""
        if self.backend == "torch":
            return torch_topk_indices(flat.view(-1, flat.shape[-1]), k).view(*flat.shape[:-1], k)
        return topk_indices(flat, k)

    def _after_send(
        self, bufs: dict[str, Params], name: str, idx: torch.Tensor, dense: bool
    ) -> None:
        """Extra bookkeeping on the sent positions (DGC's momentum factor masking);
        ``dense``: the tensor was sent whole."""

    def _send(self, flat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Values sent at ``idx`` (last dim) of ``flat``, taken out of it (error feedback):
        ``flat`` keeps ``picked - sent`` there, exactly 0 for fp32 and the fp16 rounding error
        with ``fp16_residual``, or 0 without it (the error is discarded)."""
        keep_error = self.cfg.fp16_residual
        if idx.dim() == 1:
            sent = codec.as_sent(flat[idx], self.values)
            if keep_error:
                flat[idx] -= sent
            else:
                flat[idx] = 0.0
            return sent
        picked = flat.gather(-1, idx)
        sent = codec.as_sent(picked, self.values)
        flat.scatter_(-1, idx, picked - sent if keep_error else torch.zeros_like(picked))
        return sent

    # -- Compressor protocol --------------------------------------------------------------
    def encode_down(self, client: int, weights: Params, view: View) -> bytes:
        """Dense fp32, or the sparse delta vs the client's copy when ``downlink`` is on."""
        self.remember(weights)
        if self.down is None:
            return codec.encode_params(weights, "fp32")
        return self.down.encode(client, weights, view, self.sparsity_at(self.round))

    def decode_down(self, client: int, payload: bytes, view: View) -> Params:
        """The weights the client has after applying the payload (sub-model shape)."""
        if self.down is None:
            return codec.decode_params(payload, self.order())
        return self.down.decode(client, payload, view, list(self.order()))

    def encode_up(self, client: int, update: Params, view: View, ctx: RoundContext) -> bytes:
        """Accumulate into the client's state, send the selected entries, keep the rest."""
        self.round = ctx.round
        self.remember(update)
        sparsity = self.sparsity_at(ctx.round)
        update = self._prepare(update, ctx)
        bufs = self.up.gather(client, view, update)
        records: list[codec.Record] = []
        for name, g in update.items():
            acc = self._accumulate(bufs, name, g)
            flat = acc.view(-1)
            n = flat.numel()
            dense = sent_whole(acc.shape, self.cfg.dense_rule, self.cfg.dense_below)
            if dense:
                idx = torch.arange(n, device=flat.device)
            else:
                idx = self._select(flat, keep_count(n, sparsity, self.ceil))
            sent = self._send(flat, idx)
            self._after_send(bufs, name, idx, dense)
            idx, sent = idx.cpu(), sent.cpu()  # the only device -> host traffic
            if dense:
                records.append(codec.Dense(sent.reshape(acc.shape), self.values))
            else:
                records.append(codec.Sparse(tuple(acc.shape), idx, sent, self.values))
            self.count(idx.numel(), n)
        for key, sub in bufs.items():
            self.up.scatter(client, view, key, sub)
        return codec.encode(records)

    def encode_up_many(
        self, clients: list[int], updates: list[Params], views: list[View], ctx: RoundContext
    ) -> list[bytes]:
        """A round's uploads. The torch backend encodes each group of clients with one
        sub-model shape as ``[C, *shape]`` stacks per tensor (payloads equal to ``encode_up``
        per client); the numpy backend, or views that are not :class:`~afd_cli.submodel.View`,
        go client by client."""
        from afd_cli.submodel import View as ModelView

        if self.backend != "torch" or not all(isinstance(v, ModelView) for v in views):
            return super().encode_up_many(clients, updates, views, ctx)
        self.round = ctx.round
        for u in updates:
            self.remember(u)
        payloads: list[bytes] = [b""] * len(clients)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(tuple(v.units[k] for k in sorted(v.units)), []).append(i)
        for members in groups.values():
            encoded = self._encode_group(
                [clients[i] for i in members],
                [updates[i] for i in members],
                [views[i] for i in members],  # type: ignore[misc]
                ctx,
            )
            for i, payload in zip(members, encoded, strict=True):
                payloads[i] = payload
        return payloads

    def _encode_group(self, clients, updates, views, ctx: RoundContext) -> list[bytes]:
        """``encode_up`` for clients of one sub-model shape, as ``[C, ...]`` device ops."""
        from afd_cli.submodel import ViewBatch

        batch, c = ViewBatch(views), len(clients)
        sparsity = self.sparsity_at(ctx.round)
        stacked = {n: torch.stack([u[n] for u in updates]) for n in updates[0]}
        stacked = self._prepare(stacked, ctx, stacked=True)
        bufs = self.up.gather_many(clients, batch, stacked)
        records: list[list[codec.Record]] = [[] for _ in clients]
        for name, g in stacked.items():
            acc = self._accumulate(bufs, name, g)
            flat = acc.view(c, -1)
            n = flat.shape[1]
            dense = sent_whole(acc.shape[1:], self.cfg.dense_rule, self.cfg.dense_below)
            if dense:
                idx = torch.arange(n, device=flat.device).expand(c, n).contiguous()
            else:
                idx = self._select(flat, keep_count(n, sparsity, self.ceil))
            sent = self._send(flat, idx)
            self._after_send(bufs, name, idx, dense)
            idx_h, sent_h = idx.cpu(), sent.cpu()  # the only device -> host traffic
            shape = tuple(acc.shape[1:])
            for row in range(c):
                if dense:
                    records[row].append(codec.Dense(sent_h[row].reshape(shape), self.values))
                else:
                    records[row].append(codec.Sparse(shape, idx_h[row], sent_h[row], self.values))
            self.count(idx.numel(), c * n)
        for key, sub in bufs.items():
            self.up.scatter_many(clients, batch, key, sub)
        return [codec.encode(r) for r in records]

    def decode_up(self, client: int, payload: bytes, view: View) -> Params:
        """Dense sub-model-shape update (zeros where nothing was sent)."""
        return codec.decode_params(payload, self.order())

    def decode_up_part(
        self, client: int, payload: bytes, view: View, names: Collection[str]
    ) -> Params:
        return codec.decode_params(payload, self.order(), keep=names)

    def state_nbytes(self) -> int:
        """Upload buffers plus downlink copies of all clients that took part."""
        down = self.down.copies.nbytes() if self.down is not None else 0
        return self.up.nbytes() + down

    def state_dict(self) -> dict[str, Any]:
        """Round, order, per-client buffers and copies (plain dicts of tensors)."""
        state = super().state_dict()
        state["up"] = self.up.state_dict()
        state["down"] = self.down.copies.state_dict() if self.down is not None else {}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        super().load_state_dict(state)
        self.up.load_state_dict(state.get("up", {}))
        if self.down is not None:
            self.down.copies.load_state_dict(state.get("down", {}))
