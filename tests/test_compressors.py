"""Compressors end to end: dense formats, top-k residuals, client state, downlink, resume."""

from __future__ import annotations

import io
import math

import pytest
import torch
from views import CNN_MNIST, ID, Rows  # pytest puts tests/ on sys.path

from afd_cli.compression import RoundContext, codec, entropy_bound_bits, make
from afd_cli.compression.base import Params
from afd_cli.compression.sparsify import keep_count

SHAPES = {"w": (64, 40), "b": (64,)}


def _params(seed: int, shapes: dict[str, tuple[int, ...]] = SHAPES, scale: float = 1.0) -> Params:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * scale for n, s in shapes.items()}


def _cfg(name: str, **kw: object) -> dict[str, object]:
    return {"name": name, "dense_rule": "size", "dense_below": 100, "warmup_rounds": 0, **kw}


def build(cfg: dict[str, object], shapes: dict | None = None):
    """A compressor from ``_cfg`` keys (each compressor reads its own)."""
    values = dict(cfg)
    return make(str(values.pop("name")), shapes=shapes, **values)  # type: ignore[arg-type]


def test_build_names() -> None:
    for name in ("none", "fp16", "q8", "topk", "dgc"):
        assert build(_cfg(name)).name == name
    with pytest.raises(ValueError):
        build(_cfg("gzip"))


@pytest.mark.parametrize(
    ("name", "tol", "width"), [("none", 0, 4), ("fp16", 2e-3, 2), ("q8", 0.02, 1)]
)
def test_dense_formats_both_ways(name: str, tol: float, width: int) -> None:
    comp = build(_cfg(name))
    w = _params(0)
    payload = comp.encode_down(3, w, ID)
    assert len(payload) < 100 + width * sum(t.numel() for t in w.values())
    got = comp.decode_down(3, payload, ID)
    for n in w:
        torch.testing.assert_close(got[n], w[n], rtol=0, atol=tol * float(w[n].abs().max()))
        assert torch.equal(got[n], codec.as_sent(w[n], {"none": "fp32"}.get(name, name)))
    upd = _params(1, scale=0.01)
    out = comp.decode_up(3, comp.encode_up(3, upd, ID, RoundContext(0, 1)), ID)
    for n in upd:
        torch.testing.assert_close(out[n], upd[n], rtol=0, atol=tol * float(upd[n].abs().max()))
    assert comp.end_round() == {"sparsity": 0.0}
    assert comp.state_nbytes() == 0


def test_topk_error_feedback_and_sparsity_stat() -> None:
    comp = build(_cfg("topk", sparsity=0.9))
    v_old = torch.zeros(SHAPES["w"])
    for r in range(3):
        g = _params(r)
        sent = comp.decode_up(0, comp.encode_up(0, g, ID, RoundContext(r, 1)), ID)
        v = comp.state_dict()["up"][0]["v"]
        torch.testing.assert_close(sent["w"] + v["w"], v_old + g["w"])
        k = keep_count(64 * 40, 0.9)
        assert int((sent["w"] != 0).sum()) == k
        assert torch.equal(sent["b"], g["b"])  # below dense_below: dense
        stats = comp.end_round()
        assert stats["sparsity"] == pytest.approx(1 - (k + 64) / (64 * 40 + 64))
        v_old = v["w"]
    assert comp.end_round() == {"sparsity": 0.0}  # counters were reset


@pytest.mark.parametrize("name", ["topk", "dgc"])
def test_state_only_for_participants(name: str) -> None:
    comp = build(_cfg(name))
    for cid in (3, 7):
        comp.encode_up(cid, _params(cid), ID, RoundContext(0, 2))
    per_client = len(comp.state_dict()["up"][3])  # buffers per client: v (+ u for dgc)
    assert sorted(comp.state_dict()["up"]) == [3, 7]
    assert per_client == (2 if name == "dgc" else 1)
    assert comp.state_nbytes() == 2 * per_client * 4 * (64 * 40 + 64)


