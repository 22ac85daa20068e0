"""``compression=qsgd``: QSGD (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via
Gradient Quantization and Encoding", sections 3.1-3.2), stochastic and unbiased.

Per bucket ``v`` of ``bucket`` consecutive entries of a flattened tensor (the paper's bucket
size ``d``), with ``s = levels``:

    Q_s(v_i) = ||v||_2 * sign(v_i) * xi_i / s,
    xi_i = l + 1 with probability |v_i| s / ||v|| - l, else l,  l = floor(|v_i| s / ||v||)

so ``E[Q_s(v)] = v`` and (Lemma 3.1) ``E||Q_s(v) - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2``
and ``E||Q_s(v)||_0 <= s (s + sqrt(d))``. The uniforms come from a generator seeded per tensor
from ``(run seed, round, client, direction)``, so runs repeat exactly.

Wire format, the paper's ``Code(||v||, sigma, zeta)`` (section 3.2): the norm as 32 bits, then
for each non-zero entry in order the Elias (recursive, omega) code of its distance from the
previous non-zero, one sign bit, and the Elias code of ``xi_i`` (:mod:`.elias`). A ``QSGD``
record (after :mod:`.codec`'s tag and dims): ``s:varint | bucket:varint | k:varint |
ceil(n / bucket) * norm:f32 | nbytes:varint | nbytes of bits``, the bits being the ``k``
distances' omega codes, the ``k`` sign bits (1 = negative), then the ``k`` levels' omega codes,
each group laid out layer by layer (:mod:`.elias`): the same bits as the paper's interleaved
stream, in another order, so the same length. Departures: distances run over the whole
tensor rather than restarting per bucket, and ``k`` (a varint) says where the stream ends.

QSGD has no error feedback (it is unbiased). With ``downlink=true`` the download is the QSGD
code of ``current - copy`` per client (:mod:`.delta`), of which the client applies the share
``1 / (1 + min(d / s^2, sqrt(d) / s))``: the code's variance may exceed the difference
itself, and this scaling makes the copy's distance to the model shrink in expectation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import registry
from ..options import option
from . import codec, elias
from .base import Params, View
from .coded import CodedCompressor, CodedOptions

_put_varint = codec._put_varint
_get_varint = codec._get_varint


@dataclass(frozen=True)
class QSGDRecord:
    """A tensor of ``shape`` as QSGD levels: non-zeros at sorted ``indices`` (int64) with
    ``levels`` (int64, 1..s) and ``negative`` (bool), one fp32 ``norms`` entry per bucket."""

    shape: tuple[int, ...]
    levels_s: int
    bucket: int
    norms: np.ndarray
    indices: np.ndarray
    levels: np.ndarray
    negative: np.ndarray

    def to_dense(self) -> torch.Tensor:
        n = math.prod(self.shape)
        out = np.zeros(n, dtype=np.float32)
        mag = self.norms[self.indices // self.bucket] * (
            self.levels.astype(np.float32) / np.float32(self.levels_s)
        )
        out[self.indices] = np.where(self.negative, -mag, mag)
        return torch.from_numpy(out).reshape(self.shape)

    def bits(self) -> np.ndarray:
        """The record's bit stream: distances, signs, levels (see the module docstring)."""
        gaps = np.diff(self.indices, prepend=-1)
        return np.concatenate(
            (
                elias.omega_encode(gaps),
                self.negative.astype(np.uint8),
                elias.omega_encode(self.levels),
            )
        )


