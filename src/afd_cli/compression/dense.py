"""Whole-tensor compressors: ``none`` (fp32), ``fp16`` and ``q8``, in both directions.

Downloads are quantised too, and ``decode_down`` returns the dequantised weights: that is
what a client really trains from, so the accuracy cost of the format shows up in the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import codec
from .base import Params, RoundContext, View
from .state import Shapes, StateStore

if TYPE_CHECKING:
    import torch

    from afd_cli.config import CompressionConfig


class DenseCompressor:
    """Every tensor dense in ``fmt`` (fp32 | fp16 | q8); stateless apart from the round.

    Also the base of the sparse compressors: it holds the parameter order (names are not on
    the wire; both sides know the model), the round counter and the upload sparsity stats.
    """

    def __init__(self, name: str, fmt: str = "fp32", shapes: Shapes | None = None) -> None:
        if fmt not in ("fp32", "fp16", "q8"):
            raise ValueError(f"unknown dense format {fmt!r}")
        self.name = name
        self.fmt = fmt
        self._shapes = dict(shapes) if shapes is not None else None
        self._names: tuple[str, ...] | None = tuple(shapes) if shapes is not None else None
        self._round = 0  # current round; drives warm-up of downloads before any upload
        self._sent = 0  # upload entries sent this round
        self._total = 0  # upload entries offered this round

    @classmethod
    def from_config(
        cls,
        cfg: CompressionConfig,
        shapes: Shapes | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        store: StateStore | None = None,  # no per-client state
    ) -> DenseCompressor:
        """``compression=none`` is fp32; fp16 and q8 are named after their format."""
        return cls(cfg.name, "fp32" if cfg.name == "none" else cfg.name, shapes)

    # -- parameter order ------------------------------------------------------------------
    def _remember(self, params: Params) -> None:
        """Learn the wire order from the first tensors seen (the model's parameter order)."""
        names = tuple(params)
        if self._names is None or set(self._names) != set(names):
            self._names = names
        elif names != self._names:
            raise ValueError("tensors must always come in the same (model) order")

    def _order(self) -> Sequence[str]:
        if self._names is None:
            raise RuntimeError("decode called before any encode: parameter order unknown")
        return self._names

    def _count(self, sent: int, total: int) -> None:
        self._sent += sent
        self._total += total

    def upload_counts(self) -> tuple[int, int]:
        """Upload entries (sent, offered) so far this round; a distributed run adds them up
        over its processes and hands the totals back with :meth:`set_upload_counts`."""
        return self._sent, self._total

    def set_upload_counts(self, sent: int, offered: int) -> None:
        """This round's counts for :meth:`end_round` (the totals over all processes)."""
        self._sent, self._total = sent, offered

    # -- Compressor protocol --------------------------------------------------------------
    def encode_down(self, client: int, weights: Params, view: View) -> bytes:
        """Whole sub-model in ``fmt``."""
        self._remember(weights)
        return codec.encode_params(weights, self.fmt)

    def decode_down(self, client: int, payload: bytes, view: View) -> Params:
        """The (dequantised) weights the client trains from."""
        return codec.decode_params(payload, self._order())

    def encode_up(self, client: int, update: Params, view: View, ctx: RoundContext) -> bytes:
        """Whole update in ``fmt``."""
        self._round = ctx.round
        self._remember(update)
        n = sum(t.numel() for t in update.values())
        self._count(n, n)
        return codec.encode_params(update, self.fmt)

    def encode_up_many(
        self, clients: list[int], updates: list[Params], views: list[View], ctx: RoundContext
    ) -> list[bytes]:
        """A round's uploads; here ``encode_up`` per client, in order."""
        return [
            self.encode_up(c, u, v, ctx) for c, u, v in zip(clients, updates, views, strict=True)
        ]

    def decode_up(self, client: int, payload: bytes, view: View) -> Params:
        """The (dequantised) update to aggregate."""
        return codec.decode_params(payload, self._order())

    def end_round(self) -> dict[str, float]:
        """``sparsity`` = fraction of offered upload entries not sent this round; resets."""
        sparsity = 1.0 - self._sent / self._total if self._total else 0.0
        self._sent = self._total = 0
        self._round += 1
        return {"sparsity": sparsity}

    def state_nbytes(self) -> int:
        """Per-client state held (none here)."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        """Round counter and parameter order (enough to resume)."""
        return {"round": self._round, "names": list(self._names or [])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self._round = int(state.get("round", 0))
        names = state.get("names") or None
        if names:
            self._names = tuple(names)
