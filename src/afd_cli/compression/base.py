"""The Compressor interface: everything the round loop knows about what goes on the wire.

A compressor turns the server's (sub-)model into bytes for a client and a client's update into
bytes for the server, keeping whatever per-client state it needs (DGC residuals, the client's
last copy for downlink deltas). The round loop only ever sees ``bytes`` and ``len()`` of them.

Tensors are handed over in *sub-model* coordinates together with the client's
:class:`~afd_cli.submodel.View`, so state that must outlive a round (kept in full-model
coordinates) can be gathered and scattered back without the compressor knowing how the
sub-model was cut.

A compressor may also offer ``encode_up_many(clients, updates, views, ctx) -> list[bytes]``,
the uploads of a whole round at once (the sparse ones stack a shape group's state as
``[C, n]`` on the device). :func:`encode_up_many` calls it when present, else
``encode_up`` per client; either way the payloads are the real bytes that get counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

Params = dict[str, torch.Tensor]


class View(Protocol):
    """How one client's sub-model sits inside the full model (identity for FedAvg)."""

    def extract(self, full: Params) -> Params:
        """Full-shape tensors -> sub-model-shape tensors (the kept entries, as new tensors)."""
        ...

    def scatter_(self, full: Params, sub: Params) -> None:
        """Write sub-model-shape values into the kept entries of ``full``, in place."""
        ...


class Compressor(Protocol):
    """Encodes the two directions of one client exchange; may keep per-client state."""

    name: str

    def encode_down(self, client: int, weights: Params, view: View) -> bytes:
        """Server side: the sub-model weights this client should start from -> payload."""
        ...

    def decode_down(self, client: int, payload: bytes, view: View) -> Params:
        """Client side: payload -> the sub-model weights the client actually trains from."""
        ...

    def encode_up(self, client: int, update: Params, view: View, ctx: RoundContext) -> bytes:
        """Client side: its update (trained - received, sub-model shape) -> payload."""
        ...

    def decode_up(self, client: int, payload: bytes, view: View) -> Params:
        """Server side: payload -> the sub-model-shape update to aggregate."""
        ...

    def end_round(self) -> dict[str, float]:
        """Close the round; returns per-round stats for the CSV (at least ``sparsity``)."""
        ...

    def state_nbytes(self) -> int:
        """Bytes of memory held in per-client state (reported, must stay bounded)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RoundContext:
    """What a compressor may know about the round it runs in."""

    __slots__ = ("round", "clients_in_round")

    def __init__(self, round: int, clients_in_round: int) -> None:
        self.round = round  # 0-based round index (drives DGC warm-up)
        self.clients_in_round = clients_in_round  # N in DGC's local clipping c * N^-1/2


def encode_up_many(
    compressor: Compressor,
    clients: Sequence[int],
    updates: Sequence[Params],
    views: Sequence[View],
    ctx: RoundContext,
) -> list[bytes]:
    """A round's upload payloads, in client order: the compressor's batched
    ``encode_up_many`` when it has one, else ``encode_up`` per client."""
    if not (len(clients) == len(updates) == len(views)):
        raise ValueError("encode_up_many: clients, updates and views differ in length")
    many = getattr(compressor, "encode_up_many", None)
    if many is not None:
        return many(list(clients), list(updates), list(views), ctx)
    return [
        compressor.encode_up(c, u, v, ctx) for c, u, v in zip(clients, updates, views, strict=True)
    ]