@pytest.mark.parametrize("how", ["shapes", "view_attr"])
def test_state_lives_in_full_coordinates(how: str) -> None:
    shapes = SHAPES if how == "shapes" else None
    comp = build(_cfg("dgc", sparsity=0.5, momentum_masking=False), shapes=shapes)
    view_a = Rows([0, 5, 9], None if shapes else SHAPES)
    view_b = Rows([5, 9, 20], None if shapes else SHAPES)
    sub = {"w": torch.ones(3, 40), "b": torch.ones(3)}
    comp.encode_up(1, sub, view_a, RoundContext(0, 1))
    comp.encode_up(1, sub, view_b, RoundContext(1, 1))
    st = comp.state_dict()["up"][1]
    assert st["u"]["w"].shape == SHAPES["w"]
    touched = torch.zeros(64, dtype=torch.bool)
    touched[[0, 5, 9, 20]] = True
    assert bool((st["u"]["w"][~touched] == 0).all())
    # u = m*u + G in full coordinates: rows 5 and 9 took part twice, 0 and 20 once
    torch.testing.assert_close(st["u"]["w"][5], torch.full((40,), 1.9))
    torch.testing.assert_close(st["u"]["w"][20], torch.ones(40))
    torch.testing.assert_close(st["u"]["w"][0], torch.ones(40))


@pytest.mark.parametrize("name", ["topk", "dgc"])
def test_downlink_dense_first_then_sparse(name: str) -> None:
    comp = build(_cfg(name, downlink=True, sparsity=0.9, values="fp32"))
    w = _params(0)
    dense_bytes = len(codec.encode_params(w))
    first = comp.encode_down(0, w, ID)
    assert len(first) == dense_bytes
    got = comp.decode_down(0, first, ID)
    assert all(torch.equal(got[n], w[n]) for n in w)
    w2 = w
    for r in range(1, 40):
        if r < 3:  # the server model moves twice, then stays: the client must catch up
            w2 = {n: t + 0.01 * r for n, t in w.items()}
        before = got
        payload = comp.encode_down(0, w2, ID)
        assert len(payload) < dense_bytes / 3
        got = comp.decode_down(0, payload, ID)
        changed = int((got["w"] != before["w"]).sum())
        assert changed <= keep_count(64 * 40, 0.9)
        torch.testing.assert_close(got["b"], w2["b"])  # small tensors: dense diffs
    # error feedback: what was held back is sent later, the client catches up exactly enough
    torch.testing.assert_close(got["w"], w2["w"], rtol=0, atol=1e-6)
    # a client never seen before gets a dense copy
    assert len(comp.encode_down(5, w2, ID)) == dense_bytes


def test_downlink_sends_never_seen_entries_of_sub_models() -> None:
    comp = build(_cfg("topk", downlink=True, sparsity=0.99), shapes=SHAPES)
    full = _params(0)
    a, b = Rows([0, 1, 2]), Rows([1, 2, 30])
    got = comp.decode_down(4, comp.encode_down(4, a.extract(full), a), a)
    assert torch.equal(got["w"], full["w"][[0, 1, 2]])
    full2 = {n: t + 0.5 for n, t in full.items()}
    got = comp.decode_down(4, comp.encode_down(4, b.extract(full2), b), b)
    torch.testing.assert_close(got["w"][2], full2["w"][30])  # new row arrives whole
    assert comp.state_nbytes() == 4 * (64 * 40 + 64)


@pytest.mark.parametrize("name", ["topk", "dgc"])
def test_resume_reproduces_payloads(name: str) -> None:
    kw = {"downlink": True, "sparsity": 0.95, "warmup_rounds": 2}
    a = build(_cfg(name, **kw))
    w = _params(0)
    for r in range(2):
        a.decode_down(0, a.encode_down(0, w, ID), ID)
        a.encode_up(0, _params(10 + r), ID, RoundContext(r, 1))
        a.end_round()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build(_cfg(name, **kw))
    b.load_state_dict(torch.load(buf))
    w2 = _params(5)
    for comp_ in (a, b):
        comp_.payloads = [  # type: ignore[attr-defined]
            comp_.encode_down(0, w2, ID),
            comp_.encode_up(0, _params(20), ID, RoundContext(2, 1)),
        ]
    assert a.payloads == b.payloads  # type: ignore[attr-defined]


def test_cnn_mnist_dgc_upload_vs_dense() -> None:
    """SPEC's bytes story on cnn_mnist (1,663,370 entries): DGC at 99.9% <= dense / 200."""
    dense = make("none")
    dgc = make("dgc", sparsity=0.999, warmup_rounds=4)
    upd = _params(0, CNN_MNIST, 0.01)
    n_total = sum(t.numel() for t in upd.values())
    assert n_total == 1_663_370
    dense_bytes = len(dense.encode_up(0, upd, ID, RoundContext(0, 10)))
    for r in range(4):
        dgc.encode_up(0, upd, ID, RoundContext(r, 10))
        dgc.end_round()
    payload = dgc.encode_up(0, upd, ID, RoundContext(4, 10))
    dgc.decode_up(0, payload, ID)
    sparse = [r for r in codec.decode(payload) if isinstance(r, codec.Sparse)]
    bound = sum(entropy_bound_bits(math.prod(r.shape), r.indices.numel()) for r in sparse)
    print(
        f"\ndense {dense_bytes} B, dgc {len(payload)} B (1/{dense_bytes / len(payload):.0f}), "
        f"sparsity {dgc.end_round()['sparsity']:.5f}, position bound {bound / 8:.0f} B"
    )
    assert len(payload) * 445 <= dense_bytes  # README: 1/451; measured 14,757 B, 1/450.9


