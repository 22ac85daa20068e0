"""Binary wire format for model tensors: what ``len(payload)`` in the CSV actually counts.

Layout (little endian)::

    header   b"AFD" | version:u8 | count:u32                                   (8 bytes)
    record   tag:u8 = kind | ndim << 4 | dims: LEB128 varints | body
      DENSE32  n * f32
      DENSE16  n * f16
      Q8       lo:f32 | scale:f32 | n * u8            x ~= q * scale + lo
      SPARSE*  k:varint | [b:u8 | nbytes:varint | positions] | k * (f32 | f16)
               (the bracket is omitted when k == 0 or k == n)
      HADAMARD bits:u8 | log2(block):u8 | seed:u32 | keep:u16 | m:varint
               | ceil(m / block) * (lo:f32 | step:f32) | ceil(m * bits / 8) bytes of codes
               (randomised Hadamard rotation, subsampling, stochastic quantisation: the
               layout's meaning and the maths are in :mod:`.hadamard`)
      SIGN, QSGD, LOWRANK: bodies written by the codec modules that register them with
               :func:`register_kind` (:mod:`.efsign`, :mod:`.qsgd`, :mod:`.powersgd`)

Names are not sent: sender and receiver agree on the parameter order (the dict order), so
records are positional. Shapes are sent because sub-model shapes change per client and round.

Sparse positions are the sorted flat indices coded as gaps ``g_i = idx_i - idx_{i-1} - 1``
with Golomb-Rice code parameter ``b`` (chosen from ``n`` and ``k`` so that the expected code
length of geometric gaps is minimal). The two halves of every Rice code word are stored in
two separate bit streams -- first all ``b``-bit remainders, then all unary quotients (``q``
zeros closed by a one) -- which is a permutation of the bits of the interleaved code, so the
size is identical, but encoding and decoding become pure numpy array operations (no Python
loop per entry): quotients are recovered from the positions of the ones.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import torch

from .hadamard import MAX_BITS, Rotated
from .rice import entropy_bound_bits, rice_decode, rice_encode, rice_parameter

__all__ = [
    "Dense",
    "Record",
    "Rotated",
    "Sparse",
    "decode",
    "decode_params",
    "encode",
    "encode_params",
    "entropy_bound_bits",
    "register_kind",
    "rice_decode",
    "rice_encode",
    "rice_parameter",
]

MAGIC = b"AFD"
VERSION = 1
_HEADER = struct.Struct("<3sBI")
_F32x2 = struct.Struct("<ff")


class Kind(IntEnum):
    """Per-record kind, the low nibble of the record tag."""

    DENSE32 = 0
    DENSE16 = 1
    Q8 = 2
    SPARSE32 = 3
    SPARSE16 = 4
    HADAMARD = 5
    SIGN = 6
    QSGD = 7
    LOWRANK = 8


_DENSE_KINDS = {"fp32": Kind.DENSE32, "fp16": Kind.DENSE16, "q8": Kind.Q8}
_SPARSE_KINDS = {"fp32": Kind.SPARSE32, "fp16": Kind.SPARSE16}
_FMT_OF = {
    Kind.DENSE32: "fp32",
    Kind.DENSE16: "fp16",
    Kind.Q8: "q8",
    Kind.SPARSE32: "fp32",
    Kind.SPARSE16: "fp16",
}


@dataclass(frozen=True)
class Dense:
    """A whole tensor; ``fmt`` (fp32 | fp16 | q8) is its precision on the wire.

    Decoded records always hold fp32 values (already dequantised).
    """

    values: torch.Tensor
    fmt: str = "fp32"


@dataclass(frozen=True)
class Sparse:
    """Entries ``values`` at sorted flat ``indices`` of a tensor of ``shape``; rest is zero."""

    shape: tuple[int, ...]
    indices: torch.Tensor
    values: torch.Tensor
    fmt: str = "fp32"

    def to_dense(self) -> torch.Tensor:
        """The full fp32 tensor with zeros where nothing was sent."""
        out = torch.zeros(math.prod(self.shape), dtype=torch.float32)
        out[self.indices] = self.values.to(torch.float32)
        return out.reshape(self.shape)


Record = Dense | Sparse | Rotated  # and the kinds of register_kind
_ROT_HEAD = struct.Struct("<BBIH")

# record kinds whose bodies another module writes: kind -> (class, put, get)
Put = Callable[[bytearray, Any], None]
Get = Callable[[memoryview, int, tuple[int, ...]], tuple[Any, int]]
_EXTRA: dict[Kind, tuple[type, Put, Get]] = {}
_EXTRA_BY_CLASS: dict[type, Kind] = {}


def register_kind(kind: Kind, cls: type, put: Put, get: Get) -> None:
    """A record kind defined outside this module: ``put(out, rec)`` appends the body of a
    ``cls`` record (which has a ``shape``) after its tag and dims; ``get(buf, pos, shape)``
    reads it back and returns ``(record, new pos)``. The record needs ``to_dense()``."""
    _EXTRA[kind] = (cls, put, get)
    _EXTRA_BY_CLASS[cls] = kind


# --------------------------------------------------------------------------- helpers


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError("varint must be non-negative")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _get_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def quantize_q8(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """8-bit uniform quantisation over [min, max]: (codes, lo, scale), error <= scale / 2."""
    x = np.ascontiguousarray(x, dtype=np.float32).ravel()
    if x.size == 0:
        return np.zeros(0, dtype=np.uint8), 0.0, 0.0
    lo = np.float32(x.min())
    scale = np.float32((np.float32(x.max()) - lo) / np.float32(255.0))
    if scale == 0 or not np.isfinite(scale):
        return np.zeros(x.size, dtype=np.uint8), float(lo), 0.0
    codes = np.clip(np.rint((x - lo) / scale), 0, 255).astype(np.uint8)
    return codes, float(lo), float(scale)


def dequantize_q8(codes: np.ndarray, lo: float, scale: float) -> np.ndarray:
    """Inverse of :func:`quantize_q8` (bit-identical to what the receiver computes)."""
    return codes.astype(np.float32) * np.float32(scale) + np.float32(lo)


def as_sent(values: torch.Tensor, fmt: str) -> torch.Tensor:
    """The fp32 values the receiver will decode for ``values`` sent in ``fmt``.

    Lets senders do error feedback (keep what was lost to rounding) without decoding.
    """
    x = values.detach().to(torch.float32)
    if fmt == "fp32":
        return x.clone()
    if fmt == "fp16":
        return x.to(torch.float16).to(torch.float32)
    if fmt == "q8":
        codes, lo, scale = quantize_q8(x.cpu().numpy())
        return torch.from_numpy(dequantize_q8(codes, lo, scale)).reshape(x.shape)
    raise ValueError(f"unknown value format {fmt!r}")


def _np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().ravel()


# --------------------------------------------------------------------------- encode / decode


def _encode_record(out: bytearray, rec: Record) -> None:
    extra = _EXTRA_BY_CLASS.get(type(rec))
    if extra is not None:
        _put_shape(out, extra, tuple(int(d) for d in rec.shape))
        _EXTRA[extra][1](out, rec)
        return
    if isinstance(rec, Rotated):
        _encode_rotated(out, rec)
        return
    if isinstance(rec, Dense):
        kind = _DENSE_KINDS.get(rec.fmt)
        shape = tuple(rec.values.shape)
    else:
        kind = _SPARSE_KINDS.get(rec.fmt)
        shape = tuple(int(d) for d in rec.shape)
    if kind is None:
        raise ValueError(f"format {rec.fmt!r} not allowed for {type(rec).__name__}")
    _put_shape(out, kind, shape)
    if isinstance(rec, Dense):
        x = _np32(rec.values)
        if kind == Kind.DENSE32:  # straight from the tensor's memory: no intermediate copies
            out += x.astype("<f4", copy=False).data
        elif kind == Kind.DENSE16:
            out += x.astype("<f2").data
        else:
            codes, lo, scale = quantize_q8(x)
            out += _F32x2.pack(lo, scale)
            out += codes.tobytes()
        return
    n = math.prod(shape)
    idx = rec.indices.detach().to(device="cpu", dtype=torch.int64).numpy().ravel()
    vals = _np32(rec.values)
    if idx.size != vals.size:
        raise ValueError("sparse indices and values differ in length")
    if idx.size > 1 and np.any(idx[1:] <= idx[:-1]):
        order = np.argsort(idx, kind="stable")
        idx, vals = idx[order], vals[order]
        if np.any(idx[1:] == idx[:-1]):
            raise ValueError("duplicate sparse indices")
    k = int(idx.size)
    if k and (idx[0] < 0 or idx[-1] >= n):
        raise ValueError("sparse index out of range")
    _put_varint(out, k)
    if 0 < k < n:  # k == n: every position, nothing to say
        b = rice_parameter(n, k)
        stream = rice_encode(idx, b)
        out.append(b)
        _put_varint(out, len(stream))
        out += stream
    out += vals.astype("<f4" if kind == Kind.SPARSE32 else "<f2").tobytes()


def _put_shape(out: bytearray, kind: Kind, shape: tuple[int, ...]) -> None:
    if len(shape) > 15:
        raise ValueError("tensors with more than 15 dimensions are not supported")
    out.append(int(kind) | len(shape) << 4)
    for d in shape:
        _put_varint(out, d)


def _encode_rotated(out: bytearray, rec: Rotated) -> None:
    block, chunks = rec.block, -(-rec.m // rec.block) if rec.block else 0
    if (
        not (1 <= rec.bits <= MAX_BITS)
        or block < 1
        or block & (block - 1)
        or not 0 <= rec.keep < 2**16
    ):
        raise ValueError(f"bad hadamard record (bits={rec.bits}, block={block}, keep={rec.keep})")
    if rec.lo.numel() != chunks or rec.step.numel() != chunks:
        raise ValueError(f"hadamard record needs {chunks} lo/step pairs for m={rec.m}")
    if rec.codes.numel() != -(-rec.m * rec.bits // 8):
        raise ValueError("hadamard record: packed codes do not match m * bits")
    _put_shape(out, Kind.HADAMARD, tuple(int(d) for d in rec.shape))
    out += _ROT_HEAD.pack(rec.bits, block.bit_length() - 1, rec.seed, rec.keep)
    _put_varint(out, rec.m)
    scales = np.empty((chunks, 2), dtype="<f4")
    scales[:, 0] = _np32(rec.lo)
    scales[:, 1] = _np32(rec.step)
    out += scales.tobytes()
    out += rec.codes.detach().to("cpu", torch.uint8).contiguous().numpy().tobytes()


def _decode_rotated(buf: memoryview, pos: int, shape: list[int]) -> tuple[Rotated, int]:
    if len(buf) < pos + _ROT_HEAD.size:
        raise ValueError("truncated hadamard record")
    bits, log2_block, seed, keep = _ROT_HEAD.unpack_from(buf, pos)
    m, pos = _get_varint(buf, pos + _ROT_HEAD.size)
    if not 1 <= bits <= MAX_BITS or log2_block > 30:
        raise ValueError(f"bad hadamard record (bits={bits}, log2 block={log2_block})")
    block = 1 << log2_block
    chunks = -(-m // block)
    scales = np.frombuffer(buf, dtype="<f4", count=2 * chunks, offset=pos).reshape(chunks, 2)
    pos += scales.nbytes
    nbytes = -(-m * bits // 8)
    codes = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=pos)
    pos += nbytes
    lo = torch.from_numpy(scales[:, 0].astype(np.float32))
    step = torch.from_numpy(scales[:, 1].astype(np.float32))
    codes_t = torch.from_numpy(codes.copy())
    return Rotated(tuple(shape), bits, block, seed, keep, m, lo, step, codes_t), pos


def encode(records: Iterable[Record] | Mapping[str, Record]) -> bytes:
    """Records (a sequence, or a dict whose order is the wire order) -> payload."""
    items = list(records.values()) if isinstance(records, Mapping) else list(records)
    out = bytearray(_HEADER.pack(MAGIC, VERSION, len(items)))
    for rec in items:
        _encode_record(out, rec)
    return bytes(out)


def decode(payload: bytes) -> list[Record]:
    """Payload -> records in wire order, values as fp32 (dequantised), indices int64."""
    buf = memoryview(payload)
    if len(buf) < _HEADER.size:
        raise ValueError("payload shorter than header")
    magic, version, count = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not an afd payload (magic={bytes(magic)!r}, version={version})")
    pos = _HEADER.size
    out: list[Record] = []
    for _ in range(count):
        tag = buf[pos]
        pos += 1
        kind, ndim = Kind(tag & 0x0F), tag >> 4
        shape = []
        for _ in range(ndim):
            d, pos = _get_varint(buf, pos)
            shape.append(d)
        if kind in _EXTRA:
            rec, pos = _EXTRA[kind][2](buf, pos, tuple(shape))
            out.append(rec)
            continue
        if kind == Kind.HADAMARD:
            rec, pos = _decode_rotated(buf, pos, shape)
            out.append(rec)
            continue
        n = math.prod(shape)
        fmt = _FMT_OF[kind]
        if kind in (Kind.DENSE32, Kind.DENSE16):
            width = 4 if kind == Kind.DENSE32 else 2
            raw = np.frombuffer(buf, dtype="<f4" if width == 4 else "<f2", count=n, offset=pos)
            pos += n * width
            vals = torch.from_numpy(raw.astype(np.float32)).reshape(shape)
            out.append(Dense(vals, fmt))
        elif kind == Kind.Q8:
            lo, scale = _F32x2.unpack_from(buf, pos)
            pos += _F32x2.size
            codes = np.frombuffer(buf, dtype=np.uint8, count=n, offset=pos)
            pos += n
            out.append(Dense(torch.from_numpy(dequantize_q8(codes, lo, scale)).reshape(shape), fmt))
        else:
            k, pos = _get_varint(buf, pos)
            if k == n:
                idx = np.arange(n, dtype=np.int64)
            elif k:
                b = buf[pos]
                nbytes, pos = _get_varint(buf, pos + 1)
                idx = rice_decode(buf[pos : pos + nbytes], k, b)
                pos += nbytes
                if idx[-1] >= n:
                    raise ValueError("sparse index out of range")
            else:
                idx = np.zeros(0, dtype=np.int64)
            width = 4 if kind == Kind.SPARSE32 else 2
            raw = np.frombuffer(buf, dtype="<f4" if width == 4 else "<f2", count=k, offset=pos)
            pos += k * width
            vals = torch.from_numpy(raw.astype(np.float32))
            out.append(Sparse(tuple(shape), torch.from_numpy(idx), vals, fmt))
    if pos != len(buf):
        raise ValueError(f"{len(buf) - pos} trailing bytes after {count} records")
    return out


def encode_params(params: Mapping[str, torch.Tensor], fmt: str = "fp32") -> bytes:
    """Convenience: every tensor dense in ``fmt`` (fp32 | fp16 | q8), in dict order."""
    return encode(Dense(t, fmt) for t in params.values())


def decode_params(
    payload: bytes, names: Sequence[str], keep: Collection[str] | None = None
) -> dict[str, torch.Tensor]:
    """Payload -> ``{name: dense fp32 tensor}``; ``names`` gives the (shared) wire order.
    ``keep``: only these tensors (made dense: most of the cost; the rest is only parsed)."""
    records = decode(payload)
    if len(records) != len(names):
        raise ValueError(f"payload has {len(records)} tensors, expected {len(names)}")
    return {
        name: rec.values if isinstance(rec, Dense) else rec.to_dense()
        for name, rec in zip(names, records, strict=True)
        if keep is None or name in keep
    }
