"""SPEC 2 invariants of extract / inflate for every model of the zoo."""

import pytest
import torch

from afd_cli import models, submodel

ZOO = [
    ("cnn_mnist", (1, 28, 28), 10),
    ("cnn_femnist", (1, 28, 28), 10),
    ("mlp", (1, 8, 8), 10),
    ("char_lstm", (80,), 80),
]


def _setup(name, shape, nc, rate=0.25, seed=0):
    torch.manual_seed(seed)
    m = models.build(name, shape, nc)
    full = {k: v.detach().clone() for k, v in m.named_parameters()}
    keep = submodel.random_keep(m, rate, torch.Generator().manual_seed(seed + 1))
    return m, full, keep, submodel.View(m, keep)


def _input(shape, nc):
    if len(shape) == 1:
        return torch.randint(0, nc, (3, *shape))
    return torch.randn(3, *shape)


@pytest.mark.parametrize("name,shape,nc", ZOO)
def test_submodel_is_a_smaller_module_that_loads_the_extracted_tensors(name, shape, nc):
    m, full, keep, view = _setup(name, shape, nc)
    sub = view.extract(full)
    small = m.with_units(view.units)
    small.load_state_dict(sub)  # strict: every shape must match the smaller module
    assert models.num_params(small) == view.num_kept(full) < models.num_params(m)
    for layer, n in m.units.items():
        assert view.units[layer] == submodel.units_to_keep(n, 0.25) < n


@pytest.mark.parametrize("name,shape,nc", ZOO)
def test_inflate_of_extract_equals_weights_on_kept_entries(name, shape, nc):
    m, full, keep, view = _setup(name, shape, nc)
    inflated, mask = view.inflate(view.extract(full), full)
    for k, w in full.items():
        assert torch.equal(inflated[k][mask[k]], w[mask[k]])
        assert torch.all(inflated[k][~mask[k]] == 0)
        assert mask[k].sum() == view.extract(full)[k].numel()


