"""The torch (device) backend of the sparse compressors gives the numpy backend's payloads.

On CPU the numpy backend is the default; on a GPU the torch one keeps upload state on the
device and encodes a round's clients of one sub-model shape as ``[C, n]`` stacks. Here the
torch code runs on CPU tensors (``backend="torch"``) and must send the same indices and
values and keep the same residuals as numpy, client by client and batched. Random data has
no ties in magnitude, so the exact top-k sets are unique.
"""

from __future__ import annotations

import pytest
import torch

from afd_cli import models, submodel
from afd_cli.compression import RoundContext, codec, make, sparsify
from afd_cli.compression.base import encode_up_many

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MODEL = models.build("mlp", (1, 8, 8), 10, hidden=200)
SHAPES = {k: tuple(p.shape) for k, p in MODEL.named_parameters()}
RATES = [0.25, None, 0.25, 0.5, 0.25]  # mixed shapes, full views among them

CONFIGS = {
    "topk": dict(name="topk", sparsity=0.99),
    "topk-fp16": dict(name="topk", sparsity=0.95, values="fp16"),
    "dgc": dict(name="dgc", sparsity=0.99, warmup_rounds=2),
    "dgc-clip": dict(name="dgc", sparsity=0.99, warmup_rounds=0, clip_norm=1.0),
    "dgc-fp16-nomask": dict(name="dgc", sparsity=0.98, values="fp16", momentum_masking=False),
    "dgc-nomc": dict(name="dgc", sparsity=0.99, momentum_correction=False),
    # Lin et al.'s defaults (issue 26): biases dense with ordinary momentum, fp16 error dropped
    "dgc-reference": dict(
        name="dgc", sparsity=0.99, warmup_rounds=0, values="fp16", dense_rule="ndim"
    ),
}


def _cfg(kw: dict) -> dict:
    return {"dense_rule": "size", "dense_below": 100, "sample_ratio": 0.1, **kw}


def _make(kw: dict, backend: str, device: str = "cpu"):
    values = _cfg(kw)
    name = values.pop("name")
    seed = 3 if name == "dgc" else 0
    return make(name, SHAPES, seed=seed, device=device, backend=backend, **values)


def _round(r: int):
    """Clients, views and updates of round ``r`` (clients come back across rounds)."""
    gen = torch.Generator().manual_seed(100 + r)
    clients = sorted(torch.randperm(8, generator=gen)[: len(RATES)].tolist())
    views = [
        submodel.View(MODEL)
        if rate is None
        else submodel.View(MODEL, submodel.random_keep(MODEL, rate, gen))
        for rate in RATES
    ]
    full = {k: torch.zeros(s) for k, s in SHAPES.items()}
    updates = [
        {k: torch.randn(t.shape, generator=gen) * 0.1 for k, t in v.extract(full).items()}
        for v in views
    ]
    return clients, views, updates


def _run(comp, rounds: int, batched: bool, device: str = "cpu"):
    out = []
    for r in range(rounds):
        clients, views, updates = _round(r)
        updates = [{k: t.to(device) for k, t in u.items()} for u in updates]
        ctx = RoundContext(r, len(clients))
        if batched:
            payloads = encode_up_many(comp, clients, updates, views, ctx)
        else:
            each = zip(clients, updates, views, strict=True)
            payloads = [comp.encode_up(c, u, v, ctx) for c, u, v in each]
        out.append((payloads, comp.end_round()))
    return out


def _same_records(a: bytes, b: bytes, exact: bool) -> None:
    ra, rb = codec.decode(a), codec.decode(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb, strict=True):
        assert type(x) is type(y)
        if isinstance(x, codec.Sparse):
            assert x.shape == y.shape
            assert torch.equal(x.indices, y.indices)
        tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(x.values, y.values, **tol)


