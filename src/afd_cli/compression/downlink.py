"""Sparse server -> client deltas against what each client already holds.

The server keeps, per client, a full-coordinate copy of the weights that client last
received (NaN = never received). A download sends the top-k of ``current - copy`` per
tensor; whatever is not sent stays in that difference, so the copy *is* the server-side
residual (error feedback) -- a separate residual buffer would count it twice.

Never-received entries are always sent (as absolute values); a tensor the client has never seen
at all (first contact) goes dense in ``first_copy`` (fp32 | fp16 | q8), and tensors below
``dense_below`` (of one dimension with ``dense_rule=ndim``) go as a dense difference (in
``first_copy``, or in the value format when ``first_copy`` is fp32). A first copy in fp16 or q8
is what the client decodes, so that is what the copy holds: the rounding error stays in
``current - copy`` and is sent later like any other residual, and a q8 first copy costs a
quarter of the fp32 one (6.65 MB -> 1.66 MB for
cnn_mnist). In the simulation client and server share
the one copy: ``encode`` only reads it, ``decode`` applies the payload to it and returns
the client's weights in sub-model shape. So the copy always matches what the client has
actually decoded, and each payload must be decoded exactly once, in order.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import codec
from .base import Params, View
from .sparsify import keep_count, sent_whole, topk_indices
from .state import ClientStore, Shapes, StateStore, np_view

FIRST_COPY = ("fp32", "fp16", "q8")


class CopyDownlink:
    """What the delta downlinks share (this module's top-k, :mod:`.delta`'s lossy codes): the
    server's copy of the weights each client last decoded (NaN: never received), in
    full-model coordinates in the run's store, and how a decoded payload updates it."""

    def __init__(self, shapes: Shapes | None, first_copy: str, store: StateStore | None) -> None:
        if first_copy not in FIRST_COPY:
            raise ValueError(f"first_copy must be fp32, fp16 or q8, got {first_copy!r}")
        self.first_copy = first_copy
        self.copies = ClientStore(("w",), shapes, fill=math.nan, store=store, name="down")

    def held(self, client: int, view: View) -> Params:
        """The client's copy in sub-model shape, to apply a payload to."""
        if client not in self.copies:
            raise RuntimeError(f"client {client}: downlink payload decoded before encode")
        return self.copies.extract(client, view)["w"]

    def hold(self, client: int, view: View, weights: Params) -> Params:
        """The client now holds ``weights`` (decoded): keep them as its copy; return the
        weights it trains from (its own tensors)."""
        self.copies.scatter(client, view, "w", weights)
        return {name: t.clone() for name, t in weights.items()}

    @staticmethod
    def plus_dense(have: torch.Tensor, rec: codec.Dense) -> torch.Tensor:
        """A copy after a dense record: the record itself on first contact (``have`` all NaN),
        else ``have`` plus the difference it holds."""
        if bool(torch.isnan(have).all()):
            return rec.values.reshape(have.shape).clone()
        return torch.nan_to_num(have, nan=0.0) + rec.values.reshape(have.shape)


class SparseDownlink(CopyDownlink):
    """Per-client copies plus the top-k delta encoding against them."""

    def __init__(
        self,
        values: str,
        dense: tuple[str, int],
        shapes: Shapes | None = None,
        first_copy: str = "fp32",
        store: StateStore | None = None,
        ceil: bool = False,
    ) -> None:
        super().__init__(shapes, first_copy, store)
        self.values = values
        # which tensors go as a dense difference: sparsify.sent_whole's (rule, dense_below)
        self.dense = dense
        self.ceil = ceil  # k rule (sparsify.keep_count)
        self.dense_diff = values if first_copy == "fp32" else first_copy
        self.sent = 0  # entries sent since the last reset (for optional stats)
        self.total = 0

    def encode(self, client: int, weights: Params, view: View, sparsity: float) -> bytes:
        """Sub-model ``weights`` -> payload of per-tensor deltas vs the client's copy."""
        copy = self.copies.gather(client, view, weights)["w"]
        records: list[codec.Record] = []
        for name, w in weights.items():
            w = w.detach().to("cpu", torch.float32).contiguous()
            have = np_view(copy[name].contiguous()).ravel()
            unknown = np.isnan(have)
            n, n_unknown = w.numel(), int(unknown.sum())
            self.total += n
            if n_unknown == n:  # first contact with this tensor (or empty): whole
                records.append(codec.Dense(w.clone(), self.first_copy))
                self.sent += n
                continue
            diff = np_view(w).ravel() - np.nan_to_num(have, nan=0.0)
            if sent_whole(w.shape, *self.dense):
                diff_t = torch.from_numpy(diff).reshape(w.shape)
                records.append(codec.Dense(diff_t, self.dense_diff))
                self.sent += n
                continue
            score = np.abs(diff)
            score[unknown] = np.inf  # must send what the client never had
            k = max(keep_count(n, sparsity, self.ceil), n_unknown)
            idx = topk_indices(torch.from_numpy(score), k)
            vals = torch.from_numpy(diff[idx.numpy()])
            records.append(codec.Sparse(tuple(w.shape), idx, vals, self.values))
            self.sent += idx.numel()
        return codec.encode(records)

    def decode(self, client: int, payload: bytes, view: View, names: list[str]) -> Params:
        """Apply a payload to the client's copy; returns the weights the client now has."""
        records = codec.decode(payload)
        if len(records) != len(names):
            raise ValueError(f"payload has {len(records)} tensors, expected {len(names)}")
        copy = self.held(client, view)
        out: Params = {}
        for name, rec in zip(names, records, strict=True):
            have = copy[name]
            if isinstance(rec, codec.Dense):
                out[name] = self.plus_dense(have, rec)
            else:
                out[name] = torch.nan_to_num(have, nan=0.0)
                out[name].view(-1)[rec.indices] += rec.values
        return self.hold(client, view, out)