class Client:
    """A client decoding downlink payloads on its own, from the wire alone: what it holds is
    what it was sent (first copies and dense diffs as decoded, sparse diffs added)."""

    def __init__(self, full_shapes: dict[str, tuple[int, ...]]):
        self.full = {n: torch.full(s, math.nan) for n, s in full_shapes.items()}

    def receive(self, payload: bytes, view) -> Params:
        have = view.extract(self.full)
        out = {}
        for (name, old), rec in zip(have.items(), codec.decode(payload), strict=True):
            if isinstance(rec, codec.Dense) and bool(torch.isnan(old).all()):
                new = rec.values.reshape(old.shape).clone()
            else:
                new = torch.nan_to_num(old, nan=0.0)
                if isinstance(rec, codec.Dense):
                    new += rec.values.reshape(old.shape)
                else:
                    new.view(-1)[rec.indices] += rec.values
            out[name] = new
        view.scatter_(self.full, out)
        return out


@pytest.mark.parametrize("name", ["topk", "dgc"])
@pytest.mark.parametrize(("fmt", "width"), [("fp32", 4), ("fp16", 2), ("q8", 1)])
def test_first_copy_format_and_server_copy_equals_what_the_client_decoded(
    name: str, fmt: str, width: int
) -> None:
    """A compressed first copy shrinks by the value width; over rounds of moving weights and
    changing sub-models the server's copy is bit for bit what an independent client decoded,
    and the rounding of the first copy is sent later like any residual."""
    comp = build(_cfg(name, downlink=True, sparsity=0.9, first_copy=fmt), shapes=SHAPES)
    client = Client(SHAPES)
    full = _params(0)
    views = [Rows(list(range(64))), Rows([0, 1, 2, 10, 11, 40]), Rows([1, 2, 30, 31, 63])]
    first = comp.encode_down(7, views[0].extract(full), views[0])
    # header, two records of tag + dims (3 + 2 bytes), the values, q8's lo + scale per record
    n_values = 64 * 40 + 64
    assert len(first) == 8 + 3 + 2 + n_values * width + (2 * 8 if fmt == "q8" else 0)
    if fmt == "fp32":
        assert len(first) == len(codec.encode_params(views[0].extract(full)))
    payload, view = first, views[0]
    for r in range(1, 31):
        got = comp.decode_down(7, payload, view)  # each payload decoded once, in order
        mine = client.receive(payload, view)
        server = comp.down.copies.extract(7, view)["w"]  # type: ignore[attr-defined]
        for n in got:
            assert torch.equal(got[n], mine[n])
            assert torch.equal(server[n], mine[n])
        if r < 4:
            full = {n: t + 0.01 * r * torch.randn_like(t) for n, t in full.items()}
        view = views[r % 3]
        payload = comp.encode_down(7, view.extract(full), view)
    # the first copy's rounding was residual and went out later: the client caught up
    assert view is views[0]
    got = comp.decode_down(7, payload, view)
    torch.testing.assert_close(got["w"], full["w"], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["b"], full["b"], rtol=0, atol=1e-5)


def test_first_copy_q8_quarters_cnn_mnist_first_download() -> None:
    w = _params(0, CNN_MNIST, 0.05)
    fp32 = build(_cfg("dgc", downlink=True, dense_below=1024)).encode_down(0, w, ID)
    q8 = build(_cfg("dgc", downlink=True, dense_below=1024, first_copy="q8")).encode_down(0, w, ID)
    fp16 = build(_cfg("dgc", downlink=True, first_copy="fp16")).encode_down(0, w, ID)
    print(f"\ncnn_mnist first copy: fp32 {len(fp32)} B, fp16 {len(fp16)} B, q8 {len(q8)} B")
    assert len(fp32) == len(codec.encode_params(w))
    assert len(fp16) < len(fp32) / 2 + 100 and len(q8) < len(fp32) / 4 + 100
