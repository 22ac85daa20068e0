"""FD, Multi-Model AFD and Single-Model AFD behind the Strategy interface (issue 3)."""

import io
import math

import pytest
import torch
from omegaconf import OmegaConf

from afd_cli import models, strategies
from afd_cli.config import ConfigError, validate
from afd_cli.strategies.afd import MultiModelAFD, SingleModelAFD

MODELS = [
    ("mlp", (1, 4, 4), 3, {"hidden": 8}),
    ("char_lstm", (80,), 80, {"lstm_hidden": 16}),
]


@pytest.fixture(params=MODELS, ids=[m[0] for m in MODELS])
def model(request):
    name, shape, nc, kw = request.param
    return models.build(name, shape, nc, **kw)


def _build(name, model, rate=0.25, seed=0, **kw):
    return strategies.make(name, model, seed, rate=rate, **kw)


def _keys(view):
    return {k: tuple(v.tolist()) for k, v in view.keep.items()}


def _losses(round, clients):
    """A fake, deterministic loss trajectory with both improvements and regressions."""
    return [1.0 + 0.5 * math.sin(3 * round + c) for c in clients]


def _run(strategy, rounds, clients_of=lambda t: [t % 5, 5 + t % 3, 9]):
    out = []
    for t in rounds:
        cl = clients_of(t)
        views = strategy.select(t, cl)
        out.append([_keys(v) for v in views])
        strategy.observe(t, cl, _losses(t, cl), [10 + c for c in cl])
    return out


@pytest.mark.parametrize("name", ["fd", "multi", "single"])
@pytest.mark.parametrize("rate", [0.25, 0.5, 0.75])
def test_exact_budget_every_round(model, name, rate):
    s = _build(name, model, rate)
    for t in range(4):
        cl = [0, 1, 2]
        for v in s.select(t, cl):
            for layer, n in model.units.items():
                k = math.ceil((1 - rate) * n - 1e-9)
                assert v.units[layer] == k == len(set(v.keep[layer].tolist()))
        s.observe(t, cl, _losses(t, cl), [1, 1, 1])


@pytest.mark.parametrize("name", ["fd", "multi", "single"])
def test_rate_zero_is_fedavg(model, name):
    fedavg, s = _build("fedavg", model, 0.0), _build(name, model, 0.0)
    for t in range(3):
        cl = [1, 4, 7]
        for a, b in zip(fedavg.select(t, cl), s.select(t, cl), strict=True):
            assert b.units == a.units == model.units
            assert b.is_full and b.keep is None and a.keep is None
        s.observe(t, cl, _losses(t, cl), [5, 5, 5])
    if name == "multi":
        assert s.maps == {}  # no score maps at rate 0
    if name == "single":
        assert s.map.last_loss is None and s.map.keep is None


def test_fd_differs_per_client_and_is_deterministic(model):
    s = _build("fd", model, 0.5)
    views = s.select(3, [0, 1, 2, 3])
    assert len({tuple(sorted(_keys(v).items())) for v in views}) == 4
    again = _build("fd", model, 0.5).select(3, [0, 1, 2, 3])
    assert [_keys(v) for v in views] == [_keys(v) for v in again]
    other = _build("fd", model, 0.5, seed=1).select(3, [0, 1, 2, 3])
    assert [_keys(v) for v in views] != [_keys(v) for v in other]
    # a client's draw depends on (seed, round, client) only, not on who else is sampled
    assert _keys(s.select(3, [2, 9])[0]) == _keys(views[2])
    assert _keys(s.select(4, [2])[0]) != _keys(views[2])


def test_single_gives_one_submodel_per_round(model):
    s = _build("single", model, 0.5)
    seen = set()
    for t in range(6):
        cl = [t, t + 1, t + 7]
        views = s.select(t, cl)
        assert len({tuple(sorted(_keys(v).items())) for v in views}) == 1
        seen.add(tuple(sorted(_keys(views[0]).items())))
        s.observe(t, cl, _losses(t, cl), [3, 4, 5])
    assert len(seen) > 1  # redraws happen across rounds


