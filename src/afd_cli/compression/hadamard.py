"""Caldas et al.'s lossy code for one tensor: random rotation, subsampling, few-bit quantisation.

Federated Dropout (Caldas et al. 2018, arXiv 1812.07210, section 3) sends both the sub-model
and the update through the lossy compression of Konečný et al. (2016, arXiv 1610.05492,
section 3.2): a random basis rotation, subsampling of the update, then probabilistic
quantisation. Here, for a flattened tensor ``x`` of ``n`` entries and a 32-bit ``seed``:

1. **Rotation (randomised Hadamard).** ``x`` is cut into blocks of ``B = block`` entries (a
   power of two); a last, partial block of ``r`` entries is zero-padded to the next power of
   two ``>= r`` only, so padding never exceeds ``min(B, r)`` (cnn_mnist's fc1, 1,605,632
   entries, would grow by 31% if padded whole to 2^21). Each block gets a random sign flip
   ``D`` and the orthonormal Walsh-Hadamard transform ``H / sqrt(B)`` (two small matmuls,
   ``H_B = H_a (x) H_b``; see :func:`fwht`). Rotated coordinates are near Gaussian with
   similar scales, which keeps the quantiser's ranges tight; ``(HD)^-1 = D H`` undoes it
   exactly up to fp32 rounding.
2. **Subsampling** (the upload only; Caldas et al. do not subsample the model they send). A
   rotated coordinate is kept when a 16-bit hash of it is below ``keep = round(f * 2^16)``,
   i.e. with probability ``p = keep / 2^16`` exactly; the receiver puts zeros elsewhere and
   scales the kept values by ``1 / p``, so the estimate stays unbiased. ``keep = 0``: all kept.
3. **Stochastic quantisation.** The ``m`` kept values, in chunks of ``B`` (the last one
   shorter), each with ``lo = min`` and ``step = (max - min) / (2^bits - 1)`` -- per-chunk
   min/max scaling as in Konečný et al.'s probabilistic quantisation (and TensorFlow's
   ``tensor_encoding`` uniform quantiser), chunked so one outlier cannot widen the range of
   the whole tensor (8 bytes per chunk: 1.6% of a 1-bit chunk of 4096). A value ``y``
   becomes the code ``floor((y - lo) / step + u)``, ``u ~ U[0, 1)``, so
   ``E[lo + code * step] = y``. Codes are bit-packed, most significant
   bit first (as ``numpy.packbits``), ``bits`` per value.

Decoding reverses the three steps; because each is unbiased given the previous ones and the
rotation is linear, ``E[decode(encode(x))] = x``. The signs and the subsample are a
counter-based hash of ``(seed, stream, index)`` computed with int64 tensor ops, identical on
any device: the receiver regenerates them from the seed in the record (4 bytes, counted), no
table is sent and a GPU run ships nothing from the host. The dithering ``u`` is drawn by the
sender alone (a device generator seeded from the seed), so runs repeat exactly. The wire
layout of a record is in :mod:`.codec` (``Kind.HADAMARD``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Rotated:
    """A tensor of ``shape`` as Caldas et al.'s lossy code (built by :mod:`.hadamard`).

    ``seed`` regenerates the receiver's random signs and subsample; ``keep`` is the subsample
    threshold (a coordinate is kept when its 16-bit hash is below it; 0 = all kept); ``m``
    coordinates were kept, quantised to ``bits`` bits in chunks of ``block`` with one
    ``lo``/``step`` pair (fp32) per chunk; ``codes`` holds the packed bits (uint8, host).
    """

    shape: tuple[int, ...]
    bits: int
    block: int
    seed: int
    keep: int
    m: int
    lo: torch.Tensor
    step: torch.Tensor
    codes: torch.Tensor

    def to_dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The decoded fp32 tensor (on ``device``; the host by default)."""
        return decode_record(self, device)


_M32 = 0xFFFFFFFF
# streams of the hash, one per kind of draw
SIGNS, SUBSAMPLE, DITHER = 1, 2, 3
KEEP_ONE = 1 << 16  # subsample probabilities are multiples of 2^-16
SMALL = 1 << 16  # fwht: butterflies below this many entries, matmuls above
MAX_BITS = 8


# --------------------------------------------------------------------------- random numbers