def quantize(x: torch.Tensor, levels: int, bucket: int, seed: int) -> QSGDRecord:
    """``Q_s`` of ``x`` per bucket (``bucket = 0``: the whole tensor is one bucket)."""
    flat = x.detach().reshape(-1).to("cpu", torch.float32)
    n = flat.numel()
    b = bucket if bucket > 0 else max(1, n)
    chunks = -(-n // b)
    v = F.pad(flat, (0, chunks * b - n)).reshape(chunks, b)
    norms = torch.linalg.vector_norm(v, dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    r = v.abs() / safe[:, None] * levels
    low = torch.floor(r)
    gen = torch.Generator().manual_seed(int(seed))
    up = torch.rand(v.shape, generator=gen) < (r - low)
    level = (low + up).clamp_(max=levels).reshape(-1)[:n].to(torch.int64)
    idx = torch.nonzero(level).reshape(-1)
    return QSGDRecord(
        shape=tuple(int(d) for d in x.shape),
        levels_s=levels,
        bucket=b,
        norms=norms.numpy().astype(np.float32),
        indices=idx.numpy(),
        levels=level[idx].numpy(),
        negative=(flat[idx] < 0).numpy(),
    )


def variance_factor(d: int, s: int) -> float:
    """Lemma 3.1's bound on ``E||Q_s(v) - v||^2 / ||v||^2`` for a bucket of ``d`` entries."""
    return min(d / s**2, math.sqrt(d) / s)


def _put(out: bytearray, rec: QSGDRecord) -> None:
    _put_varint(out, rec.levels_s)
    _put_varint(out, rec.bucket)
    _put_varint(out, int(rec.indices.size))
    out += rec.norms.astype("<f4").tobytes()
    stream = elias.pack_bits(rec.bits())
    _put_varint(out, len(stream))
    out += stream


def _get(buf: memoryview, pos: int, shape: tuple[int, ...]) -> tuple[QSGDRecord, int]:
    s, pos = _get_varint(buf, pos)
    bucket, pos = _get_varint(buf, pos)
    k, pos = _get_varint(buf, pos)
    chunks = -(-math.prod(shape) // max(1, bucket))
    norms = np.frombuffer(buf, dtype="<f4", count=chunks, offset=pos).astype(np.float32)
    nbytes, pos = _get_varint(buf, pos + 4 * chunks)
    bits = elias.unpack_bits(buf[pos : pos + nbytes])
    gaps, at = elias.omega_decode(bits, k)
    negative = bits[at : at + k].astype(bool)
    levels, _ = elias.omega_decode(bits, k, at + k)
    indices = np.cumsum(gaps) - 1
    if k and indices[-1] >= math.prod(shape):
        raise ValueError("qsgd record: position out of range")
    return QSGDRecord(shape, s, bucket, norms, indices, levels, negative), pos + nbytes


codec.register_kind(codec.Kind.QSGD, QSGDRecord, _put, _get)


@dataclass
class QSGDOptions(CodedOptions):
    """QSGD's levels and bucket size."""

    levels: int = option(4, "quantisation levels s (1 = ternary)", ge=1, le=2**20)
    bucket: int = option(
        512, "entries per norm (the paper's bucket size d); 0 = whole tensor", ge=0
    )


@registry.compressor("qsgd")
class QSGDCompressor(CodedCompressor):
    """Unbiased stochastic quantisation to ``levels`` levels, Elias-coded; no error feedback."""

    options = QSGDOptions

    def __init__(self, opts: QSGDOptions, setup: Any) -> None:
        super().__init__(opts, setup)
        self.levels = opts.levels
        self.bucket = opts.bucket

    def code(self, client: int, view: View, tensors: Params, direction: int) -> dict[str, Any]:
        """One QSGD record per tensor, each with its own seed."""
        seeds = self.seeds(client, direction, len(tensors))
        return {
            name: quantize(t, self.levels, self.bucket, seed)
            for seed, (name, t) in zip(seeds, tensors.items(), strict=True)
        }

    def down_gain(self, record: QSGDRecord) -> float:
        """``1 / (1 + w)``, ``w = min(d / s^2, sqrt(d) / s)`` (Lemma 3.1's variance factor):
        the downlink applies that share of each decoded delta (see :mod:`.delta`)."""
        return 1.0 / (1.0 + variance_factor(record.bucket, record.levels_s))

    def sent_entries(self, record: QSGDRecord) -> int:
        """The non-zero levels."""
        return int(record.indices.size)
