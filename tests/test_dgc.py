"""DGC: warm-up, threshold sampling, clipping, momentum correction/masking, conservation."""

from __future__ import annotations

import math

import pytest
import torch
from views import ID  # pytest puts tests/ on sys.path

from afd_cli.compression import RoundContext, codec, make
from afd_cli.compression.base import Params
from afd_cli.compression.sparsify import (
    keep_count,
    sampled_topk_indices,
    topk_indices,
    warmup_sparsity,
)


def _cfg(**kw: object) -> dict[str, object]:
    return {"name": "dgc", "dense_rule": "size", "dense_below": 16, "sample_ratio": 0.01, **kw}


def build(cfg: dict[str, object], shapes: dict | None = None, seed: int = 0):
    values = dict(cfg)
    return make(str(values.pop("name")), shapes=shapes, seed=seed, **values)  # type: ignore[arg-type]


def _update(seed: int, shapes: dict[str, tuple[int, ...]]) -> Params:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in shapes.items()}


SHAPES = {"w": (40, 50), "b": (5,)}


def _state(comp: object, client: int) -> dict[str, Params]:
    return comp.state_dict()["up"][client]  # type: ignore[attr-defined]


def test_warmup_schedule() -> None:
    got = [warmup_sparsity(r, 0.999, 4) for r in range(6)]
    assert got == [0.75, 0.9375, 0.984375, 0.99609375, 0.999, 0.999]
    assert [warmup_sparsity(r, 0.999, 0) for r in range(2)] == [0.999, 0.999]
    # the steps below the target share the warm-up rounds evenly
    assert [warmup_sparsity(r, 0.9, 4) for r in range(5)] == [0.75, 0.75, 0.75, 0.75, 0.9]
    spread = [warmup_sparsity(r, 0.999, 40) for r in range(41)]
    assert spread[:10] == [0.75] * 10 and spread[10:20] == [0.9375] * 10
    assert spread[30:40] == [0.99609375] * 10 and spread[40] == 0.999
    assert [warmup_sparsity(r, 0.99, 2) for r in range(3)] == [0.75, 0.9375, 0.99]


def test_dgc_follows_warmup_in_its_uploads() -> None:
    comp = build(_cfg(sparsity=0.999, warmup_rounds=4))
    n = 100_000
    for r, s in enumerate([0.75, 0.9375, 0.984375, 0.99609375, 0.999]):
        update = {"w": torch.randn(n)}
        out = comp.decode_up(0, comp.encode_up(0, update, ID, RoundContext(r, 1)), ID)
        assert int((out["w"] != 0).sum()) == keep_count(n, s, ceil=True)  # Lin et al.'s k
        assert comp.end_round()["sparsity"] == pytest.approx(s, abs=1e-5)


def test_keep_count() -> None:
    assert keep_count(0, 0.9) == 0
    assert keep_count(10, 0.999) == 1
    assert keep_count(1_605_632, 0.999) == 1606
    assert keep_count(8, 0.0) == 8
    # the ceiling (Lin et al.'s code), not lifted by the float error of 1 - 0.999
    assert keep_count(1_605_632, 0.999, ceil=True) == 1606
    assert keep_count(800, 0.999, ceil=True) == 1 and keep_count(1000, 0.999, ceil=True) == 1
    assert keep_count(1001, 0.999, ceil=True) == 2 and keep_count(1499, 0.999) == 1


def test_threshold_sampling_hits_k_on_1m_entries() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1_000_000, generator=g)
    for k in (1000, 10_000, 100_000):
        got = sampled_topk_indices(x, k, 0.01, g)
        assert abs(got.numel() - k) <= 0.1 * k
        assert torch.equal(got, topk_indices(x, k))  # exact among candidates => exact top-k
        assert bool((got[1:] > got[:-1]).all())


def test_local_clipping_scales_to_c_over_sqrt_n() -> None:
    comp = build(_cfg(clip_norm=2.0, warmup_rounds=0, sparsity=0.0, dense_below=10**9))
    update = {"w": torch.full((10, 10), 3.0), "b": torch.ones(5)}
    out = comp.decode_up(0, comp.encode_up(0, update, ID, RoundContext(0, 16)), ID)
    norm = math.sqrt(sum(float(t.pow(2).sum()) for t in out.values()))
    assert norm == pytest.approx(2.0 / 4.0, rel=1e-6)
    ratio = out["w"] / update["w"]
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0, 0])))
    small = {"w": torch.full((10, 10), 1e-3), "b": torch.zeros(5)}
    out = comp.decode_up(1, comp.encode_up(1, small, ID, RoundContext(0, 16)), ID)
    torch.testing.assert_close(out["w"], small["w"], rtol=0, atol=0)


