"""Elias omega (recursive) codes of positive integers, vectorised: QSGD's wire format.

Alistarh et al. (QSGD, 2017, section 3.2) code integers with Elias' recursive code: the
binary form of ``N``, preceded by the code of its length, recursively -- Elias omega. Its
textbook form: write ``0``; while ``N > 1``: prepend ``binary(N)`` and set
``N = len(binary(N)) - 1``. So ``omega(1) = 0``, ``omega(2) = 10 0``, ``omega(4) = 10 100 0``;
``omega(N)`` has ``1 + sum(len(group))`` bits.

Decoding reads, from ``N = 1``: a bit; ``0`` ends the code with value ``N``, ``1`` starts a
group whose other ``N`` bits give the next ``N`` (``N = 2^N | bits``). Every code is a
sequence of *layers*: one flag bit, then (if the flag is 1) a payload of ``N`` bits, where
``N`` is known from the previous layer. A stream of ``k`` codes is therefore laid out here
**layer by layer**: the layer-0 flags of all ``k`` codes, then the layer-0 payloads of the
codes that continue, then the layer-1 flags of those codes, and so on. That is a permutation
of the bits of the ``k`` codes written one after the other -- the same number of bits, and
for ``k = 1`` exactly the textbook code -- but every layer is a numpy array operation
(flags are one bit per live code, payload offsets a cumulative sum), so neither side loops
over codes. At most six layers exist for values below ``2^63``.

Bits are numpy ``uint8`` arrays of 0/1 here; :func:`pack_bits` / :func:`unpack_bits` turn
them into bytes (most significant bit first, as ``numpy.packbits``).
"""

from __future__ import annotations

import numpy as np

_MAX_LAYERS = 7


def _bit_length(v: np.ndarray) -> np.ndarray:
    """Bit length of each positive int64 (exact: float64 frexp for values < 2^53)."""
    if v.size and int(v.max()) >= 1 << 53:
        raise ValueError("elias: values must be below 2^53")
    return np.frexp(v.astype(np.float64))[1].astype(np.int64)


def write_varlen(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The low ``lengths[i]`` bits of each ``values[i]``, MSB first, one after the other."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint8)
    which = np.repeat(np.arange(lengths.size), lengths)
    starts = np.cumsum(lengths) - lengths
    shift = np.repeat(lengths - 1 + starts, lengths) - np.arange(total)
    return ((values.astype(np.int64)[which] >> shift) & 1).astype(np.uint8)


def read_varlen(bits: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`write_varlen`: the integer in ``bits[s : s + n]`` for each pair."""
    out = np.zeros(lengths.size, dtype=np.int64)
    if lengths.size == 0:
        return out
    width = int(lengths.max())
    for j in range(width):  # a loop over bit positions (<= 63), not over values
        live = lengths > j
        pos = starts[live] + j
        if pos.size and int(pos.max()) >= bits.size:
            raise ValueError("elias: bit stream truncated")
        out[live] = (out[live] << 1) | bits[pos]
    return out


def omega_encode(values: np.ndarray) -> np.ndarray:
    """Omega codes of ``values`` (int >= 1), layer by layer (see the module docstring)."""
    v = np.asarray(values, dtype=np.int64).ravel()
    if v.size and int(v.min()) < 1:
        raise ValueError("elias omega codes integers >= 1")
    # chain[j] = the N after j groups of the code, read backwards from the value itself
    chain = [v]
    while True:
        nxt = np.where(chain[-1] > 1, _bit_length(chain[-1]) - 1, 1)
        if not (chain[-1] > 1).any():
            break
        chain.append(nxt)
    table = np.stack(chain)
    depth = np.sum(table > 1, axis=0)  # groups per code
    layers = len(chain)  # the decoder's N sequence of a code of depth d: chain[d], ..., chain[0]
    parts: list[np.ndarray] = []
    idx = np.arange(v.size)
    for j in range(layers):
        live = idx[depth[idx] >= j]
        if live.size == 0:
            break
        cont = live[depth[live] > j]
        parts.append((depth[live] > j).astype(np.uint8))
        if cont.size:
            d = depth[cont]
            cur = table[d - j, cont]  # N before this layer's group
            new = table[d - j - 1, cont]  # N after it
            parts.append(write_varlen(new - (np.int64(1) << cur), cur))
        idx = cont
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


def omega_decode(bits: np.ndarray, count: int, pos: int = 0) -> tuple[np.ndarray, int]:
    """``count`` omega-coded values from ``bits[pos:]`` (layered); returns (values, end)."""
    n = np.ones(count, dtype=np.int64)
    live = np.arange(count)
    for _ in range(_MAX_LAYERS):
        if live.size == 0:
            return n, pos
        if pos + live.size > bits.size:
            raise ValueError("elias: bit stream truncated")
        flags = bits[pos : pos + live.size].astype(bool)
        pos += live.size
        cont = live[flags]
        lens = n[cont]
        starts = pos + np.cumsum(lens) - lens
        payload = read_varlen(bits, starts, lens)
        n[cont] = (np.int64(1) << lens) | payload
        pos += int(lens.sum())
        live = cont
    if live.size:
        raise ValueError("elias: value too large or stream corrupt")
    return n, pos


def omega_length(values: np.ndarray) -> int:
    """Bits of the omega codes of ``values``: ``sum(1 + sum of group lengths)``."""
    v = np.asarray(values, dtype=np.int64).ravel()
    total = v.size
    while v.size:
        v = v[v > 1]
        bl = _bit_length(v)
        total += int(bl.sum())
        v = bl - 1
    return total


def pack_bits(bits: np.ndarray) -> bytes:
    """0/1 ``uint8`` -> bytes, MSB first, the last byte padded with zeros."""
    return np.packbits(bits).tobytes()


def unpack_bits(data: bytes | memoryview) -> np.ndarray:
    """Bytes -> 0/1 ``uint8`` (all ``8 * len`` bits)."""
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))
