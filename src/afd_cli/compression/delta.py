"""Lossy server -> client deltas against what each client already holds (error feedback by copy).

A biased or noisy code (a scaled sign, QSGD, a low-rank factorisation) cannot send *weights*,
but it can send how far the server's weights are from the copy the client already has. The
server keeps, per client, a full-coordinate copy of the weights that client last decoded
(NaN = never received), as :class:`~.downlink.SparseDownlink` does for top-k; a download
codes ``current - copy`` per tensor with the compressor's code. Whatever the code gets wrong
stays in that difference and goes out with the client's next download, so the copy *is*
the server-side residual (error feedback), and no separate residual is kept.

Per tensor a payload holds one of:

* ``Dense`` in ``first_copy`` (fp32 | fp16 | q8): first contact with the tensor, the whole
  weights; or, under ``dense_below`` entries, the difference in fp32;
* ``Sparse`` + the code's record: the entries the client has never received (sub-models
  bring new units), sent exactly (fp32, fp16 when ``first_copy=fp16``) at Rice-coded
  positions -- an empty list costs 3 bytes or so --, then the code of the difference on
  the entries it has, with zeros at the new ones.

An unbiased code whose variance can exceed the difference itself (QSGD: up to
``min(d / s^2, sqrt(d) / s)`` times its squared norm) would not shrink the difference; with
``gain`` the client applies ``gain(record)`` times the decoded record instead (QSGD uses
``1 / (1 + that bound)``, which makes the expected squared difference shrink by
``bound / (1 + bound)`` per download).

Client and server share the one copy in the simulation: ``encode`` reads it, ``decode``
applies the payload to it, so each payload is decoded exactly once, in order, and the copy is
always what the client has decoded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import codec
from .base import Params, View
from .downlink import CopyDownlink
from .state import Shapes, StateStore

# the compressor's code: {name: difference} -> {name: record}, on the tensors that need one
Code = Callable[[Params], dict[str, object]]


def dense_of(rec: object) -> torch.Tensor:
    """The fp32 tensor a record decodes to (``Dense`` holds it, the codes' records make it)."""
    if isinstance(rec, codec.Dense):
        return rec.values
    return rec.to_dense()  # type: ignore[attr-defined]


class DeltaDownlink(CopyDownlink):
    """Per-client copies plus a lossy code of the difference to them."""

    def __init__(
        self,
        dense_below: int,
        shapes: Shapes | None = None,
        first_copy: str = "fp32",
        store: StateStore | None = None,
        gain: Callable[[object], float] | None = None,
    ) -> None:
        super().__init__(shapes, first_copy, store)
        self.dense_below = dense_below
        self.patch = "fp16" if first_copy == "fp16" else "fp32"
        self.gain = gain  # the share of a code's record the client applies (default 1)

    def encode(self, client: int, weights: Params, view: View, code: Code) -> bytes:
        """Sub-model ``weights`` -> payload: per tensor a first copy, a dense difference, or
        the new entries exactly plus ``code`` of the difference on the others."""
        copy = self.copies.gather(client, view, weights)["w"]
        plan: list[tuple[str, object]] = []  # (kind, record or patch) per tensor, in order
        diffs: Params = {}
        for name, w in weights.items():
            w = w.detach().to("cpu", torch.float32)
            have = copy[name].reshape(w.shape)
            unknown = torch.isnan(have)
            if bool(unknown.all()):  # first contact with this tensor (or empty)
                plan.append(("dense", codec.Dense(w.clone(), self.first_copy)))
                continue
            diff = w - torch.nan_to_num(have, nan=0.0)
            if w.numel() < self.dense_below:
                plan.append(("dense", codec.Dense(diff, "fp32")))
                continue
            idx = torch.nonzero(unknown.reshape(-1)).reshape(-1)
            patch = codec.Sparse(tuple(w.shape), idx, w.reshape(-1)[idx].clone(), self.patch)
            diff.reshape(-1)[idx] = 0.0
            plan.append(("code", patch))
            diffs[name] = diff
        coded = code(diffs) if diffs else {}
        records: list[object] = []
        for name, (kind, rec) in zip(weights, plan, strict=True):
            records.append(rec)
            if kind == "code":
                records.append(coded[name])
        return codec.encode(records)  # type: ignore[arg-type]

    def decode(self, client: int, payload: bytes, view: View, names: list[str]) -> Params:
        """Apply a payload to the client's copy; returns the weights the client now has."""
        records = iter(codec.decode(payload))
        copy = self.held(client, view)
        out: Params = {}
        for name in names:
            have = copy[name]
            rec = next(records, None)
            if rec is None:
                raise ValueError(f"downlink payload ends before {name}")
            if isinstance(rec, codec.Dense):
                new = self.plus_dense(have, rec)
            elif isinstance(rec, codec.Sparse):
                body = next(records, None)
                if body is None:
                    raise ValueError(f"downlink payload: {name} has a patch but no code")
                step = dense_of(body).reshape(have.shape)
                if self.gain is not None and not isinstance(body, codec.Dense):
                    step = step * self.gain(body)
                new = torch.nan_to_num(have, nan=0.0) + step
                new.view(-1)[rec.indices] = rec.values
            else:
                raise ValueError(f"{name}: unexpected {type(rec).__name__} record first")
            out[name] = new
        if next(records, None) is not None:
            raise ValueError("downlink payload has more records than tensors")
        return self.hold(client, view, out)
