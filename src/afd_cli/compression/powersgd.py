"""``compression=powersgd``: PowerSGD (Vogels et al. 2019, "PowerSGD: Practical Low-Rank
Gradient Compression for Distributed Optimization", Algorithm 1), rank ``r``, error feedback,
warm start -- one client at a time, since federated learning has no all-reduce.

Per client and tensor of two or more dimensions, ``M = (update + e)`` viewed as
``[rows, cols]`` (``cols`` = the product of the other dimensions), with the client's
warm-start ``Q`` (``[cols, r]``):

    Q = orth(Q);  P = M Q;  P = orth(P);  Q = M^T P;  sent = P Q^T;  e = M - sent

which is the math of PyTorch's ``powerSGD_hook`` (torch/distributed/algorithms/
ddp_comm_hooks/powerSGD_hook.py: warm-start orthogonalisation line 544, ``P = M Q`` line
565, ``orth(P)`` line 595, ``Q = M^T P`` line 599, ``P Q^T`` line 618, error line 637, in
torch 2.14) with a world of one: here each client orthogonalises its own ``P``, where the
hook orthogonalises the all-reduced sum. Its ``_orthogonalize`` (Gram-Schmidt for ``r <= 2``,
QR above) and ``_should_compress`` (compress when ``r (rows + cols) * 2 < rows * cols``) are
used as they are.

**What goes on the wire**: the client sends ``P`` (after its local orthogonalisation) and the
new ``Q``, both fp32: a ``LOWRANK`` record is ``rank:u8 | rows * r f32 | cols * r f32`` after
:mod:`.codec`'s tag and dims, so ``4 r (rows + cols)`` bytes plus the header. The server
decodes ``P Q^T`` and averages those. Tensors of one dimension, under ``dense_below``
entries, or not worth compressing go dense fp32.

**Warm start under rare participation.** In the paper every worker reuses the previous
step's (all-reduced, hence shared) ``Q``. A federated client takes part in ~1 round in 10, so
here **each client keeps its own ``Q``** from the last time it took part, in full-model
coordinates in the run's store (``[cols, r]`` per tensor, kept per column of the full model,
so a sub-model with other input units reuses the columns it shares and draws fresh ones for
the rest); the warm start is as old as the client's last round. This costs nothing on the
wire and the ``Q`` belongs to the same residual ``e`` it was fitted to. A client's first
``Q`` (and any column it has never had) is standard normal from a seed of ``(run seed,
round, client, direction)``. The alternative, a server-broadcast ``Q`` fitted to the global
update, would add ``4 r cols`` bytes to every download and track the global update rather
than the client's residual.

With ``downlink=true`` the download is the same code of ``current - copy`` per client
(:mod:`.delta`), with the server's own per-client warm start ``Q`` (the client holds the
same ``Q``, it decoded it).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import registry
from ..options import option
from . import codec
from .base import Params, View
from .coded import DOWN, CodedCompressor, CodedOptions
from .state import ClientStore

try:
    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import (
        _orthogonalize,
        _should_compress,
    )
except ImportError:  # a torch built without torch.distributed: the same maths, by QR

    def _orthogonalize(matrices: torch.Tensor, epsilon: float = 0) -> None:
        matrices.copy_(torch.linalg.qr(matrices).Q)

    def _should_compress(rows: int, cols: int, rank: int, rate: float) -> tuple[bool, int, int]:
        return (rows + cols) * rank * rate < rows * cols, rows * cols, (rows + cols) * rank


MIN_COMPRESSION_RATE = 2  # powerSGD_hook's default: compress when it at least halves a tensor
EPSILON = 1e-8  # orthogonalisation epsilon: an all-zero column stays finite (the hook's advice)


@dataclass(frozen=True)
class LowRank:
    """``p @ q.T`` reshaped to ``shape`` (``p``: ``[rows, r]``, ``q``: ``[cols, r]``, fp32)."""

    shape: tuple[int, ...]
    p: torch.Tensor
    q: torch.Tensor

    def to_dense(self) -> torch.Tensor:
        return (self.p @ self.q.T).reshape(self.shape)


def _put(out: bytearray, rec: LowRank) -> None:
    out += struct.pack("<B", rec.p.shape[1])
    out += rec.p.detach().to("cpu", torch.float32).numpy().astype("<f4").tobytes()
    out += rec.q.detach().to("cpu", torch.float32).numpy().astype("<f4").tobytes()


def _get(buf: memoryview, pos: int, shape: tuple[int, ...]) -> tuple[LowRank, int]:
    r = buf[pos]
    rows, cols = shape[0], math.prod(shape[1:])
    pos += 1
    p = np.frombuffer(buf, dtype="<f4", count=rows * r, offset=pos).reshape(rows, r)
    pos += 4 * rows * r
    q = np.frombuffer(buf, dtype="<f4", count=cols * r, offset=pos).reshape(cols, r)
    pos += 4 * cols * r
    as_t = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return LowRank(shape, as_t(p), as_t(q)), pos


codec.register_kind(codec.Kind.LOWRANK, LowRank, _put, _get)


def power_step(m: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One warm-started power iteration of ``powerSGD_hook`` on ``m`` (``[rows, cols]``) from
    ``q`` (``[cols, r]``): returns ``(P, Q)`` with ``P`` orthonormal and ``m ~ P Q^T``."""
    q = q.clone().unsqueeze(0)
    _orthogonalize(q, EPSILON)
    p = (m @ q[0]).unsqueeze(0)
    _orthogonalize(p, EPSILON)
    return p[0], m.T @ p[0]