@pytest.mark.parametrize("values", ["fp32", "fp16"])
def test_conservation_and_masking(values: str) -> None:
    """With ``fp16_residual`` nothing accumulated is lost; sparse tensors' ``u`` is masked
    where sent, a dense tensor's ``u`` is ordinary momentum (``dense_momentum``)."""
    m = 0.9
    comp = build(
        _cfg(momentum=m, values=values, warmup_rounds=2, sparsity=0.99, fp16_residual=True)
    )
    u_old = {n: torch.zeros(s) for n, s in SHAPES.items()}
    v_old = {n: torch.zeros(s) for n, s in SHAPES.items()}
    for r in range(4):
        g = _update(r, SHAPES)
        payload = comp.encode_up(7, g, ID, RoundContext(r, 1))
        sent_records = codec.decode(payload)
        sent = comp.decode_up(7, payload, ID)
        st = _state(comp, 7)
        for name in SHAPES:
            u_new = m * u_old[name] + g[name]
            accumulated = v_old[name] + u_new
            # everything accumulated is either sent or still in v
            torch.testing.assert_close(sent[name] + st["v"][name], accumulated)
            rec = sent_records[list(SHAPES).index(name)]
            idx = rec.indices if isinstance(rec, codec.Sparse) else torch.arange(u_new.numel())
            mask = torch.zeros(u_new.numel(), dtype=torch.bool)
            mask[idx] = True
            if isinstance(rec, codec.Dense):  # ordinary momentum, never masked
                assert torch.equal(st["u"][name], u_new)
                u_old[name], v_old[name] = st["u"][name], st["v"][name]
                continue
            # momentum factor masking: u and v zero exactly where sent
            assert bool((st["u"][name].view(-1)[mask] == 0).all())
            assert torch.equal(st["u"][name].view(-1)[~mask], u_new.view(-1)[~mask])
            if values == "fp32":
                assert bool((st["v"][name].view(-1)[mask] == 0).all())
            assert bool((st["v"][name].view(-1)[~mask] != 0).all())
            u_old[name], v_old[name] = st["u"][name], st["v"][name]
        comp.end_round()


def test_no_momentum_masking_keeps_u() -> None:
    comp = build(_cfg(momentum_masking=False, warmup_rounds=0, sparsity=0.9))
    g = _update(0, SHAPES)
    payload = comp.encode_up(0, g, ID, RoundContext(0, 1))
    st = _state(comp, 0)
    (rec, _) = codec.decode(payload)
    assert isinstance(rec, codec.Sparse)
    assert torch.equal(st["u"]["w"], g["w"])  # u untouched by the send
    assert bool((st["v"]["w"].view(-1)[rec.indices] == 0).all())


def test_without_momentum_correction_plain_residual() -> None:
    comp = build(_cfg(momentum_correction=False, warmup_rounds=0, sparsity=0.95))
    v_old = torch.zeros(SHAPES["w"])
    for r in range(3):
        g = _update(10 + r, SHAPES)
        sent = comp.decode_up(1, comp.encode_up(1, g, ID, RoundContext(r, 1)), ID)
        st = _state(comp, 1)
        assert set(st) == {"v"}  # no momentum buffer kept
        torch.testing.assert_close(sent["w"] + st["v"]["w"], v_old + g["w"])
        assert int((sent["w"] != 0).sum()) == keep_count(2000, 0.95, ceil=True)
        v_old = st["v"]["w"]


def test_fp16_values_halve_value_bytes() -> None:
    g = {"w": torch.randn(100_000)}
    sizes = {}
    for values in ("fp32", "fp16"):
        comp = build(_cfg(values=values, warmup_rounds=0, sparsity=0.99))
        sizes[values] = len(comp.encode_up(0, g, ID, RoundContext(0, 1)))
    assert sizes["fp32"] - sizes["fp16"] == 2 * keep_count(100_000, 0.99, ceil=True)
