"""Degenerate runs (run/degenerate.py): flagged in summary.json and status.json, stopped by
``on_degenerate=stop``; and divergence messages that name what can help in each case."""

import json
import math
import subprocess

import pandas as pd
import pytest
import torch
from helpers import AFD, SMALL
from test_failures import _config, _poisoned

from afd_cli import compose
from afd_cli.config import ConfigError, validate
from afd_cli.federated.client import LocalResult
from afd_cli.federated.guard import Diverged
from afd_cli.run import build as building
from afd_cli.run import callbacks as cb
from afd_cli.run import degenerate, loop
from afd_cli.run.resume import comparable
from afd_cli.run.state import RunState

# The issue's run: digits + mlp (100 clients, 10 a round) at lr=10. Round 1's train loss is
# 1.24e3, round 2's 6.2e17; accuracy stays at the majority baseline; nothing is non-finite.
LR10 = ["dataset=digits", "model=mlp", "schedule.lr=10", "progress=none"]


def _cfg(*extra: str):
    return validate(compose.compose([*LR10, *extra]))


@pytest.fixture(scope="module")
def lr10(tmp_path_factory):
    """The lr=10 run, two rounds, in-process: its directory and summary."""
    d = tmp_path_factory.mktemp("lr10")
    return d, loop.run(_cfg("schedule.rounds=2"), d)


# --- the flag ---------------------------------------------------------------------------------


def test_lr10_run_is_flagged_degenerate_in_summary(lr10):
    d, summary = lr10
    on_disk = json.loads((d / "summary.json").read_text())
    assert on_disk["degenerate"] == summary["degenerate"]
    why = summary["degenerate"]
    assert "\n" not in why
    assert "at or below the majority baseline" in why  # best 0.1006 == baseline 0.1006
    assert "round 2: train loss 6.2e+17 is over 1000x round 1's (1.24e+03)" in why
    assert summary["best_acc"] <= summary["majority_baseline"]
    e = summary["loss_explosion"]
    assert e["round"] == 2 and e["train_loss"] >= 1000 * e["first_train_loss"]
    rows = pd.read_csv(d / "metrics.csv")
    assert list(rows["round"]) == [1, 2] and rows["train_loss"].map(math.isfinite).all()


def test_warn_goes_on_and_marks_the_first_exploding_round_s_progress_line(tmp_path, capfd):
    summary = loop.run(_cfg("schedule.rounds=3", "progress=plain"), tmp_path)
    assert summary["rounds"] == 3 and summary["loss_explosion"]["round"] == 2
    out, err = capfd.readouterr()
    marked = [
        ln for ln in out.splitlines() if ln.endswith("(train loss 1000x round 1's: degenerate)")
    ]
    assert [ln.split()[1] for ln in marked] == ["2/3"]  # round 3 (2.9e13) is not marked again
    assert err == ""  # stderr: one line for how the run ended (launch.py), nothing mid-run


def test_a_healthy_run_is_not_degenerate(tmp_path, capfd):
    summary = loop.run(_config("schedule.rounds=2"), tmp_path)
    assert summary["degenerate"] is None and summary["loss_explosion"] is None
    assert summary["best_acc"] > summary["majority_baseline"]
    assert degenerate.status_of(summary) == {"status": "ok"}
    assert "warning" not in capfd.readouterr().err


def test_status_of_a_degenerate_run_is_ok_with_the_reason(lr10):
    _, summary = lr10
    assert degenerate.status_of(summary) == {"status": "ok", "degenerate": summary["degenerate"]}


def test_degenerate_line_adds_what_to_try(lr10):
    _, summary = lr10
    line = degenerate.degenerate_line(summary)
    assert line == summary["degenerate"] + (
        "; the steps may be too large: lower schedule.lr=10 or compression.server_lr=1"
    )
    flat = summary | {"loss_explosion": None, "degenerate": "best accuracy ..."}
    assert degenerate.degenerate_line(flat) == (
        "best accuracy ...; it learned nothing a constant answer does not: schedule.lr=10 may "
        "be too large or too small, or schedule.rounds=2 too few"
    )
    assert degenerate.degenerate_line(summary | {"degenerate": None}) is None


