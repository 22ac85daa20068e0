"""The Compressor contract: everything the round loop, the checkpoint and torchrun know about
what goes on the wire.

A compressor turns the server's (sub-)model into bytes for a client and a client's update into
bytes for the server, keeping whatever per-client state it needs (DGC residuals, the client's
last copy for downlink deltas). The round loop only ever sees ``bytes`` and ``len()`` of them.

Tensors are handed over in *sub-model* coordinates together with the client's
:class:`~afd_cli.submodel.View`, so state that must outlive a round (kept in full-model
coordinates, in the run's :class:`~afd_cli.state.StateStore`) can be gathered and scattered
back without the compressor knowing how the sub-model was cut.

What the loop calls, in order, each round: :meth:`Compressor.begin_round`; per client
:meth:`~Compressor.encode_down` then :meth:`~Compressor.decode_down`; per chunk of clients
:meth:`~Compressor.encode_up_many` (default: :meth:`~Compressor.encode_up` per client); per
upload :meth:`~Compressor.decode_up`, exactly once, in client order; then
:meth:`~Compressor.end_round`. The checkpoint calls :meth:`~Compressor.state_dict` /
:meth:`~Compressor.load_state_dict`; torchrun adds up :meth:`~Compressor.upload_counts`
over its processes and hands the totals back with :meth:`~Compressor.set_upload_counts`.
Decoding an upload must need no per-client state (under torchrun every process decodes every
upload). A subclass implements the four codec methods; the base does the rest.

A compressor is one module with its options dataclass and one
``conf/compression/<name>.yaml``::

    @registry.compressor("sign")
    class Sign(Compressor):
        options = SignOptions
        ...

and is built once per run as ``cls(options, setup)``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from ..options import Options, option

if TYPE_CHECKING:
    from ..registry import Setup

Params = dict[str, torch.Tensor]


@dataclass
class CompressionOptions(Options):
    """The keys every compressor reads: the server's step on the round's aggregate
    (:mod:`afd_cli.federated.server`), which works with any codec."""

    server_momentum: float = option(
        0.0, "server momentum b on the aggregate (FetchSGD / FedAvgM); 0 = off", ge=0, lt=1
    )
    server_lr: float = option(1.0, "server step size on the (momentum) aggregate", gt=0)


class View(Protocol):
    """How one client's sub-model sits inside the full model (identity for FedAvg)."""

    def extract(self, full: Params) -> Params:
        """Full-shape tensors -> sub-model-shape tensors (the kept entries, as new tensors)."""
        ...

    def scatter_(self, full: Params, sub: Params) -> None:
        """Write sub-model-shape values into the kept entries of ``full``, in place."""
        ...


class RoundContext:
    """What a compressor may know about the round it runs in."""

    __slots__ = ("round", "clients_in_round")

    def __init__(self, round: int, clients_in_round: int) -> None:
        self.round = round  # 0-based round index (drives DGC warm-up)
        self.clients_in_round = clients_in_round  # N in DGC's local clipping c * N^-1/2


