"""compression=hadamard (Caldas et al.'s lossy code): the transform, unbiasedness, exact
byte counts, error bounds, determinism, and the compressor in both directions."""

from __future__ import annotations

import io
import math

import pytest
import torch
from views import CNN_MNIST, ID  # pytest puts tests/ on sys.path

from afd_cli.compression import RoundContext, codec, hadamard, make
from afd_cli.compression.base import Params
from afd_cli.compression.lossy import HadamardCompressor

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


SHAPES = {"w": (96, 70), "b": (96,), "v": (3000,)}


def _x(n: int, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed, uneven data (what rotation is for): a few large entries, a trend."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.linspace(0.1, 2.0, n)
    x[:: max(1, n // 7)] *= 20
    return x


def _params(seed: int, shapes=SHAPES, scale: float = 1.0) -> Params:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * scale for n, s in shapes.items()}


def _varint_len(v: int) -> int:
    return max(1, -(-v.bit_length() // 7))


def _layout_bytes(shape: tuple[int, ...], bits: int, block: int, m: int) -> int:
    """The record layout of codec.py, written out independently of hadamard.record_nbytes:
    tag, dims, bits, log2(block), seed (4), keep (2), m, lo/step per chunk, packed codes."""
    dims = sum(_varint_len(d) for d in shape)
    return (
        1
        + dims
        + 1
        + 1
        + 4
        + 2
        + _varint_len(m)
        + 8 * math.ceil(m / block)
        + math.ceil(m * bits / 8)
    )


# --------------------------------------------------------------------------- the transform


@pytest.mark.parametrize(
    ("rows", "size"), [(3, 1), (3, 2), (3, 4), (3, 8), (3, 128), (3, 1024), (70, 1024), (40, 2048)]
)
def test_fwht_is_the_orthonormal_sylvester_matrix(rows: int, size: int) -> None:
    """Both paths (butterflies below hadamard.SMALL entries, matmuls above) are H/sqrt(n)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < size:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    x = torch.randn(rows, size, generator=torch.Generator().manual_seed(size))
    want = x.double() @ h.T / math.sqrt(size)
    got = hadamard.fwht(x)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(hadamard.fwht(got), x, rtol=0, atol=1e-5)  # self-inverse


@pytest.mark.parametrize(
    ("n", "block", "size"),
    [
        (0, 4096, 0),
        (1, 4096, 1),
        (800, 4096, 1024),  # conv1 of cnn_mnist: one block, padded to 1024
        (5120, 4096, 5120),  # fc2: one block plus a 1024 tail, no padding
        (1_605_632, 4096, 1_605_632),  # fc1: 392 full blocks (whole-tensor: 2,097,152)
        (10_000, 1024, 9 * 1024 + 1024),  # tail of 784 padded to 1024
        (4097, 4096, 4097),  # tail of 1
    ],
)
def test_rotation_pads_only_the_tail_and_preserves_norm(n: int, block: int, size: int) -> None:
    assert hadamard.rotated_size(n, block) == size
    x = _x(n) if n else torch.zeros(0)
    y = hadamard.rotate(x, 12345, block)
    assert y.numel() == size
    if n:
        assert float(y.norm()) == pytest.approx(float(x.norm()), rel=1e-5)
        back = hadamard.unrotate(y, 12345, n, block)
        torch.testing.assert_close(back, x, rtol=0, atol=1e-5 * float(x.abs().max()))


def test_rotation_spreads_an_outlier() -> None:
    x = torch.zeros(4096)
    x[7] = 1.0
    y = hadamard.rotate(x, 3, 4096)
    assert torch.allclose(y.abs(), torch.full_like(y, 1 / 64))  # every coordinate 1/sqrt(B)


def test_hash_streams_are_deterministic_balanced_and_distinct() -> None:
    n = 200_000
    h = hadamard.hash32(42, hadamard.SIGNS, n)
    assert torch.equal(h, hadamard.hash32(42, hadamard.SIGNS, n))
    assert int(h.min()) >= 0 and int(h.max()) < 2**32
    assert torch.unique(h).numel() == n  # a bijection of the index
    assert not torch.equal(h, hadamard.hash32(43, hadamard.SIGNS, n))
    assert not torch.equal(h, hadamard.hash32(42, hadamard.SUBSAMPLE, n))
    s = hadamard.signs(42, n)
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(s.mean())) < 5 / math.sqrt(n)
    for fraction in (0.05, 0.3, 0.9):
        keep = hadamard.keep_threshold(fraction)
        p = keep / hadamard.KEEP_ONE
        kept = int(hadamard.kept_mask(7, keep, n).sum())
        assert abs(kept - n * p) < 5 * math.sqrt(n * p * (1 - p))
    assert bool(hadamard.kept_mask(7, 0, 10).all())


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("m", [0, 1, 7, 8, 9, 1001])
def test_pack_round_trips_with_exact_length(bits: int, m: int) -> None:
    codes = torch.randint(0, 2**bits, (m,), dtype=torch.uint8)
    packed = hadamard.pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(m * bits / 8)
    assert torch.equal(hadamard.unpack(packed, bits, m), codes)


def test_pack_is_msb_first_like_numpy() -> None:
    codes = torch.tensor([1, 0, 3, 2], dtype=torch.uint8)  # 2 bits: 01 00 11 10
    assert hadamard.pack(codes, 2).tolist() == [0b01001110]


# --------------------------------------------------------------------------- the code


def _z_scores(x: torch.Tensor, k: int, **kw) -> torch.Tensor:
    """(mean of k decodes with seeds 0..k-1 - x) / its standard error (sample std / sqrt k)."""
    dec = torch.stack(
        [
            codec.decode(codec.encode([hadamard.encode_tensor(x, seed=s, **kw)]))[0].to_dense()
            for s in range(k)
        ]
    )
    return (dec.mean(dim=0) - x) / (dec.std(dim=0) / math.sqrt(k))


@pytest.mark.parametrize(("bits", "subsample"), [(1, 1.0), (2, 0.3), (4, 0.5), (8, 1.0)])
def test_decoding_is_unbiased(bits: int, subsample: float) -> None:
    """Mean of K independent decodes -> x: every coordinate within 5 standard errors (sample
    std over the K decodes), and the z-scores look standard (mean square near 1)."""
    z = _z_scores(_x(3000, 1), 400, bits=bits, block=512, subsample=subsample)
    assert float(z.abs().max()) < 5.0
    assert 0.8 < float(z.pow(2).mean()) < 1.2


def test_the_unbiasedness_test_catches_deterministic_rounding(monkeypatch) -> None:
    """Negative control: rounding down (no dither) fails the same check. (The random rotation
    turns much of floor()'s bias into noise, hence the same k as above is needed.)"""
    monkeypatch.setattr(hadamard, "dither", lambda seed, n, device: torch.zeros(n))
    z = _z_scores(_x(3000, 1), 400, bits=2, block=512)
    assert float(z.pow(2).mean()) > 1.5


@pytest.mark.parametrize("shape", [(0,), (1,), (5,), (3, 1700), (64, 32, 5, 5), (10, 512)])
@pytest.mark.parametrize(
    ("bits", "subsample", "block"), [(1, 1.0, 4096), (3, 0.25, 256), (8, 0.7, 64)]
)
def test_payload_length_is_the_documented_layout(shape, bits, subsample, block) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    rec = hadamard.encode_tensor(x, bits=bits, block=block, seed=99, subsample=subsample)
    n = math.prod(shape)
    if subsample == 1.0:
        assert rec.m == hadamard.rotated_size(n, block)
    else:
        assert rec.m == int(hadamard.kept_mask(99, rec.keep, hadamard.rotated_size(n, block)).sum())
    payload = codec.encode([rec])
    assert len(payload) == 8 + _layout_bytes(tuple(shape), bits, block, rec.m)
    assert len(payload) == 8 + hadamard.record_nbytes(tuple(shape), bits, block, rec.m)
    (back,) = codec.decode(payload)
    assert isinstance(back, codec.Rotated) and back.seed == 99 and back.m == rec.m
    assert back.to_dense().shape == x.shape


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_round_trip_error_is_bounded_by_the_quantisation_steps(bits: int) -> None:
    """Without subsampling every rotated coordinate is off by less than its chunk's step, and
    the rotation is orthonormal: ||x' - x|| <= sqrt(sum over chunks of size * step^2)."""
    n, block = 10_000, 1024
    x = _x(n, 3)
    rec = hadamard.encode_tensor(x, bits=bits, block=block, seed=5)
    err = float((rec.to_dense() - x).norm())
    sizes = torch.full((rec.lo.numel(),), float(block))
    sizes[-1] = rec.m - block * (rec.lo.numel() - 1)
    bound = math.sqrt(float((sizes * rec.step.double() ** 2).sum()))
    assert err <= bound * (1 + 1e-5) + 1e-5
    # the rotated-domain codes stay within one step of the values they stand for
    y = hadamard.rotate(x, 5, block)
    got = hadamard.dequantize(hadamard.unpack(rec.codes, bits, rec.m), rec.lo, rec.step, block)
    steps = rec.step.repeat_interleave(block)[: rec.m]
    assert bool(((got - y).abs() <= steps * (1 + 1e-5) + 1e-6).all())
    if bits == 8:
        assert err / float(x.norm()) < 0.02


def test_zeros_and_constant_chunks_are_exact() -> None:
    rec = hadamard.encode_tensor(torch.zeros(3000), bits=1, block=1024, seed=1)
    assert torch.equal(rec.to_dense(), torch.zeros(3000))
    y = torch.cat((torch.full((1024,), 0.25), torch.randn(1000)))
    codes, lo, step = hadamard.quantize(y, 1, 1024, seed=3)
    assert float(step[0]) == 0.0 and float(lo[0]) == 0.25
    assert torch.equal(hadamard.dequantize(codes, lo, step, 1024)[:1024], y[:1024])


def test_same_seed_same_bytes_and_the_seed_on_the_wire_is_what_decodes() -> None:
    x = _x(5000, 4)
    a = codec.encode([hadamard.encode_tensor(x, bits=3, block=512, seed=77, subsample=0.4)])
    b = codec.encode([hadamard.encode_tensor(x, bits=3, block=512, seed=77, subsample=0.4)])
    c = codec.encode([hadamard.encode_tensor(x, bits=3, block=512, seed=78, subsample=0.4)])
    assert a == b and a != c
    (rec,) = codec.decode(a)
    tampered = codec.Rotated(**{**rec.__dict__, "seed": 78})
    with pytest.raises(ValueError, match="subsample"):  # another seed, another subsample
        tampered.to_dense()


@pytest.mark.parametrize(
    "kw",
    [
        dict(bits=0, block=64, seed=1),
        dict(bits=9, block=64, seed=1),
        dict(bits=4, block=48, seed=1),
        dict(bits=4, block=64, seed=2**32),
        dict(bits=4, block=64, seed=1, subsample=0.0),
        dict(bits=4, block=64, seed=1, subsample=1.5),
    ],
)
def test_bad_parameters_raise(kw) -> None:
    with pytest.raises(ValueError):
        hadamard.encode_tensor(torch.ones(100), **kw)


def test_corrupt_record_raises() -> None:
    good = codec.encode([hadamard.encode_tensor(torch.ones(100), bits=4, block=64, seed=1)])
    with pytest.raises(ValueError):
        codec.decode(good[:-1])
    with pytest.raises(ValueError):
        codec.decode(good[:12])


# --------------------------------------------------------------------------- the compressor


def _cfg(**kw) -> dict:
    return {"dense_below": 100, "block": 1024, **kw}


def build(cfg: dict, seed: int = 0):
    return make("hadamard", seed=seed, **cfg)


def test_build_and_upload_estimates_the_update() -> None:
    comp = build(_cfg(bits=8))
    assert isinstance(comp, HadamardCompressor) and comp.name == "hadamard"
    upd = _params(0, scale=0.01)
    payload = comp.encode_up(3, upd, ID, RoundContext(0, 10))
    got = comp.decode_up(3, payload, ID)
    assert torch.equal(got["b"], upd["b"])  # under dense_below: fp32
    for n in ("w", "v"):
        assert float((got[n] - upd[n]).norm() / upd[n].norm()) < 0.02
    assert comp.end_round()["sparsity"] == pytest.approx(0.0, abs=1e-9)


def test_subsampled_upload_bytes_and_sparsity_stat() -> None:
    comp = build(_cfg(bits=2, subsample=0.25))
    upd = _params(1)
    payload = comp.encode_up(0, upd, ID, RoundContext(0, 1))
    stats = comp.end_round()
    assert stats["sparsity"] == pytest.approx(0.75, abs=0.02)
    dense = len(codec.encode_params(upd))
    # ~2 bits on a quarter of the coordinates (1/64 of fp32), plus fp32 biases and the
    # per-record header and scales: the small test tensors pay those
    assert len(payload) < dense / 30


def test_cnn_mnist_upload_bytes_per_bits_setting() -> None:
    """The bytes story on cnn_mnist: the exact payload from the layout, per bits setting."""
    upd = _params(0, CNN_MNIST, 0.01)
    dense = len(codec.encode_params(upd))
    ratios = {}
    for bits in (1, 2, 4, 8):
        comp = make("hadamard", bits=bits)
        payload = comp.encode_up(0, upd, ID, RoundContext(0, 10))
        want = 8
        for shape in CNN_MNIST.values():
            n = math.prod(shape)
            if n < 1024:
                want += 1 + sum(_varint_len(d) for d in shape) + 4 * n
            else:
                want += _layout_bytes(shape, bits, 4096, hadamard.rotated_size(n, 4096))
        assert len(payload) == want
        ratios[bits] = dense / len(payload)
    shown = ", ".join(f"{b} bits 1/{r:.1f}" for b, r in ratios.items())
    print(f"\ncnn_mnist upload, dense {dense} B: {shown}")
    assert ratios[8] > 3.9 and ratios[1] > 30


def test_downlink_off_is_dense_fp32_on_is_quantised_weights() -> None:
    w = _params(2)
    off = build(_cfg(bits=2))
    assert off.encode_down(0, w, ID) == codec.encode_params(w)
    on = build(_cfg(bits=1, bits_down=8, downlink=True, subsample=0.1))
    payload = on.encode_down(0, w, ID)
    got = on.decode_down(0, payload, ID)
    for n in ("w", "v"):  # bits_down, never subsampled
        assert float((got[n] - w[n]).norm() / w[n].norm()) < 0.02
    recs = codec.decode(payload)
    assert [r.bits for r in recs if isinstance(r, codec.Rotated)] == [8, 8]
    assert all(r.keep == 0 for r in recs if isinstance(r, codec.Rotated))
    assert len(payload) < len(codec.encode_params(w)) / 3.5
    assert on.state_nbytes() == 0  # no per-client copies


def test_seeds_differ_per_client_round_and_direction_and_resume_repeats() -> None:
    w, upd = _params(3), _params(4, scale=0.1)
    a = build(_cfg(bits=2, downlink=True), seed=5)
    first = a.encode_up(1, upd, ID, RoundContext(0, 2))
    assert a.encode_up(2, upd, ID, RoundContext(0, 2)) != first
    a.end_round()
    assert a.encode_up(1, upd, ID, RoundContext(1, 2)) != first
    assert a.encode_down(1, upd, ID) != first
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build(_cfg(bits=2, downlink=True), seed=5)
    b.load_state_dict(torch.load(buf))
    assert a.encode_down(3, w, ID) == b.encode_down(3, w, ID)
    ctx = RoundContext(1, 2)
    assert a.encode_up(3, upd, ID, ctx) == b.encode_up(3, upd, ID, ctx)
    other_run = build(_cfg(bits=2, downlink=True), seed=6)
    other_run.load_state_dict(a.state_dict())
    assert other_run.encode_up(3, upd, ID, ctx) != a.encode_up(3, upd, ID, ctx)


@CUDA
def test_cuda_signs_and_subsample_match_the_host_and_decode_anywhere() -> None:
    n = 100_000
    assert torch.equal(hadamard.signs(9, n, "cuda").cpu(), hadamard.signs(9, n))
    keep = hadamard.keep_threshold(0.3)
    assert torch.equal(hadamard.kept_mask(9, keep, n, "cuda").cpu(), hadamard.kept_mask(9, keep, n))
    x = _x(n, 5)
    rec = hadamard.encode_tensor(x.cuda(), bits=4, block=1024, seed=9, subsample=0.3)
    (back,) = codec.decode(codec.encode([rec]))
    torch.testing.assert_close(back.to_dense("cuda").cpu(), back.to_dense(), rtol=0, atol=1e-4)
