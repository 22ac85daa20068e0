"""Golomb-Rice coding of sparse positions, and the entropy bound it is measured against.

Sorted flat indices are coded as gaps ``g_i = idx_i - idx_{i-1} - 1`` with Rice parameter
``b`` (chosen from ``n`` and ``k`` so that the expected code length of geometric gaps is
minimal). The two halves of every code word are stored in two separate bit streams -- first
all ``b``-bit remainders, then all unary quotients (``q`` zeros closed by a one) -- a
permutation of the bits of the interleaved code, so the size is identical, but encoding and
decoding become numpy array operations (no Python loop per entry).
"""

from __future__ import annotations

import math

import numpy as np


def entropy_bound_bits(n: int, k: int) -> float:
    """``log2 C(n, k)``: the fewest bits any code can spend on k positions out of n."""
    if k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got n={n}, k={k}")
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def rice_parameter(n: int, k: int) -> int:
    """Rice parameter minimising the expected code length of geometric gaps (p = k/n).

    A Rice code word for gap g costs ``1 + b + floor(g / 2^b)`` bits; for gaps geometric with
    success probability p, ``E[floor(g / M)] = r^M / (1 - r^M)`` with ``r = 1 - p``.
    """
    if k <= 0 or k >= n:
        return 0
    log_r = math.log1p(-k / n)
    best_b, best_cost = 0, math.inf
    for b in range(0, max(1, n.bit_length()) + 1):
        rm = math.exp((1 << b) * log_r)
        cost = 1 + b + (rm / (1.0 - rm) if rm < 1.0 else math.inf)
        if cost < best_cost:
            best_b, best_cost = b, cost
    return best_b


def rice_encode(indices: np.ndarray, b: int) -> bytes:
    """Sorted unique flat indices -> Golomb-Rice coded gaps (remainders, then unary quotients)."""
    k = int(indices.size)
    if k == 0:
        return b""
    gaps = np.diff(indices.astype(np.int64), prepend=np.int64(-1)) - 1
    if gaps.min() < 0:
        raise ValueError("sparse indices must be strictly increasing")
    q = gaps >> b
    nrem = k * b
    bits = np.zeros(nrem + int(q.sum()) + k, dtype=np.uint8)
    if b:
        shifts = np.arange(b - 1, -1, -1, dtype=np.int64)
        bits[:nrem] = ((gaps[:, None] >> shifts) & 1).ravel()
    bits[nrem + np.cumsum(q + 1) - 1] = 1
    return np.packbits(bits).tobytes()


def rice_decode(stream: bytes | memoryview, k: int, b: int) -> np.ndarray:
    """Inverse of :func:`rice_encode`: the k sorted flat indices as int64."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8))
    nrem = k * b
    ones = np.flatnonzero(bits[nrem:])
    if ones.size < k or bits.size < nrem:
        raise ValueError("truncated Rice stream")
    q = np.diff(ones[:k], prepend=np.int64(-1)) - 1
    gaps = q << b
    if b:
        weights = np.left_shift(1, np.arange(b - 1, -1, -1, dtype=np.int64))
        gaps |= bits[:nrem].reshape(k, b).astype(np.int64) @ weights
    return np.cumsum(gaps + 1) - 1