class Compressor:
    """Base of every compressor: the parameter order, the round, the upload sparsity counts,
    and defaults for everything but the codec methods."""

    options: ClassVar[type[Options]] = CompressionOptions

    def __init__(self, opts: Options, setup: Setup) -> None:
        self.name = opts.name
        self.opts = opts
        self.seed = setup.seed
        self.store = setup.store
        self.device = torch.device(setup.device)  # the model's device
        self._shapes = dict(setup.shapes) if setup.shapes else None
        self._names: tuple[str, ...] | None = tuple(setup.shapes) if setup.shapes else None
        self.round = 0  # the current round (0-based), set by begin_round
        self._sent = 0  # upload entries sent this round
        self._total = 0  # upload entries offered this round

    # -- the codec: what a subclass implements ------------------------------------------------
    def encode_down(self, client: int, weights: Params, view: View) -> bytes:
        """Server side: the sub-model weights this client should start from -> payload."""
        raise NotImplementedError

    def decode_down(self, client: int, payload: bytes, view: View) -> Params:
        """Client side: payload -> the sub-model weights the client actually trains from."""
        raise NotImplementedError

    def encode_up(self, client: int, update: Params, view: View, ctx: RoundContext) -> bytes:
        """Client side: its update (trained - received, sub-model shape) -> payload. Report
        the entries it sends with :meth:`count` (for the ``sparsity`` column)."""
        raise NotImplementedError

    def decode_up(self, client: int, payload: bytes, view: View) -> Params:
        """Server side: payload -> the sub-model-shape update to aggregate."""
        raise NotImplementedError

    def decode_up_part(
        self, client: int, payload: bytes, view: View, names: Collection[str]
    ) -> Params:
        """:meth:`decode_up` cut to the tensors ``names`` (the ones this process aggregates
        under torchrun); override to skip making the others."""
        return {k: v for k, v in self.decode_up(client, payload, view).items() if k in names}

    # -- the round ------------------------------------------------------------------------------
    def begin_round(self, round: int) -> None:
        """Round ``round`` (0-based) starts: called before its first download."""
        self.round = round

    def encode_up_many(
        self, clients: list[int], updates: list[Params], views: list[View], ctx: RoundContext
    ) -> list[bytes]:
        """A chunk of uploads, in client order; override to encode them together (the sparse
        compressors stack a shape group as ``[C, n]`` on a GPU). Default: one by one."""
        return [
            self.encode_up(c, u, v, ctx) for c, u, v in zip(clients, updates, views, strict=True)
        ]

    def end_round(self) -> dict[str, float]:
        """Close the round; per-round stats for the CSV: ``sparsity`` = fraction of offered
        upload entries not sent."""
        sparsity = 1.0 - self._sent / self._total if self._total else 0.0
        self._sent = self._total = 0
        self.round += 1
        return {"sparsity": sparsity}

    def count(self, sent: int, offered: int) -> None:
        """Upload entries sent out of those offered (called by ``encode_up``)."""
        self._sent += sent
        self._total += offered

    def upload_counts(self) -> tuple[int, int]:
        """Upload entries (sent, offered) so far this round (torchrun adds them up)."""
        return self._sent, self._total

    def set_upload_counts(self, sent: int, offered: int) -> None:
        """This round's counts for :meth:`end_round` (the totals over all processes)."""
        self._sent, self._total = sent, offered

    # -- parameter order: names are not on the wire, both sides know the model ----------------
    def remember(self, params: Params) -> None:
        """Learn the wire order from the first tensors seen (the model's parameter order)."""
        names = tuple(params)
        if self._names is None or set(self._names) != set(names):
            self._names = names
        elif names != self._names:
            raise ValueError("tensors must always come in the same (model) order")

    def order(self) -> Sequence[str]:
        if self._names is None:
            raise RuntimeError("decode called before any encode: parameter order unknown")
        return self._names

    # -- state ----------------------------------------------------------------------------------
    def state_nbytes(self) -> int:
        """Bytes held in per-client state, memory and disk (reported in summary.json)."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        """Round counter and parameter order; subclasses add their state (per-client state in
        the run's store is checkpointed by the store and referenced by namespace)."""
        return {"round": self.round, "names": list(self._names or [])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.round = int(state.get("round", 0))
        names = state.get("names") or None
        if names:
            self._names = tuple(names)


def encode_up_many(
    compressor: Compressor,
    clients: Sequence[int],
    updates: Sequence[Params],
    views: Sequence[View],
    ctx: RoundContext,
) -> list[bytes]:
    """A chunk's upload payloads, in client order (checks the lengths agree)."""
    if not (len(clients) == len(updates) == len(views)):
        raise ValueError("encode_up_many: clients, updates and views differ in length")
    return compressor.encode_up_many(list(clients), list(updates), list(views), ctx)