@pytest.mark.parametrize("name,shape,nc", ZOO)
def test_submodel_forward_equals_full_model_with_dropped_units_zeroed(name, shape, nc):
    m, full, keep, view = _setup(name, shape, nc)
    small = m.with_units(view.units)
    small.load_state_dict(view.extract(full))
    # Zero every weight and bias touching a dropped unit in the full model.
    inflated, _ = view.inflate(view.extract(full), full)
    zeroed = m.with_units(m.units)
    zeroed.load_state_dict(inflated)
    x = _input(shape, nc)
    with torch.no_grad():
        torch.testing.assert_close(small(x), zeroed(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,shape,nc", ZOO[:3])
def test_submodel_forward_equals_full_weights_with_dropped_activations_masked(name, shape, nc):
    """Same invariant, other direction: the full model's own weights, dropped units forced
    to zero by hooks on their pre-activations (ReLU(0) = 0, max-pool of 0 = 0)."""
    m, full, keep, view = _setup(name, shape, nc)
    small = m.with_units(view.units)
    small.load_state_dict(view.extract(full))
    for layer, idx in keep.items():
        unit_mask = torch.zeros(m.units[layer])
        unit_mask[idx] = 1.0
        shape_ = (1, -1, 1, 1) if layer.startswith("conv") else (1, -1)
        getattr(m, layer).register_forward_hook(
            lambda mod, inp, out, u=unit_mask.view(shape_): out * u
        )
    x = _input(shape, nc)
    with torch.no_grad():
        torch.testing.assert_close(small(x), m(x), atol=1e-5, rtol=1e-4)


def test_dense_dense_bytes_shrink_as_one_minus_p_squared():
    m = models.build("mlp", (1, 8, 8), 10, hidden=400)
    full = {k: v.detach() for k, v in m.named_parameters()}
    for rate in (0.25, 0.5, 0.75):
        view = submodel.View(m, submodel.random_keep(m, rate, torch.Generator().manual_seed(0)))
        ratio = view.extract(full)["fc2.weight"].numel() / full["fc2.weight"].numel()
        assert ratio == pytest.approx((1 - rate) ** 2, rel=0.01)


def test_lstm_unit_drops_all_four_gates_together():
    m = models.build("char_lstm", (80,), 80, lstm_hidden=8, lstm_layers=2)
    keep = {"lstm1": torch.tensor([1, 5]), "lstm2": torch.tensor([0, 2, 3])}
    view = submodel.View(m, keep)
    full = {k: v.detach() for k, v in m.named_parameters()}
    sub = view.extract(full)
    rows = torch.tensor([1, 5, 9, 13, 17, 21, 25, 29])  # unit u of gate g is row u + 8g
    assert torch.equal(sub["lstms.0.weight_ih_l0"], full["lstms.0.weight_ih_l0"][rows])
    assert torch.equal(sub["lstms.0.weight_hh_l0"], full["lstms.0.weight_hh_l0"][rows][:, [1, 5]])
    assert sub["lstms.1.weight_ih_l0"].shape == (12, 2)
    assert sub["fc.weight"].shape == (80, 3)


def test_conv_to_dense_keeps_each_filters_spatial_block():
    m = models.build("cnn_mnist", (1, 28, 28), 10)
    keep = {"conv1": torch.arange(32), "conv2": torch.tensor([3]), "fc1": torch.arange(512)}
    view = submodel.View(m, keep)
    full = {k: v.detach() for k, v in m.named_parameters()}
    sub = view.extract(full)
    assert torch.equal(sub["fc1.weight"], full["fc1.weight"][:, 3 * 49 : 4 * 49])


def test_scatter_then_extract_round_trips():
    m, full, keep, view = _setup("cnn_mnist", (1, 28, 28), 10)
    target = {k: torch.zeros_like(v) for k, v in full.items()}
    sub = {k: torch.randn_like(v) for k, v in view.extract(full).items()}
    view.scatter_(target, sub)
    for k, v in view.extract(target).items():
        assert torch.equal(v, sub[k])


# -- ViewBatch: all clients of one sub-model shape at once ------------------------------------


def _batch(name, shape, nc, rates=(0.25, 0.25, 0.25), seed=0):
    torch.manual_seed(seed)
    m = models.build(name, shape, nc)
    full = {k: v.detach().clone() for k, v in m.named_parameters()}
    gen = torch.Generator().manual_seed(seed + 1)
    views = [
        submodel.View(m) if r is None else submodel.View(m, submodel.random_keep(m, r, gen))
        for r in rates
    ]
    return m, full, views, submodel.ViewBatch(views)


@pytest.mark.parametrize("name,shape,nc", ZOO)
def test_view_batch_gathers_what_each_view_extracts(name, shape, nc):
    m, full, views, vb = _batch(name, shape, nc)
    got = vb.extract(full)
    own = {k: torch.stack([v * (c + 1) for c in range(3)]) for k, v in full.items()}
    rows = vb.extract_rows(own)
    for c, view in enumerate(views):
        for k, t in view.extract(full).items():
            assert got[k].shape == (3, *t.shape)
            assert vb.sub_shape(k, tuple(full[k].shape)) == t.shape
            assert torch.equal(got[k][c], t)
            assert torch.equal(rows[k][c], t * (c + 1))


@pytest.mark.parametrize("name,shape,nc", ZOO)
def test_view_batch_scatter_add_equals_per_view_add(name, shape, nc):
    m, full, views, vb = _batch(name, shape, nc)
    subs = [{k: torch.randn_like(t) for k, t in v.extract(full).items()} for v in views]
    weights = [3.0, 0.5, 2.0]
    want = {k: torch.zeros_like(v) for k, v in full.items()}
    count_want = {k: torch.zeros_like(v) for k, v in full.items()}
    for v, s, w in zip(views, subs, weights, strict=True):
        v.add_(want, s, alpha=w)
        v.add_(count_want, {k: torch.ones_like(t) for k, t in s.items()}, alpha=w)
    got = {k: torch.zeros_like(v) for k, v in full.items()}
    count = {k: torch.zeros_like(v) for k, v in full.items()}
    vb.add_(got, {k: torch.stack([s[k] for s in subs]) for k in full}, weights)
    vb.count_(count, weights)
    for k in full:
        torch.testing.assert_close(got[k], want[k])
        assert torch.equal(count[k], count_want[k])
    assert any(bool((count[k] > 3.0).any()) for k in full)  # clients' units overlap somewhere


def test_view_batch_with_full_views():
    """Full views (keep=None) take the identity slice, alone or beside keep-all views."""
    m, full, views, vb = _batch("mlp", (1, 8, 8), 10, rates=(None, None))
    assert vb.all_full
    got = vb.extract(full)
    assert all(torch.equal(got[k][c], full[k]) for k in full for c in range(2))
    acc = {k: torch.zeros_like(v) for k, v in full.items()}
    vb.add_(acc, got, [1.0, 2.0])
    assert all(torch.allclose(acc[k], 3 * full[k]) for k in full)
    m, full, views, vb = _batch("mlp", (1, 8, 8), 10, rates=(None, 0.0, None))
    assert not vb.all_full  # rate 0 keeps every unit: same shapes as the full view
    got = vb.extract(full)
    assert all(torch.equal(got[k][c], full[k]) for k in full for c in range(3))


def test_view_batch_rejects_different_shapes():
    m = models.build("mlp", (1, 8, 8), 10)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError):
        submodel.ViewBatch([submodel.View(m, submodel.random_keep(m, r, gen)) for r in (0.25, 0.5)])
