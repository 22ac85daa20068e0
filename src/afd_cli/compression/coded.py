"""What EF-signSGD, QSGD and PowerSGD share: a per-tensor code, optional error feedback on the
upload, and the same code on the downlink as deltas against each client's copy.

A subclass supplies :meth:`CodedCompressor.code`, ``{name: tensor} -> {name: record}`` for
the tensors of ``dense_below`` entries or more (a record of a kind registered with
:func:`.codec.register_kind`, with ``to_dense()``); smaller tensors (biases) go dense fp32.

* **upload**: with ``feedback`` (EF-signSGD, PowerSGD) the client adds its residual ``e`` to
  the update, sends the code of ``p = update + e`` and keeps ``e = p - decoded``, in
  full-model coordinates in the run's store (:class:`~.state.ClientStore`: it survives
  sub-models, checkpoints and resume, and spills to disk); without (QSGD, unbiased) it
  sends the code of the update.
* **download** (``downlink=true``): :class:`~.delta.DeltaDownlink`, the code of
  ``current - copy`` per client; otherwise dense fp32.

Randomness (QSGD's dithering, PowerSGD's first factors) comes from per-tensor seeds that are
a pure function of ``(run seed, round, client, direction)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..options import ConfigError, option
from . import codec
from .base import CompressionOptions, Compressor, Params, RoundContext, View
from .delta import DeltaDownlink, dense_of
from .downlink import FIRST_COPY
from .state import ClientStore

if TYPE_CHECKING:
    from ..registry import Setup

UP, DOWN = 0x55, 0xD0  # directions, mixed into the per-message seeds


@dataclass
class CodedOptions(CompressionOptions):
    """Keys every per-tensor code reads."""

    dense_below: int = option(1024, "tensors with fewer entries go dense fp32 (biases)", ge=0)
    downlink: bool = option(
        False, "also code the download (delta vs the client's copy)", strict=True
    )
    first_copy: str = option(
        "fp32",
        "downlink: format of a client's first copy of a tensor",
        choices=FIRST_COPY,
        strict=True,
    )

    def check(self, prefix: str) -> None:
        if self.first_copy != "fp32" and not self.downlink:
            raise ConfigError(
                f"{prefix}first_copy={self.first_copy} needs {prefix}downlink=true (it formats "
                f"the downlink's first copies)"
            )


class CodedCompressor(Compressor):
    """A per-tensor code on the upload (with or without error feedback) and the downlink."""

    options = CodedOptions
    feedback = False  # keep the client's residual e (error feedback) on the upload

    def __init__(self, opts: CodedOptions, setup: Setup) -> None:
        super().__init__(opts, setup)
        self.dense_below = opts.dense_below
        shapes, store = self._shapes, self.store
        self.up = ClientStore(("e",), shapes, store=store, name="up") if self.feedback else None
        self.down = (
            DeltaDownlink(opts.dense_below, shapes, opts.first_copy, store, self.down_gain)
            if opts.downlink
            else None
        )

    # -- the code: what a subclass implements ---------------------------------------------
    def code(self, client: int, view: View, tensors: Params, direction: int) -> dict[str, Any]:
        """Records of ``tensors`` (fp32, host, sub-model shape; each >= ``dense_below``)."""
        raise NotImplementedError

    def sent_entries(self, record: Any) -> int:
        """Entries a record sends (the ``sparsity`` column): all of them by default."""
        return int(dense_of(record).numel())

    def down_gain(self, record: Any) -> float:
        """The share of a downlink record the client applies (1: all of it)."""
        return 1.0

    # -- helpers --------------------------------------------------------------------------
    def seeds(self, client: int, direction: int, count: int) -> list[int]:
        """One 32-bit seed per tensor of a message, a pure function of the run's position."""
        rng = np.random.default_rng([self.seed, self.round, client, direction])
        return rng.integers(0, 2**32, size=count, dtype=np.uint64).tolist()

    # -- Compressor protocol --------------------------------------------------------------
    def encode_down(self, client: int, weights: Params, view: View) -> bytes:
        """Dense fp32, or the code of the delta vs the client's copy with ``downlink``."""
        self.remember(weights)
        if self.down is None:
            return codec.encode_params(weights, "fp32")
        return self.down.encode(
            client, weights, view, lambda diffs: self.code(client, view, diffs, DOWN)
        )

    def decode_down(self, client: int, payload: bytes, view: View) -> Params:
        """The weights the client trains from."""
        if self.down is None:
            return codec.decode_params(payload, self.order())
        return self.down.decode(client, payload, view, list(self.order()))

    def encode_up(self, client: int, update: Params, view: View, ctx: RoundContext) -> bytes:
        """The code of the update (plus the client's residual with ``feedback``)."""
        self.round = ctx.round
        self.remember(update)
        p = {n: t.detach().to("cpu", torch.float32).contiguous() for n, t in update.items()}
        bufs = self.up.gather(client, view, p)["e"] if self.up is not None else None
        if bufs is not None:
            p = {n: t + bufs[n].reshape(t.shape) for n, t in p.items()}
        big = {n: t for n, t in p.items() if t.numel() >= self.dense_below}
        coded = self.code(client, view, big, UP) if big else {}
        records: list[Any] = []
        for name, t in p.items():
            n = t.numel()
            if name in coded:
                rec = coded[name]
                records.append(rec)
                self.count(self.sent_entries(rec), n)
                if bufs is not None:
                    bufs[name] = t - dense_of(rec).reshape(t.shape)
            else:
                records.append(codec.Dense(t, "fp32"))
                self.count(n, n)
                if bufs is not None:
                    bufs[name] = torch.zeros_like(t)
        if bufs is not None and self.up is not None:
            self.up.scatter(client, view, "e", bufs)
        return codec.encode(records)

    def decode_up(self, client: int, payload: bytes, view: View) -> Params:
        """The decoded update (sub-model shape); needs no per-client state."""
        return codec.decode_params(payload, self.order())

    # -- state ----------------------------------------------------------------------------
    def state_nbytes(self) -> int:
        """Residuals plus downlink copies of the clients that took part."""
        up = self.up.nbytes() if self.up is not None else 0
        return up + (self.down.copies.nbytes() if self.down is not None else 0)

    def state_dict(self) -> dict[str, Any]:
        """Round, order, per-client residuals and copies (references into the run's store)."""
        state = super().state_dict()
        state["up"] = self.up.state_dict() if self.up is not None else {}
        state["down"] = self.down.copies.state_dict() if self.down is not None else {}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        super().load_state_dict(state)
        if self.up is not None:
            self.up.load_state_dict(state.get("up", {}))
        if self.down is not None:
            self.down.copies.load_state_dict(state.get("down", {}))
