"""The AFD activation score map: exact budgets, the score update rule, weighted redraws."""

import math

import pytest
import torch

from afd_cli.scoremap import ScoreMap, weighted_keep

UNITS = {"fc1": 8, "fc2": 6}


def _gen(s: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(s)


def _sets(keep):
    return {k: set(v.tolist()) for k, v in keep.items()}


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_budget_is_exact(rate):
    m = ScoreMap(UNITS, rate)
    for step in range(6):
        keep = m.select(_gen(step))
        for k, n in UNITS.items():
            assert len(keep[k]) == max(1, math.ceil((1 - rate) * n - 1e-9))
            assert len(set(keep[k].tolist())) == len(keep[k])  # distinct
            assert int(keep[k].min()) >= 0 and int(keep[k].max()) < n
        m.update(10.0 - step if step % 2 else 10.0 + step)


def test_first_update_only_records_loss_and_redraws():
    m = ScoreMap(UNITS, 0.5)
    m.select(_gen())
    assert m.update(2.0) is False
    assert m.last_loss == 2.0 and m.keep is None
    assert all(bool((s == 0).all()) for s in m.scores.values())


def test_loss_decrease_credits_kept_units_and_retains_them():
    m = ScoreMap(UNITS, 0.5)
    m.select(_gen(0))
    m.update(2.0)
    a = m.select(_gen(1))
    assert m.update(1.5) is True
    for k, idx in a.items():
        s = m.scores[k]
        assert torch.allclose(s[idx], torch.full((len(idx),), 0.25, dtype=s.dtype))
        others = torch.ones(len(s), dtype=torch.bool)
        others[idx] = False
        assert bool((s[others] == 0).all())
    assert _sets(m.select(_gen(99))) == _sets(a)  # same A, whatever the generator


def test_absolute_update():
    m = ScoreMap(UNITS, 0.5, score_update="absolute")
    m.select(_gen(0))
    m.update(2.0)
    a = m.select(_gen(1))
    m.update(1.5)
    assert torch.allclose(m.scores["fc1"][a["fc1"]], torch.tensor(0.5, dtype=torch.float64))


def test_loss_increase_redraws_and_keeps_scores():
    m = ScoreMap({"fc1": 100}, 0.5)
    m.select(_gen(0))
    m.update(2.0)
    m.select(_gen(1))
    m.update(1.0)  # improvement: A scored
    before = m.scores["fc1"].clone()
    assert m.update(1.2) is False  # increase
    assert m.keep is None and torch.equal(m.scores["fc1"], before)
    assert m.last_loss == 1.2


def test_nan_loss_counts_as_no_improvement():
    m = ScoreMap(UNITS, 0.5)
    m.select(_gen())
    m.update(1.0)
    m.select(_gen())
    assert m.update(float("nan")) is False and m.keep is None


def test_weighted_draw_prefers_scored_units_then_fills_uniformly():
    scores = torch.zeros(20, dtype=torch.float64)
    scores[:3] = 1.0  # fewer scored units than the budget: all of them, rest uniform
    picks = weighted_keep(scores, 10, _gen(0))
    assert len(picks) == 10 and {0, 1, 2} <= set(picks.tolist())
    # more scored units than the budget: only scored units, high scores more often
    scores = torch.zeros(20, dtype=torch.float64)
    scores[:10] = torch.tensor([10.0] * 5 + [0.1] * 5, dtype=torch.float64)
    counts = torch.zeros(20)
    for s in range(200):
        counts[weighted_keep(scores, 5, _gen(s))] += 1
    assert counts[10:].sum() == 0
    assert counts[:5].sum() > 3 * counts[5:10].sum()


def test_literal_rule_redraws_same_set_without_explore():
    """Paper-literal redraw: once A is fully scored, a redraw returns A (explore=0)."""
    m = ScoreMap({"fc1": 40}, 0.5)
    m.select(_gen(0))
    m.update(2.0)
    a = m.select(_gen(1))
    m.update(1.0)
    m.update(1.5)
    assert _sets(m.select(_gen(2))) == _sets(a)
    e = ScoreMap({"fc1": 40}, 0.5, explore=0.5)
    e.select(_gen(0))
    e.update(2.0)
    a = e.select(_gen(1))
    e.update(1.0)
    e.update(1.5)
    b = e.select(_gen(2))
    assert len(b["fc1"]) == 20 and _sets(b) != _sets(a)
    assert len(_sets(b)["fc1"] & _sets(a)["fc1"]) >= 10  # the weighted half comes from A


def test_state_dict_round_trip():
    m = ScoreMap(UNITS, 0.5)
    m.select(_gen(0))
    m.update(2.0)
    m.select(_gen(1))
    m.update(1.0)
    state = m.state_dict()
    r = ScoreMap(UNITS, 0.5)
    r.load_state_dict(state)
    assert r.last_loss == m.last_loss
    assert all(torch.equal(r.scores[k], m.scores[k]) for k in UNITS)
    assert _sets(r.select(_gen(5))) == _sets(m.select(_gen(5)))
    with pytest.raises(ValueError):
        ScoreMap({"fc1": 3}, 0.5).load_state_dict(state)


def test_bad_options():
    with pytest.raises(ValueError):
        ScoreMap(UNITS, 0.5, score_update="nope")
    with pytest.raises(ValueError):
        ScoreMap(UNITS, 0.5, score_init=-1.0)


@pytest.mark.parametrize("init", [0.5, 1.0, 10.0])
def test_positive_score_init_prefers_credited_units(init):
    """Issue 26: a credit used to overwrite ``score_init`` with the (smaller) gain, so credited
    units were *less* likely to be redrawn than uncredited ones (0.67 against 1.0)."""
    units = {"fc": 20}
    m = ScoreMap(units, 0.5, score_init=init)
    m.select(_gen())
    m.update(1.0)
    credited = m.select(_gen(1))["fc"]
    assert m.update(0.9) is True  # relative gain 0.1
    others = torch.ones(20, dtype=torch.bool)
    others[credited] = False
    scores = m.scores["fc"]
    assert torch.allclose(scores[credited], torch.full((10,), init + 0.1, dtype=torch.float64))
    assert bool((scores[others] == init).all())
    assert float(scores[credited].min()) > float(scores[others].max())
    # and the next redraws (after a loss increase) keep the credited units more often
    counts = torch.zeros(20)
    for s in range(400):
        counts[weighted_keep(scores, 10, _gen(100 + s))] += 1
    assert float(counts[credited].mean()) > float(counts[others].mean())