def test_single_uses_sample_weighted_mean_loss(model):
    s = _build("single", model, 0.5)
    assert isinstance(s, SingleModelAFD)
    s.select(0, [0, 1])
    s.observe(0, [0, 1], [1.0, 3.0], [3, 1])
    assert s.map.last_loss == pytest.approx(1.5)
    a = _keys(s.select(1, [0, 1])[0])
    s.observe(1, [0, 1], [1.0, 2.0], [1, 1])  # mean 1.5: no improvement -> redraw
    assert s.map.keep is None
    b = _keys(s.select(2, [0, 1])[0])
    s.observe(2, [0, 1], [1.0, 1.0], [1, 1])  # 1.0 < 1.5: A scored and kept
    assert _keys(s.select(3, [5])[0]) == b
    assert a != b
    for layer, idx in s.map.keep.items():
        assert torch.allclose(s.map.scores[layer][idx], torch.tensor(1 / 3, dtype=torch.float64))


def test_multi_keeps_one_map_per_sampled_client(model):
    s = _build("multi", model, 0.5)
    assert isinstance(s, MultiModelAFD)
    s.select(0, [2, 5])
    assert set(s.maps) == {2, 5}
    s.observe(0, [2, 5], [1.0, 1.0], [1, 1])
    s.select(1, [5, 8])
    assert set(s.maps) == {2, 5, 8}
    views = s.select(2, [2, 5, 8])
    assert len({tuple(sorted(_keys(v).items())) for v in views}) == 3


def test_multi_updates_each_client_from_its_own_loss(model):
    s = _build("multi", model, 0.5)
    s.select(0, [1, 2])
    s.observe(0, [1, 2], [2.0, 2.0], [1, 1])  # baselines
    a1, a2 = (_keys(v) for v in s.select(1, [1, 2]))
    s.observe(1, [1, 2], [1.0, 3.0], [1, 1])  # client 1 improves, client 2 regresses
    assert s.maps[1].keep is not None and s.maps[2].keep is None
    for layer, idx in s.maps[1].keep.items():
        assert torch.allclose(s.maps[1].scores[layer][idx], torch.tensor(0.5, dtype=torch.float64))
    assert all(bool((v == 0).all()) for v in s.maps[2].scores.values())
    b1, b2 = (_keys(v) for v in s.select(2, [1, 2]))
    assert b1 == a1 and b2 != a2
    # an unsampled client's map does not move, and compares with ITS previous loss
    s.select(3, [2])
    s.observe(3, [2], [2.5], [1])  # 2.5 < 3.0 (client 2's last loss): improvement
    assert s.maps[2].keep is not None and s.maps[1].last_loss == 1.0


@pytest.mark.parametrize("name", ["fd", "multi", "single"])
def test_resume_continues_identically(model, name):
    ref = _build(name, model, 0.5, seed=7)
    expected = _run(ref, range(5))
    s = _build(name, model, 0.5, seed=7)
    first = _run(s, range(3))
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    fresh = _build(name, model, 0.5, seed=7)
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    assert first + _run(fresh, range(3, 5)) == expected
    assert _run(_build(name, model, 0.5, seed=7), range(5)) == expected  # determinism


def test_state_dict_is_plain(model):
    s = _build("multi", model, 0.5)
    _run(s, range(3))

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
        return x is None or isinstance(x, (int, float, torch.Tensor))

    assert plain(s.state_dict()) and plain(_build("single", model, 0.5).state_dict())


def test_build_rejects_unknown_and_config_validates(model):
    with pytest.raises(ValueError):
        strategies.make("nope", model, 0)
    base = {"dataset": {"name": "digits"}, "model": {"name": "mlp"}}
    ok = validate(OmegaConf.create({**base, "strategy": {"name": "multi", "rate": 0.25}}))
    assert ok.strategy.score_update == "relative" and ok.strategy.explore == 0.0
    for bad in ({"score_init": -1.0}, {"explore": 1.5}, {"score_update": "x"}, {"rate": 1.0}):
        with pytest.raises(ConfigError):
            validate(OmegaConf.create({**base, "strategy": {"name": "single", **bad}}))