@pytest.mark.parametrize("batched", [False, True], ids=["per-client", "batched"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_backend_sends_what_numpy_sends(name, batched):
    kw = CONFIGS[name]
    ref, dev = _make(kw, "numpy"), _make(kw, "torch")
    assert ref.device.type == dev.device.type == "cpu"
    want, got = _run(ref, 3, batched=False), _run(dev, 3, batched=batched)
    exact = "clip" not in name  # clipping's norm may differ in the last bit between paths
    for (pw, sw), (pg, sg) in zip(want, got, strict=True):
        assert [len(p) for p in pg] == [len(p) for p in pw]  # the counted bytes
        for a, b in zip(pw, pg, strict=True):
            if exact:
                assert a == b
            _same_records(a, b, exact)
        assert sg == pytest.approx(sw)
    sref, sdev = ref.state_dict()["up"], dev.state_dict()["up"]
    assert sorted(sref) == sorted(sdev)
    for c in sref:
        for key in sref[c]:
            for n, t in sref[c][key].items():
                tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-7)
                torch.testing.assert_close(sdev[c][key][n], t, **tol)
    # something was actually left behind in the residuals
    assert any(bool(t.abs().sum() > 0) for c in sdev for t in sdev[c]["v"].values())


def test_default_backend_follows_the_device():
    cfg = _cfg(CONFIGS["dgc"])
    name = cfg.pop("name")
    assert make(name, SHAPES, **cfg).backend == "numpy"
    assert make(name, SHAPES, device="cpu", **cfg).backend == "numpy"
    with pytest.raises(ValueError):
        make("topk", SHAPES, backend="jax")


def test_numpy_backend_does_not_batch(monkeypatch):
    """On CPU the numpy path stays client by client (it is the fast one there)."""
    comp = _make(CONFIGS["dgc"], "numpy")
    calls = []
    monkeypatch.setattr(comp, "_encode_group", lambda *a: calls.append(a))
    _run(comp, 1, batched=True)
    assert calls == []


def test_batched_torch_backend_encodes_groups_not_clients(monkeypatch):
    comp = _make(CONFIGS["dgc"], "torch")
    calls = []
    monkeypatch.setattr(comp, "encode_up", lambda *a: calls.append(a))
    _run(comp, 2, batched=True)
    assert calls == []  # every client went through a [C, n] group


def test_resume_keeps_torch_state():
    a = _make(CONFIGS["dgc"], "torch")
    _run(a, 1, batched=True)
    b = _make(CONFIGS["dgc"], "torch")
    b.load_state_dict(a.state_dict())
    clients, views, updates = _round(1)
    ctx = RoundContext(1, len(clients))
    assert encode_up_many(a, clients, updates, views, ctx) == encode_up_many(
        b, clients, updates, views, ctx
    )


# -- selection on [C, n] ----------------------------------------------------------------------


def test_torch_topk_rows_equal_numpy_topk():
    x = torch.randn(4, 5000, generator=torch.Generator().manual_seed(0))
    for k in (0, 1, 37, 4999, 5000, 6000):
        got = sparsify.torch_topk_indices(x, k)
        for row in range(4):
            assert torch.equal(got[row], sparsify.topk_indices(x[row], k))


def test_torch_sampled_topk_takes_the_candidate_path_and_is_exact(monkeypatch):
    x = torch.randn(6, 100_000, generator=torch.Generator().manual_seed(1))
    x[2] *= 1000.0  # rows on different scales: each row has its own threshold
    x[4, :50] = 1e6 + torch.arange(50.0)  # a few huge entries (distinct: no ties)
    want = {k: sparsify.torch_topk_indices(x, k) for k in (1, 100, 1000, 10_000)}

    def no_fallback(flat, k):
        raise AssertionError("fell back to the full top-k")

    monkeypatch.setattr(sparsify, "torch_topk_indices", no_fallback)
    gen = torch.Generator().manual_seed(2)
    for k, w in want.items():
        got = sparsify.torch_sampled_topk_indices(x, k, 0.01, gen)
        assert torch.equal(got, w)
        for row in range(6):
            assert torch.equal(got[row], sparsify.topk_indices(x[row], k))


# -- CUDA: the same on the device (skipped without one) ---------------------------------------


@CUDA
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cuda_backend_sends_what_numpy_sends(name):
    kw = CONFIGS[name]
    ref, dev = _make(kw, "numpy"), _make(kw, None, device="cuda")
    assert dev.backend == "torch" and dev.device.type == "cuda"
    want, got = _run(ref, 3, batched=False), _run(dev, 3, batched=True, device="cuda")
    for (pw, _), (pg, _) in zip(want, got, strict=True):
        assert [len(p) for p in pg] == [len(p) for p in pw]
        for a, b in zip(pw, pg, strict=True):
            _same_records(a, b, exact=False)
    state = dev.state_dict()["up"]
    assert all(t.device.type == "cpu" for c in state for p in state[c].values() for t in p.values())
    assert all(
        t.device.type == "cuda"
        for c in dev.up._data
        for p in dev.up._data[c].values()
        for t in p.values()
    )


@CUDA
def test_cuda_view_batch_and_add_many_match_cpu():
    from afd_cli.federated.aggregate import MaskedMean

    clients, views, updates = _round(0)
    w = {k: torch.randn(s) for k, s in SHAPES.items()}
    cpu, gpu = MaskedMean(w), MaskedMean({k: t.cuda() for k, t in w.items()})
    cpu.add_many(views, updates, [3, 1, 4, 1, 5])
    gpu.add_many(views, [{k: t.cuda() for k, t in u.items()} for u in updates], [3, 1, 4, 1, 5])
    a, b = dict(w), {k: t.cuda() for k, t in w.items()}
    a = {k: t.clone() for k, t in a.items()}
    cpu.apply_(a)
    gpu.apply_(b)
    for k in w:
        torch.testing.assert_close(b[k].cpu(), a[k])
