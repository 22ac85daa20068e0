"""Plain top-k sparsification of uploads with error feedback: the baseline DGC improves on.

Per client a residual ``v`` (full-model coordinates) accumulates the update; the ``k``
largest ``|v|`` are sent and removed from ``v``, the rest waits for later rounds. No
warm-up, clipping or momentum. Also the template for :mod:`.dgc`, which overrides the hooks
(``sparsity_at``, ``_prepare``, ``_accumulate``, ``_select``, ``_after_send``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from . import codec
from .base import Params, RoundContext, View
from .dense import DenseCompressor
from .downlink import SparseDownlink
from .sparsify import keep_count, topk_indices
from .state import ClientStore, Shapes, np_view

if TYPE_CHECKING:
    from afd_cli.config import CompressionConfig


class TopKCompressor(DenseCompressor):
    """Top-k uploads with residual; dense fp32 downloads, or sparse deltas when ``downlink``."""

    buffers: tuple[str, ...] = ("v",)

    def __init__(self, cfg: CompressionConfig, shapes: Shapes | None = None) -> None:
        super().__init__(cfg.name, "fp32", shapes)
        if cfg.values not in ("fp32", "fp16"):
            raise ValueError(f"compression.values must be fp32 or fp16, got {cfg.values!r}")
        self.cfg = cfg
        self.values = cfg.values
        self.up = ClientStore(self.buffers, shapes)
        self.down = SparseDownlink(cfg.values, cfg.dense_below, shapes) if cfg.downlink else None

    # -- hooks ----------------------------------------------------------------------------
    def sparsity_at(self, round: int) -> float:
        """Fraction of entries not sent in ``round`` (constant for plain top-k)."""
        return self.cfg.sparsity

    def _prepare(self, update: Params, ctx: RoundContext) -> Params:
        """The update as fp32 CPU tensors (DGC clips here)."""
        return {n: t.detach().to("cpu", torch.float32).contiguous() for n, t in update.items()}

    def _accumulate(self, bufs: dict[str, Params], name: str, g: torch.Tensor) -> torch.Tensor:
        """Add ``g`` to the residual; returns the (contiguous) tensor to sparsify."""
        v = bufs["v"][name].contiguous()
        v_np = np_view(v)
        v_np += np_view(g.reshape(v.shape))
        bufs["v"][name] = v
        return v

    def _select(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        """Sorted flat indices to send (exact top-k here)."""
        return topk_indices(flat, k)

    def _after_send(self, bufs: dict[str, Params], name: str, idx: torch.Tensor) -> None:
        """Extra bookkeeping on the sent positions (DGC's momentum factor masking)."""

    # -- Compressor protocol --------------------------------------------------------------
    def encode_down(self, client: int, weights: Params, view: View) -> bytes:
        """Dense fp32, or the sparse delta vs the client's copy when ``downlink`` is on."""
        self._remember(weights)
        if self.down is None:
            return codec.encode_params(weights, "fp32")
        return self.down.encode(client, weights, view, self.sparsity_at(self._round))

    def decode_down(self, client: int, payload: bytes, view: View) -> Params:
        """The weights the client has after applying the payload (sub-model shape)."""
        if self.down is None:
            return codec.decode_params(payload, self._order())
        return self.down.decode(client, payload, view, list(self._order()))

    def encode_up(self, client: int, update: Params, view: View, ctx: RoundContext) -> bytes:
        """Accumulate into the client's state, send the selected entries, keep the rest."""
        self._round = ctx.round
        self._remember(update)
        sparsity = self.sparsity_at(ctx.round)
        update = self._prepare(update, ctx)
        bufs = self.up.gather(client, view, update)
        records: list[codec.Record] = []
        for name, g in update.items():
            acc = self._accumulate(bufs, name, g)
            flat = acc.view(-1)
            n = flat.numel()
            dense = n < self.cfg.dense_below
            idx = torch.arange(n) if dense else self._select(flat, keep_count(n, sparsity))
            sent = codec.as_sent(flat[idx], self.values)
            flat[idx] -= sent  # exactly 0 for fp32; the fp16 rounding error stays as residual
            self._after_send(bufs, name, idx)
            if dense:
                records.append(codec.Dense(sent.reshape(acc.shape), self.values))
            else:
                records.append(codec.Sparse(tuple(acc.shape), idx, sent, self.values))
            self._count(idx.numel(), n)
        for key, sub in bufs.items():
            self.up.scatter(client, view, key, sub)
        return codec.encode(records)

    def decode_up(self, client: int, payload: bytes, view: View) -> Params:
        """Dense sub-model-shape update (zeros where nothing was sent)."""
        return codec.decode_params(payload, self._order())

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