@pytest.mark.slow  # a whole `afd run` process: ~10 s on 2 cores
def test_afd_run_lr10_ends_ok_and_flags_status_json(tmp_path):
    p = subprocess.run(
        [*AFD, "run", *LR10, "schedule.rounds=2", "hydra.run.dir=d"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    status = json.loads((tmp_path / "d" / "status.json").read_text())
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert status == {"status": "ok", "degenerate": summary["degenerate"]}


# --- the definitions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "loss", "want"),
    [
        (2.3, 2299.9, False),
        (2.3, 2300.0, True),
        (1241.2, 6.2e17, True),
        (2.3, float("inf"), True),
        (2.3, float("nan"), False),  # non-finite is divergence's, not an explosion
        (None, 1e30, False),  # nothing to compare with (a resume of an older checkpoint)
        (0.0, 1.0, False),
        (float("nan"), 1e30, False),
    ],
)
def test_a_loss_explodes_at_1000x_round_1s(first, loss, want):
    assert degenerate.exploded(first, loss) is want


def test_loss_explosion_is_the_first_exploded_round():
    assert degenerate.loss_explosion([1, 2, 3, 4], [2.0, 1.0, 2500.0, 1e9]) == {
        "round": 3,
        "train_loss": 2500.0,
        "first_train_loss": 2.0,
    }
    assert degenerate.loss_explosion([1, 2, 3], [2.0, 1900.0, 0.5]) is None
    assert degenerate.loss_explosion([2, 3], [2.0, 1e9]) is None  # round 1 not there


@pytest.mark.parametrize(
    ("best", "majority", "want"),
    [
        (0.100559, 0.1005586592178771, True),  # metrics.csv's 6 digits of the same accuracy
        (0.0949721, 0.1005586592178771, True),
        (0.1033520, 0.1005586592178771, False),  # one digit test sample more (of 358)
        (None, 0.1, False),
        (0.05, None, False),  # an older summary without a baseline: not tested
    ],
)
def test_at_baseline_within_csv_precision(best, majority, want):
    assert degenerate.at_baseline(best, majority) is want


def test_degenerate_reason_names_each_cause_on_one_line():
    e = {"round": 4, "train_loss": 3e9, "first_train_loss": 2.0}
    both = degenerate.degenerate_reason(
        {"best_acc": 0.1, "majority_baseline": 0.11, "loss_explosion": e}
    )
    assert both == (
        "best accuracy 0.1000 is at or below the majority baseline 0.1100 (always predicting "
        "the most common test label); round 4: train loss 3e+09 is over 1000x round 1's (2)"
    )
    ok = {"best_acc": 0.9, "majority_baseline": 0.11, "loss_explosion": None}
    assert degenerate.degenerate_reason(ok) is None
    assert degenerate.degenerate_reason({}) is None  # an older summary


# --- on_degenerate --------------------------------------------------------------------------


def test_on_degenerate_takes_warn_or_stop_and_may_change_on_resume():
    assert _cfg().on_degenerate == "warn"
    with pytest.raises(ConfigError, match="on_degenerate='halt' is not valid; choose one of: warn"):
        compose.check([*SMALL, "on_degenerate=halt"])
    assert comparable(_cfg("on_degenerate=stop")) == comparable(_cfg())


def test_stop_ends_the_run_at_the_exploding_round_with_one_line_and_keeps_the_rows(tmp_path):
    with pytest.raises(cb.LossExploded) as e:
        loop.run(_cfg("schedule.rounds=5", "on_degenerate=stop"), tmp_path)
    assert isinstance(e.value, Diverged)  # launch.py: status "diverged", exit code 1
    assert e.value.round == 2 and e.value.client is None
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith("round 2: train loss 6.2e+17 is over 1000x round 1's (1.24e+03)")
    assert "on_degenerate=stop" in line and "schedule.lr=10" in line
    assert "skip_client cannot help" in line
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert list(rows["round"]) == [1, 2]  # the exploding round's row is kept
    assert rows["train_loss"].iloc[1] > 1e17
    assert not (tmp_path / "summary.json").exists()


def test_stop_on_resume_compares_with_round_1_of_the_checkpoint(tmp_path):
    """Round 1's loss is in the checkpoint: a resume with on_degenerate=stop (allowed to
    change) stops at round 2 against it."""
    loop.run(_cfg("schedule.rounds=1"), tmp_path)
    with pytest.raises(cb.LossExploded) as e:
        loop.run(_cfg("schedule.rounds=3", "on_degenerate=stop"), tmp_path)
    assert e.value.round == 2
    assert list(pd.read_csv(tmp_path / "metrics.csv")["round"]) == [1, 2]


# --- what each divergence message recommends --------------------------------------------------


def test_a_non_finite_client_hint_offers_lower_steps_or_skip_client(tmp_path, monkeypatch):
    _poisoned(monkeypatch, call=1, slot=0)
    with pytest.raises(Diverged) as e:
        loop.run(_config("schedule.rounds=1", "schedule.momentum=0.9"), tmp_path)
    assert e.value.client is not None
    assert str(e.value).endswith(
        "the learning rate may be too high (schedule.lr=0.05, schedule.momentum=0.9); lower "
        "them or drop such clients with on_nonfinite=skip_client"
    )
    plain = building.divergence_hint(_config())  # as before, without momentum
    assert plain == (
        "the learning rate may be too high (schedule.lr=0.05); lower it or drop such clients "
        "with on_nonfinite=skip_client"
    )


class Huge:
    """A trainer whose every client returns large finite weights (3e38: fp32's max is 3.4e38),
    which the guard passes and the weighted mean overflows."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def train(self, jobs, on_done=None):
        out = []
        for r in self.inner.train(jobs, on_done):
            w = {k: torch.full_like(v, 3e38) for k, v in r.weights.items()}
            out.append(LocalResult(w, r.loss, r.num_samples, r.seconds))
        return out


@pytest.mark.parametrize("mode", ["stop", "skip_client"])
def test_global_overflow_after_aggregation_says_skip_client_cannot_help(monkeypatch, mode):
    real = building.make_trainer
    monkeypatch.setattr(building, "make_trainer", lambda *a, **k: Huge(real(*a, **k)))
    sim = building.build(_config(f"on_nonfinite={mode}", "schedule.momentum=0.5"))
    with pytest.raises(Diverged) as e:
        sim.round(0)
    assert e.value.client is None and sim.fed.guard.skipped == set()  # every client finite
    assert str(e.value) == (
        "round 1: the global model has non-finite weights after aggregation; every client's "
        "result was finite, so on_nonfinite=skip_client cannot help; the steps may be too "
        "large: lower schedule.lr=0.05, compression.server_lr=1 or schedule.momentum=0.5"
    )


def test_overflow_at_evaluation_says_skip_client_cannot_help():
    sim = building.build(_config("compression.server_momentum=0.9", "compression.server_lr=2"))
    for w in sim.weights.values():
        w.mul_(1e30)  # finite weights whose logits overflow
    end = cb.RoundEnd(0, 0.0, None)  # type: ignore[arg-type]  # evaluation alone
    with pytest.raises(Diverged) as e:
        cb.Evaluate(sim).round_end(RunState(), end)
    line = str(e.value)
    assert line.startswith("round 1: non-finite test loss (nan) of the global model; ")
    assert "skip_client cannot help" in line
    assert line.endswith(
        "lower schedule.lr=0.05, compression.server_lr=2 or compression.server_momentum=0.9"
    )


def test_client_hint_names_local_momentum_and_drops_skip_client_once_chosen():
    cfg = _config("schedule.momentum=0.9", "on_nonfinite=skip_client")
    assert building.divergence_hint(cfg) == (
        "the learning rate may be too high (schedule.lr=0.05, schedule.momentum=0.9); lower them"
    )
