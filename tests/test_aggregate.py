"""Mask-aware, sample-weighted averaging (SPEC 1.3) on hand-made cases."""

import torch

from afd_cli import models, submodel
from afd_cli.federated.aggregate import MaskedMean


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
