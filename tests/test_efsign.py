"""compression=efsign (EF-signSGD): exact bytes, the published update, state and both links."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import torch
from views import ID, Rows  # pytest puts tests/ on sys.path

from afd_cli.compression import RoundContext, codec, make


def test_exact_bytes_of_a_known_update() -> None:
    """Header, a SIGN record (tag, dims, scale, 15 sign bits in 2 bytes), a dense bias."""
    w = torch.tensor([[1.0, -2.0, 3.0, -4.0, 5.0], [0.5, 0.5, -0.5, 0.0, 1.0], [-1, -1, -1, 2, 2]])
    b = torch.tensor([0.25, -0.5, 1.0])
    comp = make("efsign", dense_below=10)
    payload = comp.encode_up(0, {"w": w, "b": b}, ID, RoundContext(0, 1))
    scale = float(np.float32(w.abs().sum() / 15))  # 26.5 / 15
    # signs, 1 = >= 0, MSB first: 10101 11011 00011 -> 10101110 1100011(0)
    bits = bytes([0b10101110, 0b11000110])
    want = (
        b"AFD\x01" + struct.pack("<I", 2)
        + bytes([codec.Kind.SIGN | 2 << 4, 3, 5]) + struct.pack("<f", scale) + bits
        + bytes([codec.Kind.DENSE32 | 1 << 4, 3]) + struct.pack("<3f", 0.25, -0.5, 1.0)
    )  # fmt: skip
    assert payload == want and len(payload) == 8 + (3 + 4 + 2) + (2 + 12) == 31
    got = comp.decode_up(0, payload, ID)
    s = np.float32(scale)
    assert torch.equal(got["w"], torch.where(w >= 0, s, -s))
    assert torch.equal(got["b"], b)
    assert comp.end_round() == {"sparsity": 0.0}  # every entry sent, at one bit


def epfml_step(memory: torch.Tensor, grad: torch.Tensor, lr: float):
    """epfml/error-feedback-SGD, optimizers/ErrorFeedbackSGD.py at commit 0f92041: lines 6-11
    (``scaled_sign``) and 152-167 (``step`` with ``comp=scaled_sign``, ``memory=True``, no
    momentum or weight decay), ported line by line. Returns (applied step, new memory)."""
    d_p = lr * grad  # line 152
    corrected_gradient = memory + d_p  # line 153
    corrected_gradient = (
        corrected_gradient.norm(p=1)
        / corrected_gradient.nelement()
        * torch.sign(corrected_gradient)
    )  # lines 11, 159
    memory = memory + d_p - corrected_gradient  # line 167
    return corrected_gradient, memory  # p.data.add_(-1, corrected_gradient), line 169


def test_matches_the_published_update_over_rounds() -> None:
    """The client's step is ``-lr * g`` (trained - received); the server applies the decoded
    update, epfml's optimizer subtracts its compressed step: they must be negatives, and the
    client's residual the negative of epfml's memory, round after round."""
    g = torch.Generator().manual_seed(3)
    comp = make("efsign", dense_below=0)
    memory = {n: torch.zeros(s) for n, s in {"w": (20, 30), "c": (4, 3, 5, 5)}.items()}
    for r in range(6):
        grads = {n: torch.randn(t.shape, generator=g) for n, t in memory.items()}
        update = {n: -0.1 * t for n, t in grads.items()}
        got = comp.decode_up(0, comp.encode_up(0, update, ID, RoundContext(r, 1)), ID)
        residual = comp.state_dict()["up"][0]["e"]
        for n in memory:
            step, memory[n] = epfml_step(memory[n], grads[n], 0.1)
            torch.testing.assert_close(got[n], -step, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(residual[n], -memory[n], rtol=1e-5, atol=1e-6)


def test_residual_lives_in_full_coordinates() -> None:
    comp = make("efsign", shapes={"w": (8, 16)}, dense_below=0)
    comp.encode_up(1, {"w": torch.ones(3, 16)}, Rows([0, 2, 5]), RoundContext(0, 1))
    e = comp.state_dict()["up"][1]["e"]["w"]
    assert e.shape == (8, 16)
    assert bool((e[[1, 3, 4, 6, 7]] == 0).all()) and bool((e[[0, 2, 5]] == 0).all())  # exact
    x = torch.arange(48.0).reshape(3, 16)
    got = comp.decode_up(1, comp.encode_up(1, {"w": x}, Rows([2, 5, 7]), RoundContext(1, 1)), ID)
    e = comp.state_dict()["up"][1]["e"]["w"]
    torch.testing.assert_close(e[[2, 5, 7]], x - got["w"])
    assert bool((e[[1, 3, 4, 6]] == 0).all())


def test_downlink_catches_up_by_the_copy() -> None:
    """Scaled signs of ``current - copy``: the copy is the residual, so a client that keeps
    downloading a fixed model converges to it; its first copy is dense fp32."""
    comp = make("efsign", dense_below=100, downlink=True)
    w = {"w": torch.randn(64, 40), "b": torch.randn(64)}
    first = comp.encode_down(0, w, ID)
    assert len(first) == len(codec.encode_params(w))
    got = comp.decode_down(0, first, ID)
    moved = {n: t + 0.1 * torch.randn_like(t) for n, t in w.items()}
    errs = []
    for _ in range(30):
        payload = comp.encode_down(0, moved, ID)
        # an empty patch (tag, dims, k = 0), the SIGN record, the dense bias difference
        assert len(payload) == 8 + (3 + 1) + (3 + 4 + 320) + (2 + 256)
        got = comp.decode_down(0, payload, ID)
        errs.append(float((got["w"] - moved["w"]).norm()))
        torch.testing.assert_close(got["b"], moved["b"])  # small: dense differences
    assert errs[-1] < 0.3 * errs[0]


def test_resume_reproduces_payloads() -> None:
    a = make("efsign", dense_below=100, downlink=True)
    w = {"w": torch.randn(64, 40), "b": torch.randn(64)}
    for r in range(2):
        a.decode_down(0, a.encode_down(0, w, ID), ID)
        a.encode_up(0, {n: torch.randn_like(t) for n, t in w.items()}, ID, RoundContext(r, 1))
        a.end_round()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make("efsign", dense_below=100, downlink=True)
    b.load_state_dict(torch.load(buf))
    upd = {n: torch.randn_like(t) for n, t in w.items()}
    w2 = {n: t + 1 for n, t in w.items()}
    assert a.encode_down(0, w2, ID) == b.encode_down(0, w2, ID)
    ctx = RoundContext(2, 1)
    assert a.encode_up(0, upd, ID, ctx) == b.encode_up(0, upd, ID, ctx)


@pytest.mark.parametrize("name", ["efsign", "qsgd", "powersgd"])
def test_downlink_sends_new_units_exactly(name: str) -> None:
    """A sub-model bringing rows the client never had: those arrive exact (patch), the rest
    as the code of the difference, and the server's copy is what the client decoded."""
    shapes = {"w": (16, 64)}
    comp = make(name, shapes=shapes, dense_below=0, downlink=True)
    full = {"w": torch.randn(16, 64)}
    a, b = Rows([0, 1, 2, 3]), Rows([2, 3, 9, 12])
    comp.decode_down(4, comp.encode_down(4, a.extract(full), a), a)
    full2 = {"w": full["w"] + 0.01}
    got = comp.decode_down(4, comp.encode_down(4, b.extract(full2), b), b)
    assert torch.equal(got["w"][2:], full2["w"][[9, 12]])  # new rows: exact
    copy = comp.down.copies.extract(4, b)["w"]  # type: ignore[union-attr]
    assert torch.equal(copy["w"], got["w"])
