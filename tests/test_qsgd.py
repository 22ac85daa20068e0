"""compression=qsgd: Elias omega codes, exact bytes, the paper's estimator (Lemma 3.1),
seeding, and the compressor on both links."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from views import ID  # pytest puts tests/ on sys.path

from afd_cli.compression import RoundContext, codec, elias, make
from afd_cli.compression.qsgd import QSGDRecord, quantize

# Elias omega codes as tabulated (Elias 1975; e.g. Wikipedia, "Elias omega coding")
OMEGA = {
    1: "0",
    2: "100",
    3: "110",
    4: "101000",
    5: "101010",
    6: "101100",
    7: "101110",
    8: "1110000",
    9: "1110010",
    15: "1111110",
    16: "10100100000",
    17: "10100100010",
    100: "1011011001000",
}


@pytest.mark.parametrize(("value", "code"), OMEGA.items())
def test_one_omega_code_is_the_textbook_code(value: int, code: str) -> None:
    bits = elias.omega_encode(np.array([value]))
    assert "".join(map(str, bits)) == code
    assert elias.omega_length(np.array([value])) == len(code)
    assert elias.omega_decode(bits, 1) == (np.array([value]), len(code))


def test_layered_stream_is_as_long_as_the_codes_in_a_row_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.geometric(0.05, 5000), [1, 2**40, 2**31 - 1]])
    bits = elias.omega_encode(values)
    assert bits.size == elias.omega_length(values)
    assert bits.size == sum(len(OMEGA[v]) for v in [1, 2, 3] if v) + elias.omega_length(
        values
    ) - elias.omega_length(np.array([1, 2, 3]))  # additive
    got, end = elias.omega_decode(np.concatenate([bits, [1, 0, 1]]).astype(np.uint8), values.size)
    assert end == bits.size and np.array_equal(got, values)
    with pytest.raises(ValueError):
        elias.omega_encode(np.array([0]))


def test_exact_bytes_of_a_known_tensor() -> None:
    """v = (0, 2, 0, 0, -2, 2, 2): ||v|| = 4, s = 4, so every |v_i| s / ||v|| is exactly 2:
    no randomness. Non-zeros at 1, 4, 5, 6: distances 2, 3, 1, 1; signs + - + +; levels 2."""
    v = torch.tensor([0.0, 2, 0, 0, -2, 2, 2])
    comp = make("qsgd", levels=4, bucket=0, dense_below=1)
    payload = comp.encode_up(0, {"v": v}, ID, RoundContext(0, 1))
    # distances, layer 0: flags 1100, payloads 0 (2 = 1|0) and 1 (3 = 1|1); layer 1: flags 00
    #   = 1100 01 00 (omega(2) + omega(3) + omega(1) * 2 = 3 + 3 + 1 + 1 = 8 bits)
    # signs 0100; levels 2, 2, 2, 2: flags 1111, payloads 0000, flags 0000 (4 * 3 = 12 bits)
    stream = bytes([0b11000100, 0b01001111, 0b00000000])  # 24 bits
    want = (
        b"AFD\x01" + struct.pack("<I", 1)
        + bytes([codec.Kind.QSGD | 1 << 4, 7])  # tag, dims
        + bytes([4, 7, 4])  # s, bucket (0 = the tensor: 7), k
        + struct.pack("<f", 4.0) + bytes([3]) + stream  # norm, nbytes, bits
    )  # fmt: skip
    assert payload == want and len(payload) == 8 + 2 + 3 + 4 + 1 + 3 == 21
    assert torch.equal(comp.decode_up(0, payload, ID)["v"], v)
    assert comp.end_round()["sparsity"] == pytest.approx(3 / 7)


def test_record_round_trips_and_counts_its_bits() -> None:
    x = torch.randn(10_000) * torch.linspace(0.1, 3, 10_000)
    rec = quantize(x, levels=3, bucket=512, seed=7)
    back = codec.decode(codec.encode([rec]))[0]
    assert isinstance(back, QSGDRecord)
    assert torch.equal(back.to_dense(), rec.to_dense())
    gaps = np.diff(rec.indices, prepend=-1)
    nbits = elias.omega_length(gaps) + rec.indices.size + elias.omega_length(rec.levels)
    nbytes = math.ceil(nbits / 8)

    def varint(v: int) -> int:
        return max(1, -(-v.bit_length() // 7))

    head = 1 + varint(10_000) + varint(3) + varint(512) + varint(rec.indices.size)
    want = 8 + head + 4 * math.ceil(10_000 / 512) + varint(nbytes) + nbytes
    assert len(codec.encode([rec])) == want
    assert rec.levels.max() <= 3 and rec.levels.min() >= 1


@pytest.mark.parametrize("s", [1, 2, 4, 16])
def test_unbiased_and_within_the_variance_bound_of_lemma_3_1(s: int) -> None:
    """Lemma 3.1 (Alistarh et al. 2017): E[Q_s(v)] = v, E||Q_s(v) - v||^2 <=
    min(n / s^2, sqrt(n) / s) ||v||^2 and E||Q_s(v)||_0 <= s (s + sqrt(n)); T independent
    draws of one bucket of n entries (one tensor of T buckets, fixed seed)."""
    n, draws = 256, 4000
    g = torch.Generator().manual_seed(s)
    v = torch.randn(n, generator=g) * torch.linspace(0.05, 2, n)
    rec = quantize(v.repeat(draws), levels=s, bucket=n, seed=1234 + s)
    q = rec.to_dense().reshape(draws, n).double()
    vd = v.double()
    var = float(((q - vd) ** 2).sum(dim=1).mean())
    bound = min(n / s**2, math.sqrt(n) / s) * float(vd.square().sum())
    assert var <= bound
    # the mean of T draws: squared error var / T in expectation (a sum of n terms, chi-square
    # like, well inside 1.3x at this size), so a bias would show
    assert float(((q.mean(dim=0) - vd) ** 2).sum()) <= 1.3 * var / draws
    assert float((q != 0).sum(dim=1).double().mean()) <= s * (s + math.sqrt(n))


def test_seeded_runs_repeat_and_rounds_differ() -> None:
    a, b = make("qsgd", dense_below=0, seed=5), make("qsgd", dense_below=0, seed=5)
    upd = {"w": torch.randn(40, 50)}
    pa = a.encode_up(3, upd, ID, RoundContext(0, 1))
    assert pa == b.encode_up(3, upd, ID, RoundContext(0, 1))
    assert pa != a.encode_up(3, upd, ID, RoundContext(1, 1))
    assert pa != b.encode_up(4, upd, ID, RoundContext(0, 1))


def test_downlink_deltas_and_no_upload_state() -> None:
    comp = make("qsgd", dense_below=100, downlink=True, levels=8)
    w = {"w": torch.randn(64, 40), "b": torch.randn(64)}
    got = comp.decode_down(0, comp.encode_down(0, w, ID), ID)
    assert all(torch.equal(got[n], w[n]) for n in w)
    moved = {n: t + 0.05 * torch.randn_like(t) for n, t in w.items()}
    err0 = float((got["w"] - moved["w"]).norm())
    for r in range(1, 21):
        comp.begin_round(r)  # fresh dithering each round
        got = comp.decode_down(0, comp.encode_down(0, moved, ID), ID)
    assert float((got["w"] - moved["w"]).norm()) < 0.2 * err0
    comp.encode_up(0, w, ID, RoundContext(0, 1))
    assert comp.state_nbytes() == 4 * (64 * 40 + 64)  # the copy only: QSGD keeps no residual