def _mix32(x):  # type: ignore[no-untyped-def]
    """A bijective 32-bit integer mixer (Wellons' hash-prospector triple [16 21f0aaad 15
    735a2d97 15]) on ints or int64 tensors holding values in [0, 2^32). Both multipliers are
    below 2^31, so the products stay under 2^63: no int64 overflow, the same on every device.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _M32
    return x ^ (x >> 15)


def hash32(seed: int, stream: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` pseudo-random 32-bit values (int64) for indices ``0..n-1`` of ``(seed, stream)``.

    For a fixed key the map index -> value is a bijection on 32 bits, so values never repeat
    within a tensor; the two keys differ per stream, so streams are not shifted copies.
    """
    k1 = _mix32((seed ^ (stream * 0x9E3779B9)) & _M32)
    k2 = _mix32(k1 ^ 0x5BD1E995)
    h = torch.arange(n, dtype=torch.int64, device=device).add_(k1).bitwise_and_(_M32)
    return _mix32(_mix32(h) ^ k2)


def _sign_bits(seed: int, n: int, device: torch.device | str) -> torch.Tensor:
    """int32 with only the sign bit set where ``D`` is -1: bit j of hash word w is entry 32w+j."""
    h = hash32(seed, SIGNS, -(-n // 32), device)
    h = (h - ((h >> 31) << 32)).to(torch.int32)  # the same 32 bits as int32
    shifts = torch.arange(32, dtype=torch.int32, device=h.device)
    return (((h[:, None] >> shifts) & 1) << 31).reshape(-1)[:n]


def signs(seed: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` random signs (+-1.0, fp32): the diagonal ``D`` of the rotation (32 per hash)."""
    return flip_signs(torch.ones(n, device=device), seed)


def flip_signs(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``D x`` for a flat fp32 ``x``: XOR of the sign bits, exact and one pass."""
    bits = _sign_bits(seed, x.numel(), x.device)
    return (x.contiguous().view(torch.int32) ^ bits).view(torch.float32)


def keep_threshold(fraction: float) -> int:
    """Subsample threshold ``T`` keeping each coordinate with probability ``T / 2^16`` for
    ``fraction`` of the coordinates; 0 = keep all (``fraction == 1``)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"subsample fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return 0
    return min(KEEP_ONE - 1, max(1, round(fraction * KEEP_ONE)))


def kept_mask(seed: int, keep: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Which of ``n`` rotated coordinates the subsample keeps (all when ``keep == 0``): a
    16-bit hash value below ``keep``, two values per 32-bit hash."""
    if keep == 0:
        return torch.ones(n, dtype=torch.bool, device=device)
    h = hash32(seed, SUBSAMPLE, -(-n // 2), device)
    return torch.stack((h >> 16, h & 0xFFFF), dim=1).reshape(-1)[:n] < keep


def dither(seed: int, n: int, device: torch.device) -> torch.Tensor:
    """``n`` uniforms on [0, 1) for stochastic rounding. Only the sender draws them, so a
    device generator (seeded from ``seed``) is enough: fast, and the same on each rerun."""
    gen = torch.Generator(device=device).manual_seed(_mix32(seed ^ (DITHER * 0x9E3779B9)))
    return torch.rand(n, generator=gen, device=device)


# --------------------------------------------------------------------------- rotation


def _pow2_at_least(r: int) -> int:
    return 1 << max(0, r - 1).bit_length()


def rotated_size(n: int, block: int) -> int:
    """Length of the rotated vector: full blocks, plus the tail padded to a power of two."""
    full, r = divmod(n, block)
    return full * block + (_pow2_at_least(r) if r else 0)


_SYLVESTER: dict[tuple[int, str], torch.Tensor] = {}


def _hadamard(size: int, device: torch.device) -> torch.Tensor:
    """The ``size x size`` Sylvester-Hadamard matrix over sqrt(size) (orthonormal), cached."""
    key = (size, str(device))
    if key not in _SYLVESTER:
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < size:
            h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
        _SYLVESTER[key] = (h / math.sqrt(size)).to(device=device, dtype=torch.float32)
    return _SYLVESTER[key]


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform of each row of ``[rows, size]`` (size = 2^k).

    ``H_(2^k) = H_(2^a) (x) H_(2^b)`` (Kronecker, a + b = k), so with a row viewed as a
    ``2^a x 2^b`` matrix ``M`` the transform is ``H_a M H_b``: two matmuls with matrices of
    at most ``sqrt(size)`` rows (64 for a 4096 block) instead of ``k`` butterfly passes over
    memory. Both are plain 2-D matmuls over all rows at once (``H`` is symmetric, so
    ``H_a M = (M^T H_a)^T``); batched broadcast matmuls were 100x slower on a busy 2-core
    CPU. Below ``SMALL`` entries butterflies are faster (a BLAS call wakes its thread pool,
    milliseconds on a busy machine). ``H`` is orthonormal and symmetric: its own inverse.
    """
    rows, size = x.shape
    if size == 1:
        return x.clone()
    if x.numel() < SMALL:  # butterflies: no BLAS thread pool to wake for a few entries
        h = 1
        while h < size:
            y = x.reshape(rows, size // (2 * h), 2, h)
            x = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
            h *= 2
        return x.reshape(rows, size) * (1.0 / math.sqrt(size))
    k = size.bit_length() - 1
    a, b = 1 << (k + 1) // 2, 1 << k // 2
    m = x.reshape(rows * a, b) @ _hadamard(b, x.device)  # M H_b
    m = m.reshape(rows, a, b).transpose(1, 2).reshape(rows * b, a) @ _hadamard(a, x.device)
    return m.reshape(rows, b, a).transpose(1, 2).reshape(rows, size)  # H_a M H_b


def _blockwise(z: torch.Tensor, n: int, block: int) -> torch.Tensor:
    """:func:`fwht` over the full blocks of ``z[:n]`` and, zero-padded, its tail."""
    full, r = divmod(n, block)
    parts = []
    if full:
        parts.append(fwht(z[: full * block].reshape(full, block)).reshape(-1))
    if r:
        tail = _pow2_at_least(r)
        parts.append(fwht(F.pad(z[full * block : n], (0, tail - r)).reshape(1, tail)).reshape(-1))
    if not parts:
        return z.new_zeros(0)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def rotate(x: torch.Tensor, seed: int, block: int) -> torch.Tensor:
    """``HD x`` blockwise for a flat fp32 ``x``; length :func:`rotated_size`."""
    n = x.numel()
    return _blockwise(flip_signs(x, seed), n, block)


def unrotate(y: torch.Tensor, seed: int, n: int, block: int) -> torch.Tensor:
    """Inverse of :func:`rotate`: the first ``n`` entries of ``D H y`` blockwise."""
    full, r = divmod(n, block)
    z = y.new_zeros(0)
    if full:
        z = fwht(y[: full * block].reshape(full, block)).reshape(-1)
    if r:
        tail = _pow2_at_least(r)
        t = fwht(y[full * block : full * block + tail].reshape(1, tail)).reshape(-1)[:r]
        z = torch.cat((z, t)) if full else t
    return flip_signs(z, seed)


# --------------------------------------------------------------------------- quantisation


def quantize(
    y: torch.Tensor, bits: int, block: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unbiased stochastic ``bits``-bit codes of ``y`` per chunk of ``block``: (codes, lo, step).

    ``codes`` is uint8 of ``len(y)``; ``lo``/``step`` are fp32 per chunk. A constant chunk has
    ``step = 0`` and codes 0 (decoded exactly as ``lo``).
    """
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bits}")
    m = y.numel()
    if m == 0:
        empty = y.new_zeros(0)
        return torch.zeros(0, dtype=torch.uint8, device=y.device), empty, empty
    chunks = -(-m // block)
    pad = chunks * block - m
    v = torch.cat((y, y[-1:].expand(pad))) if pad else y  # repeat the last: same min/max
    v = v.reshape(chunks, block)
    lo = v.amin(dim=1)
    step = (v.amax(dim=1) - lo) / float(2**bits - 1)
    z = (v - lo[:, None]) / torch.where(step > 0, step, 1.0)[:, None]
    codes = torch.floor(z.reshape(-1)[:m] + dither(seed, m, y.device))
    return codes.clamp_(0, 2**bits - 1).to(torch.uint8), lo, step


def dequantize(
    codes: torch.Tensor, lo: torch.Tensor, step: torch.Tensor, block: int
) -> torch.Tensor:
    """``lo + code * step`` per chunk (fp32), the receiver's values."""
    m = codes.numel()
    if m == 0:
        return lo.new_zeros(0)
    chunks = lo.numel()
    c = F.pad(codes.to(torch.float32), (0, chunks * block - m)).reshape(chunks, block)
    return (c * step[:, None] + lo[:, None]).reshape(-1)[:m]


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (< 2^bits) -> ``ceil(m * bits / 8)`` bytes, MSB first (vectorised).

    For 1, 2 and 4 bits ``8 / bits`` codes share a byte (shift and add); other widths go
    through bit planes.
    """
    if bits == 8:
        return codes.to(torch.uint8)
    dev = codes.device
    if 8 % bits == 0:
        per = 8 // bits
        c = F.pad(codes.to(torch.uint8), (0, -codes.numel() % per)).reshape(-1, per)
        shifts = torch.arange(per - 1, -1, -1, dtype=torch.uint8, device=dev) * bits
        return (c << shifts).sum(dim=1, dtype=torch.uint8)
    shifts = torch.arange(bits - 1, -1, -1, dtype=torch.uint8, device=dev)
    planes = ((codes.reshape(-1, 1) >> shifts) & 1).reshape(-1)
    planes = F.pad(planes, (0, -planes.numel() % 8))
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=dev)
    return (planes.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, m: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``m`` codes (uint8)."""
    if bits == 8:
        return packed[:m].to(torch.uint8)
    dev = packed.device
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per - 1, -1, -1, dtype=torch.uint8, device=dev) * bits
        return ((packed.reshape(-1, 1) >> shifts) & (2**bits - 1)).reshape(-1)[:m]
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=dev)
    planes = ((packed.reshape(-1, 1) >> shifts) & 1).reshape(-1)[: m * bits]
    weights = torch.tensor([1 << k for k in range(bits - 1, -1, -1)], dtype=torch.uint8)
    return (planes.reshape(m, bits) * weights.to(dev)).sum(dim=1, dtype=torch.uint8)


# --------------------------------------------------------------------------- one tensor


def encode_tensor(
    x: torch.Tensor, *, bits: int, block: int, seed: int, subsample: float = 1.0
) -> Rotated:
    """The :class:`~.codec.Rotated` record of ``x`` (computed on ``x``'s device; only the
    packed codes and the per-chunk scales go to the host)."""
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    if not 0 <= seed <= _M32:
        raise ValueError(f"seed must fit in 32 bits, got {seed}")
    flat = x.detach().reshape(-1).to(torch.float32)
    y = rotate(flat, seed, block)
    keep = keep_threshold(subsample)
    if keep:
        y = y[kept_mask(seed, keep, y.numel(), y.device)]
    codes, lo, step = quantize(y, bits, block, seed)
    return Rotated(
        shape=tuple(x.shape),
        bits=bits,
        block=block,
        seed=seed,
        keep=keep,
        m=y.numel(),
        lo=lo.cpu(),
        step=step.cpu(),
        codes=pack(codes, bits).cpu(),
    )


def decode_record(rec: Rotated, device: torch.device | str | None = None) -> torch.Tensor:
    """The receiver's fp32 tensor for a :class:`~.codec.Rotated` record, on ``device``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    n = math.prod(rec.shape)
    n_rot = rotated_size(n, rec.block)
    vals = dequantize(
        unpack(rec.codes.to(dev), rec.bits, rec.m), rec.lo.to(dev), rec.step.to(dev), rec.block
    )
    if rec.keep == 0:
        if rec.m != n_rot:
            raise ValueError(f"hadamard record: m={rec.m}, expected {n_rot} without subsampling")
        y = vals
    else:
        mask = kept_mask(rec.seed, rec.keep, n_rot, dev)
        if int(mask.sum()) != rec.m:
            raise ValueError("hadamard record: m does not match the seed's subsample")
        y = torch.zeros(n_rot, dtype=torch.float32, device=dev)
        y[mask] = vals * (KEEP_ONE / rec.keep)
    return unrotate(y, rec.seed, n, rec.block).reshape(rec.shape)


def record_nbytes(shape: tuple[int, ...], bits: int, block: int, m: int) -> int:
    """Bytes of a record as :mod:`.codec` lays it out (tests and estimates use this)."""

    def varint(v: int) -> int:
        return max(1, -(-v.bit_length() // 7))

    dims = sum(varint(d) for d in shape)
    return 1 + dims + 8 + varint(m) + 8 * -(-m // block) + -(-m * bits // 8)