class _Columns:
    """A view of per-column ``[cols_full, r]`` buffers: the sub-model's columns of each."""

    def __init__(self, cols: dict[str, torch.Tensor | None]) -> None:
        self.cols = cols

    def extract(self, full: Params) -> Params:
        return {
            n: full[n].clone() if c is None else full[n][c].clone() for n, c in self.cols.items()
        }

    def scatter_(self, full: Params, sub: Params) -> None:
        for n, s in sub.items():
            c = self.cols[n]
            if c is None:
                full[n].copy_(s)
            else:
                full[n][c] = s


@dataclass
class PowerSGDOptions(CodedOptions):
    """PowerSGD's rank."""

    rank: int = option(2, "rank r of the approximation P Q^T", ge=1, le=255)


@registry.compressor("powersgd")
class PowerSGDCompressor(CodedCompressor):
    """Rank-``r`` factors with the client's residual and warm-start ``Q``; optionally downlink."""

    options = PowerSGDOptions
    feedback = True

    def __init__(self, opts: PowerSGDOptions, setup: Any) -> None:
        super().__init__(opts, setup)
        self.rank = opts.rank
        self._qs: dict[int, ClientStore] = {}  # warm starts per direction

    def _full_shapes(self, view: View, tensors: Params) -> dict[str, tuple[int, ...]]:
        shapes = self._shapes or getattr(view, "full_shapes", None)
        if shapes is None:
            return {n: tuple(t.shape) for n, t in tensors.items()}
        return {n: tuple(int(d) for d in s) for n, s in shapes.items()}

    def _store(self, direction: int, full: dict[str, tuple[int, ...]]) -> ClientStore:
        if direction not in self._qs:
            shapes = {n: (math.prod(s[1:]), self.rank) for n, s in full.items() if len(s) >= 2}
            name = "down_q" if direction == DOWN else "up_q"
            self._qs[direction] = ClientStore(
                ("q",), shapes, fill=math.nan, store=self.store, name=name
            )
        return self._qs[direction]

    @staticmethod
    def _columns(view: View, name: str, full: tuple[int, ...]) -> torch.Tensor | None:
        """Which full-model columns the sub-model's tensor ``name`` has (None: all)."""
        if getattr(view, "is_full", False):
            return None
        where = view.extract({name: torch.arange(math.prod(full)).reshape(full)})[name]
        return where.reshape(where.shape[0], -1)[0] % math.prod(full[1:])

    def code(self, client: int, view: View, tensors: Params, direction: int) -> dict[str, Any]:
        """``P`` and ``Q`` per tensor worth compressing (dense fp32 for the others)."""
        out: dict[str, Any] = {}
        work: dict[str, tuple[int, int, int]] = {}
        for name, t in tensors.items():
            rows = t.shape[0] if t.dim() >= 2 else 0
            cols = t.numel() // rows if rows else 0
            r = min(rows, cols, self.rank)
            if t.dim() < 2 or not _should_compress(rows, cols, r, MIN_COMPRESSION_RATE)[0]:
                out[name] = codec.Dense(t, "fp32")
            else:
                work[name] = (rows, cols, r)
        if not work:
            return out
        full = self._full_shapes(view, tensors)
        qstore = self._store(direction, full)
        cols_of = _Columns({n: self._columns(view, n, full[n]) for n in work})
        like = {n: torch.zeros(c, self.rank) for n, (_, c, _) in work.items()}
        warm = qstore.gather(client, cols_of, like)["q"]
        seeds = dict(zip(work, self.seeds(client, direction, len(work)), strict=True))
        new_q: Params = {}
        for name, (rows, cols, r) in work.items():
            q = warm[name]
            fresh = torch.isnan(q).any(dim=1)
            if bool(fresh.any()):
                gen = torch.Generator().manual_seed(int(seeds[name]))
                q[fresh] = torch.randn(int(fresh.sum()), self.rank, generator=gen)
            p, q_new = power_step(tensors[name].reshape(rows, cols), q[:, :r])
            out[name] = LowRank(tuple(tensors[name].shape), p.contiguous(), q_new.contiguous())
            new_q[name] = q_new if r == self.rank else torch.cat((q_new, q[:, r:]), dim=1)
        qstore.scatter(client, cols_of, "q", new_q)
        return out

    def sent_entries(self, record: Any) -> int:
        """Entries of ``P`` and ``Q`` (or the dense tensor)."""
        if isinstance(record, LowRank):
            return record.p.numel() + record.q.numel()
        return record.values.numel()

    def state_nbytes(self) -> int:
        """Residuals, copies and warm-start ``Q`` of the clients that took part."""
        return super().state_nbytes() + sum(s.nbytes() for s in self._qs.values())

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["q"] = {d: s.state_dict() for d, s in self._qs.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for d, s in state.get("q", {}).items():
            self._qs.pop(int(d), None)
            if "store" in s:  # a reference: the run's store holds it; rebuilt on first use
                continue
            if s:
                first = next(iter(s.values()))["q"]
                shapes = {n: tuple(t.shape) for n, t in first.items()}
                store = ClientStore(
                    ("q",),
                    shapes,
                    fill=math.nan,
                    store=self.store,
                    name="down_q" if int(d) == DOWN else "up_q",
                )
                store.load_state_dict(s)
                self._qs[int(d)] = store
