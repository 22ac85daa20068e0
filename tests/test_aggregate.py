"""Mask-aware, sample-weighted averaging (SPEC 1.3) on hand-made cases."""

import pytest
import torch

from afd_cli import models, submodel
from afd_cli.federated import aggregate
from afd_cli.federated.aggregate import MaskedMean
from afd_cli.models.cnn import CNN


def _mlp():
    m = models.build("mlp", (1, 2, 2), 3, hidden=4)
    return m, {k: torch.zeros_like(v) for k, v in m.named_parameters()}


def test_full_updates_are_fedavg_weighted_mean():
    m, w = _mlp()
    full = submodel.View(m)
    a = {k: torch.ones_like(v) for k, v in w.items()}
    b = {k: torch.full_like(v, 4.0) for k, v in w.items()}
    agg = MaskedMean(w)
    agg.add(full, a, 30)
    agg.add(full, b, 10)
    agg.apply_(w)
    for v in w.values():
        assert torch.allclose(v, torch.full_like(v, (30 * 1 + 10 * 4) / 40))


def test_entries_average_only_over_clients_that_held_them():
    m, w = _mlp()
    for v in w.values():
        v.fill_(100.0)  # untouched entries must keep this value
    va = submodel.View(m, {"fc1": torch.tensor([0, 1]), "fc2": torch.tensor([0, 1])})
    vb = submodel.View(m, {"fc1": torch.tensor([1, 2]), "fc2": torch.tensor([0, 1])})
    ua = {k: torch.full_like(v, 1.0) for k, v in va.extract(w).items()}
    ub = {k: torch.full_like(v, 3.0) for k, v in vb.extract(w).items()}
    agg = MaskedMean(w)
    agg.add(va, ua, 1)
    agg.add(vb, ub, 3)
    agg.apply_(w)
    b1 = w["fc1.bias"]
    assert b1[0] == 101.0  # only client a (update 1)
    assert b1[1] == 100.0 + (1 * 1 + 3 * 3) / 4  # both, renormalised weights 1/4, 3/4
    assert b1[2] == 103.0  # only client b
    assert b1[3] == 100.0  # no client: unchanged
    assert torch.all(w["fc1.weight"][3] == 100.0)
    assert w["fc2.weight"][0, 0] == 101.0 and w["fc2.weight"][0, 2] == 103.0


def test_mixing_full_and_partial_updates():
    m, w = _mlp()
    agg = MaskedMean(w)
    agg.add(submodel.View(m), {k: torch.full_like(v, 2.0) for k, v in w.items()}, 1)
    vp = submodel.View(m, {"fc1": torch.tensor([0]), "fc2": torch.tensor([0])})
    agg.add(vp, {k: torch.full_like(v, 5.0) for k, v in vp.extract(w).items()}, 1)
    agg.apply_(w)
    assert w["fc1.bias"][0] == 3.5 and w["fc1.bias"][1] == 2.0


# -- add_many: the whole round at once equals add per client ----------------------------------

SMALL_ZOO = {
    "mlp": lambda: models.build("mlp", (1, 6, 6), 5, hidden=12),
    "cnn": lambda: CNN((1, 12, 12), 5, {"conv1": 4, "conv2": 6, "fc1": 16}),
    "char_lstm": lambda: models.build("char_lstm", (7,), 11, lstm_hidden=6, lstm_layers=2),
}


def _round_of_views(m, gen, rates):
    """Views for one round: a random sub-model per rate (None = the full model)."""
    return [
        submodel.View(m) if r is None else submodel.View(m, submodel.random_keep(m, r, gen))
        for r in rates
    ]


@pytest.mark.parametrize("name", sorted(SMALL_ZOO))
@pytest.mark.parametrize(
    "rates",
    [
        [None, None, None],  # FedAvg: no per-entry denominators at all
        [0.5, 0.5, 0.5, 0.5],  # one shape, different unit sets (overlapping)
        [0.25, None, 0.5, 0.25, 0.0, None, 0.5],  # mixed shapes, full views, keep-all views
        [0.5, None],  # a partial view first, then a full one
    ],
)
@pytest.mark.parametrize("stack", [32, 2])
def test_add_many_equals_add_per_client(name, rates, stack, monkeypatch):
    monkeypatch.setattr(aggregate, "STACK", stack)  # 2: groups split into several stacks
    torch.manual_seed(0)
    m = SMALL_ZOO[name]()
    w = {k: v.detach().double() for k, v in m.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    views = _round_of_views(m, gen, rates)
    updates = [{k: torch.randn_like(t) for k, t in v.extract(w).items()} for v in views]
    sizes = [int(s) for s in torch.randint(1, 50, (len(views),), generator=gen)]

    one, many = MaskedMean(w), MaskedMean(w)
    for v, u, n in zip(views, updates, sizes, strict=True):
        one.add(v, u, n)
    many.add_many(views, updates, sizes)
    assert (one.den is None) == (many.den is None) == all(r is None for r in rates)
    for k in w:
        torch.testing.assert_close(many.num[k], one.num[k], rtol=1e-12, atol=1e-12)
        if one.den is not None:
            torch.testing.assert_close(many.den[k], one.den[k], rtol=0, atol=0)
    a = {k: v.clone() for k, v in w.items()}
    b = {k: v.clone() for k, v in w.items()}
    one.apply_(a)
    many.apply_(b)
    for k in w:
        torch.testing.assert_close(b[k], a[k], rtol=1e-12, atol=1e-12)
    assert any(not torch.equal(a[k], w[k]) for k in w)


def test_add_many_after_add_and_on_overlaps():
    """Mixing the two entry points, and entries kept by several clients of one shape."""
    m, w = _mlp()
    va = submodel.View(m, {"fc1": torch.tensor([0, 1]), "fc2": torch.tensor([0, 1])})
    vb = submodel.View(m, {"fc1": torch.tensor([1, 2]), "fc2": torch.tensor([0, 1])})
    ua = {k: torch.full_like(v, 1.0) for k, v in va.extract(w).items()}
    ub = {k: torch.full_like(v, 3.0) for k, v in vb.extract(w).items()}
    agg = MaskedMean(w)
    agg.add(submodel.View(m), {k: torch.full_like(v, 2.0) for k, v in w.items()}, 2)
    agg.add_many([va, vb], [ua, ub], [1, 3])
    agg.apply_(w)
    b1 = w["fc1.bias"]
    assert b1[0] == (2 * 2 + 1) / 3
    assert b1[1] == (2 * 2 + 1 + 9) / 6
    assert b1[2] == (2 * 2 + 9) / 5
    assert b1[3] == 2.0


def test_add_many_rejects_mismatched_lengths():
    m, w = _mlp()
    with pytest.raises(ValueError):
        MaskedMean(w).add_many([submodel.View(m)], [], [1])
