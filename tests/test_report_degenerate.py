"""afd report and degenerate runs or non-finite rounds: they neither reach a target nor set it,
and the table marks degenerate runs."""

import json

import pandas as pd
import pytest
from test_report import fake_run  # pytest puts tests/ on sys.path

from afd_cli import compose
from afd_cli import report as rep
from afd_cli.config import validate
from afd_cli.run import loop


def _edit(run_dir, **columns):
    """Replace whole columns of a fake run's metrics.csv (nan written as ``nan``)."""
    path = run_dir / "metrics.csv"
    df = pd.read_csv(path)
    for name, values in columns.items():
        df[name] = values
    df.to_csv(path, index=False, na_rep="nan")


def _summary(run_dir, **keys):
    """Add keys to a fake run's summary.json (a real one has majority_baseline)."""
    path = run_dir / "summary.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | keys))


def _cell(report, column, line=0):
    header, rows = rep.table_rows(report)
    return rows[line][header.index(column)]


@pytest.fixture(scope="module")
def lr10(tmp_path_factory):
    """The issue's run: digits + mlp at lr=10, three rounds; accuracy at the majority baseline
    and the train loss 6.2e17 by round 2, nothing non-finite."""
    d = tmp_path_factory.mktemp("lr10")
    over = ["dataset=digits", "model=mlp", "schedule.lr=10", "schedule.rounds=3", "progress=none"]
    loop.run(validate(compose.compose(over)), d)
    return d


def test_report_on_the_lr10_run_reaches_no_target(lr10):
    warnings = []
    r = rep.build([lr10], warn=warnings.append)
    s = r.summary.iloc[0]
    assert s.reached == 0 and s.degenerate == 1  # before: "target reached in round 1"
    assert pd.isna(s.target_acc) and pd.isna(s.rounds_to_target_mean)
    assert _cell(r, "rounds to target") == _cell(r, "MB to target") == "not reached"
    assert _cell(r, "target %") == "–"
    assert _cell(r, "seeds") == "1 (1 degenerate)"
    assert "none: no target" in r.target_note
    assert any("degenerate" in w and "majority baseline" in w for w in warnings)
    assert "\nDegenerate: runs whose best accuracy is at or below" in rep.markdown(r, [])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_round_with_a_non_finite_test_loss_is_not_a_target_round(tmp_path, bad):
    # round 2's accuracy (0.9, the best) comes with a non-finite loss: it neither sets the
    # target (0.99 * 0.85 of round 4) nor reaches it (round 4 does)
    d = fake_run(tmp_path, "run", accs=[0.5, 0.9, 0.8, 0.85], mb_round=10)
    _edit(d, test_loss=[1.0, bad, 1.0, 1.0])
    s = rep.build([tmp_path]).summary.iloc[0]
    assert s.target_acc == pytest.approx(0.99 * 0.85)
    assert s.reached == 1 and s.rounds_to_target_mean == 4
    assert s.diverged == 1 and s.degenerate == 0


def test_a_non_finite_round_does_not_reach_a_given_target(tmp_path):
    d = fake_run(tmp_path, "run", accs=[0.5, 0.9, 0.95], mb_round=10)
    _edit(d, test_loss=[1.0, float("nan"), 1.0])
    s = rep.build([tmp_path], target=0.9).summary.iloc[0]
    assert s.rounds_to_target_mean == 3 and s.mb_to_target_mean == pytest.approx(30)


def test_a_degenerate_baseline_sets_no_target_the_best_other_configuration_does(tmp_path):
    base = fake_run(tmp_path, "base", accs=[0.3, 0.5], mb_round=10)
    _summary(base, majority_baseline=0.5)  # its best is the constant answer's
    other = fake_run(
        tmp_path, "single", strategy="single", compression="dgc", accs=[0.6, 0.9], mb_round=2
    )
    _summary(other, majority_baseline=0.5)
    r = rep.build([tmp_path])
    b = r.summary[r.summary.strategy == "fedavg"].iloc[0]
    o = r.summary[r.summary.strategy == "single"].iloc[0]
    # before: 0.99 * 0.5, which the baseline's own round 2 "reached"
    assert b.target_acc == o.target_acc == pytest.approx(0.99 * 0.9)
    assert b.degenerate == 1 and b.reached == 0
    assert o.degenerate == 0 and o.reached == 1 and o.rounds_to_target_mean == 2
    assert "where every fedavg + none run is degenerate" in r.target_note


def test_an_exploded_train_loss_is_degenerate_without_a_summary(tmp_path):
    """A run stopped by on_degenerate=stop has no summary.json: its rows tell."""
    fake_run(tmp_path, "ok", seed=0, accs=[0.5, 0.8], mb_round=10)
    bad = fake_run(tmp_path, "bad", seed=1, accs=[0.5, 0.9], mb_round=10, summary=False)
    _edit(bad, train_loss=[2.0, 2000.0])  # 1000x round 1's
    warnings = []
    r = rep.build([tmp_path], warn=warnings.append)
    s = r.summary.iloc[0]
    # the target comes from the healthy seed alone (before: from both, 0.99 * 0.85) and the
    # degenerate seed's 0.9 does not reach it
    assert s.target_acc == pytest.approx(0.99 * 0.8)
    assert s.reached == 1 and s.rounds_to_target_mean == 2
    assert _cell(r, "seeds") == "2 (1 degenerate)"
    want = "degenerate, its rounds neither reach a target nor set one: round 2: train loss 2e+03"
    assert any(want in w for w in warnings)


def test_on_degenerate_does_not_split_a_group(tmp_path):
    for seed, mode in enumerate(("warn", "stop")):
        d = fake_run(tmp_path, mode, seed=seed, accs=[0.5, 0.8], mb_round=10)
        config = json.loads((d / "summary.json").read_text())["config"]
        _summary(d, config=config | {"on_degenerate": mode})
    s = rep.build([tmp_path]).summary
    assert len(s) == 1 and int(s.seeds.iloc[0]) == 2


def test_a_healthy_report_has_no_degenerate_note(tmp_path):
    d = fake_run(tmp_path, "ok", accs=[0.5, 0.8], mb_round=10)
    _summary(d, majority_baseline=0.1)
    r = rep.build([tmp_path])
    assert int(r.summary.degenerate.iloc[0]) == 0 and _cell(r, "seeds") == "1"
    assert "Degenerate" not in rep.markdown(r, [])
    assert r.summary.reached.iloc[0] == 1
