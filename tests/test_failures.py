"""Failing loudly and safely: divergence, colliding run directories, Ctrl-C, newcomer hints."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import AFD, SMALL
from test_report import fake_run  # pytest puts tests/ on sys.path

from afd_cli import compose
from afd_cli import report as rep
from afd_cli.config import ConfigError, validate
from afd_cli.federated.client import LocalResult
from afd_cli.federated.guard import Diverged
from afd_cli.federated.round import sample_clients
from afd_cli.metrics import COLUMNS, MetricsWriter, RoundProgress
from afd_cli.run import build as building
from afd_cli.run import loop

ROOT = Path(__file__).resolve().parents[1]


def afd(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*AFD, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


# --- non-finite values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "schedule.lr=inf",
        "schedule.momentum=nan",
        "partition.alpha=inf",
        "strategy.explore=nan",
        "compression.clip_norm=-inf",
        "dataset.test_fraction=nan",
    ],
)
def test_non_finite_numbers_are_rejected_naming_the_key(override):
    key, _, value = override.partition("=")
    with pytest.raises(ConfigError) as e:
        compose.check([*SMALL, override])
    assert str(e.value) == f"{key}={float(value)!r} is out of range; expected a finite number"


def test_on_nonfinite_takes_stop_or_skip_client():
    assert validate(compose.compose([])).on_nonfinite == "stop"
    with pytest.raises(ConfigError, match="on_nonfinite='drop' is not valid; choose one of: stop"):
        compose.check([*SMALL, "on_nonfinite=drop"])


def test_divergence_stops_the_run_with_one_line_and_keeps_earlier_rounds(tmp_path):
    # lr=2 blows this mlp up after a couple of rounds (a non-finite local loss)
    p = afd(tmp_path, "run", *SMALL, "schedule.lr=2", "schedule.rounds=6", "hydra.run.dir=d")
    assert p.returncode == 1, p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and line.startswith("diverged: round ")
    assert "client " in line and "schedule.lr=2" in line and "on_nonfinite=skip_client" in line
    status = json.loads((tmp_path / "d" / "status.json").read_text())
    assert status["status"] == "diverged" and status["error"] in line
    rows = pd.read_csv(tmp_path / "d" / "metrics.csv")
    assert status["round"] >= 2 and list(rows["round"]) == list(range(1, status["round"]))
    assert rows["train_loss"].map(lambda v: v == v and abs(v) < float("inf")).all()
    assert not (tmp_path / "d" / "summary.json").exists()
    assert p.stdout.startswith("loading digits ...\n")  # said before the data loads


def test_skip_client_needs_one_finite_client_per_round(tmp_path):
    p = afd(
        tmp_path,
        "run",
        *SMALL,
        "schedule.lr=1e6",
        "schedule.rounds=2",
        "on_nonfinite=skip_client",
        "hydra.run.dir=d",
    )
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0
    assert "round 1: " in p.stderr and "every client of the round" in p.stderr
    assert json.loads((tmp_path / "d" / "status.json").read_text())["status"] == "diverged"


class Poison:
    """A trainer whose result for client ``clients[i]`` in call ``call`` is NaN."""

    def __init__(self, inner, call: int, slot: int, what: str = "loss"):
        self.inner, self.call, self.slot, self.what = inner, call, slot, what
        self.calls, self.clean = 0, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def train(self, jobs, on_done=None):
        results = self.inner.train(jobs, on_done)
        self.clean = list(results)
        self.calls += 1
        if self.calls == self.call:
            r = results[self.slot]
            if self.what == "loss":
                r = LocalResult(r.weights, float("nan"), r.num_samples, r.seconds)
            else:
                w = dict(r.weights)
                k = next(iter(w))
                w[k] = w[k].clone()
                w[k].view(-1)[0] = float("inf")
                r = LocalResult(w, r.loss, r.num_samples, r.seconds)
            results = [*results[: self.slot], r, *results[self.slot + 1 :]]
        return results


def _config(*extra):
    return validate(compose.compose([*SMALL, "progress=none", *extra]))


def _poisoned(monkeypatch, call, slot, what="loss"):
    made = []
    real = building.make_trainer

    def make(*a, **k):
        made.append(Poison(real(*a, **k), call, slot, what))
        return made[-1]

    monkeypatch.setattr(building, "make_trainer", make)
    return made


@pytest.mark.parametrize("what", ["loss", "weights"])
def test_stop_names_round_and_client_and_keeps_rows(tmp_path, monkeypatch, what):
    _poisoned(monkeypatch, call=2, slot=1, what=what)
    cfg = _config("schedule.rounds=3")
    with pytest.raises(Diverged) as e:
        loop.run(cfg, tmp_path)
    client = sample_clients(cfg.seed, 1, 10, 3)[1]
    assert e.value.round == 2 and e.value.client == client
    assert str(e.value).startswith(f"round 2: client {client}: non-finite")
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 1


def test_skip_client_aggregates_exactly_the_other_clients(monkeypatch):
    made = _poisoned(monkeypatch, call=1, slot=1)
    sim = building.build(_config("on_nonfinite=skip_client"))
    before = {k: w.clone() for k, w in sim.weights.items()}
    r = sim.round(0)
    clean, poison = made[0].clean, made[0]
    assert sorted(sim.fed.guard.skipped) == [r.clients[1]]
    kept = [res for i, res in enumerate(clean) if i != poison.slot]
    n = sum(res.num_samples for res in kept)
    for k, w in sim.weights.items():
        want = before[k] + sum(res.num_samples * (res.weights[k] - before[k]) for res in kept) / n
        torch.testing.assert_close(w, want)
    want_loss = sum(res.loss * res.num_samples for res in kept) / n
    assert r.train_loss == pytest.approx(want_loss)
    size = r.bytes_down // 3
    assert r.bytes_up == 2 * size  # nothing uploaded for the skipped client


def test_skip_client_counts_skipped_clients_and_keeps_going(tmp_path, monkeypatch):
    _poisoned(monkeypatch, call=2, slot=0)
    summary = loop.run(_config("schedule.rounds=3", "on_nonfinite=skip_client"), tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert list(m["skipped"]) == [0, 1, 0] and summary["rounds"] == 3
    assert m["train_loss"].notna().all() and m["test_acc"].notna().all()


def test_skip_client_leaves_the_skipped_clients_compressor_and_score_state(monkeypatch):
    made = _poisoned(monkeypatch, call=1, slot=2)
    sim = building.build(
        _config(
            "on_nonfinite=skip_client",
            "strategy=multi",
            "strategy.rate=0.25",
            "compression=dgc",
            "compression.sparsity=0.9",
        )
    )
    r = sim.round(0)
    bad = r.clients[2]
    assert made[0].calls == 1 and sorted(sim.fed.guard.skipped) == [bad]
    maps = sim.strategy.state_dict()["maps"]  # AFD multi: no score update for it
    assert maps[bad]["last_loss"] is None
    assert all(maps[c]["last_loss"] is not None for c in r.clients if c != bad)
    up = sim.compressor.state_dict()["up"]  # DGC: no u / v for a client that sent nothing
    assert sorted(up) == sorted(c for c in r.clients if c != bad)


def test_metrics_write_nan_and_inf_literally_and_not_evaluated_as_empty(tmp_path):
    w = MetricsWriter(tmp_path / "metrics.csv")
    base = {c: 1 for c in COLUMNS} | {"dataset": "digits", "model": "mlp", "partition": "iid"}
    base |= {"strategy": "fedavg", "compression": "none", "cum_bytes_down": 1, "cum_bytes_up": 1}
    w.write(base | {"round": 1, "train_loss": 2.0, "test_loss": None, "test_acc": None})
    w.write(base | {"round": 2, "train_loss": float("nan"), "test_loss": float("inf")})
    w.close()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    col = {c: i for i, c in enumerate(lines[0].split(","))}
    r1, r2 = (ln.split(",") for ln in lines[1:])
    assert r1[col["test_loss"]] == r1[col["test_acc"]] == ""
    assert r2[col["train_loss"]] == "nan" and r2[col["test_loss"]] == "inf"
    df = rep.read_metrics(tmp_path / "metrics.csv")
    assert df["test_loss"].iloc[1] == float("inf") and df["train_loss"].isna().iloc[1]
    assert df["test_acc"].isna().iloc[0]


def test_report_marks_diverged_runs(tmp_path):

    fake_run(tmp_path, "ok", seed=0, accs=[0.5, 0.8, 0.9], mb_round=10)
    d = fake_run(
        tmp_path, "bad", seed=1, accs=[0.5, 0.6], mb_round=10, extra={"schedule.rounds": 3}
    )
    msg = "round 3: client 4: non-finite local training loss (nan)"
    (d / "status.json").write_text(json.dumps({"status": "diverged", "error": msg, "round": 3}))
    warnings = []
    r = rep.build([tmp_path], warn=warnings.append)
    assert int(r.summary["diverged"].iloc[0]) == 1
    assert any("diverged" in w and msg in w for w in warnings)
    header, rows = rep.table_rows(r)
    assert rows[0][header.index("seeds")] == "2 (1 diverged)"


def test_report_names_a_run_that_diverged_before_any_round(tmp_path):

    fake_run(tmp_path, "ok", accs=[0.5, 0.8], mb_round=10)
    d = tmp_path / "bad"
    d.mkdir()
    (d / "metrics.csv").write_text(",".join(COLUMNS) + "\n")
    (d / "status.json").write_text(json.dumps({"status": "diverged", "error": "round 1: x"}))
    warnings = []
    rep.build([tmp_path], warn=warnings.append)
    assert any("diverged before any round was recorded: round 1: x" in w for w in warnings)


# --- run directories -------------------------------------------------------------------------


def test_default_run_dirs_are_unique_within_one_second(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dirs = {compose.claim_run_dir([*SMALL])[-1] for _ in range(3)}
    assert len(dirs) == 3
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 3


def test_two_runs_started_together_end_in_two_directories(tmp_path):
    args = [*AFD, "run", *SMALL, "schedule.rounds=1", "progress=none"]
    procs = [
        subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in procs:
        _, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 2
    for d in runs:
        assert json.loads((d / "status.json").read_text())["status"] == "ok"
        assert len(pd.read_csv(d / "metrics.csv")) == 1 and (d / "summary.json").exists()


def test_explicit_run_dir_holding_a_run_is_refused(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics.csv").write_text("x")
    p = afd(tmp_path, "run", *SMALL, f"hydra.run.dir={d}")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    want = f"already holds a run (metrics.csv exists); continue it with: afd resume {d}"
    assert want in p.stderr
    # untouched (but for the lock file a refused command takes before it looks)
    assert sorted(f.name for f in d.iterdir() if f.name != ".lock") == ["metrics.csv"]


@pytest.mark.parametrize("held", ["checkpoint.pt", "summary.json", ".hydra"])
def test_explicit_run_dir_holding_any_run_file_is_refused(tmp_path, held):
    d = tmp_path / "r"
    (d / held).mkdir(parents=True)
    (d / held / "config.yaml").write_text("x")  # an empty .hydra/ is a claim never started
    with pytest.raises(ConfigError, match=f"already holds a run \\({held} exists\\)"):
        compose.claim_run_dir([*SMALL, f"hydra.run.dir={d}"])


def test_explicit_empty_run_dir_is_used(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    over = compose.claim_run_dir([*SMALL, f"hydra.run.dir={d}"])
    assert over[-1] == f"hydra.run.dir='{d}'" and (d / ".hydra").is_dir()
    assert (d / ".lock").read_text().strip() == str(os.getpid())  # held by this process
    (d / ".hydra" / "config.yaml").write_text("x")  # the run started (Hydra wrote its record)
    with pytest.raises(ConfigError, match="already holds a run"):
        compose.claim_run_dir([*SMALL, f"hydra.run.dir={d}"])


# --- newcomer papercuts ----------------------------------------------------------------------


def _default_sigint() -> None:
    # a test suite started as a background job (`make test &`, some CI runners) inherits
    # SIGINT ignored, and Python then never raises KeyboardInterrupt: give the child a Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_130_and_prints_the_resume_command(tmp_path):
    p = subprocess.Popen(
        [*AFD, "run", *SMALL, "schedule.rounds=1000", "hydra.run.dir=r"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    for line in p.stdout:
        if line.startswith("round 1/"):
            p.send_signal(signal.SIGINT)
            break
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 130
    assert stderr.strip() == f"interrupted; continue with: afd resume {tmp_path / 'r'}"
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "interrupted"


def test_rich_progress_leaves_no_stale_clients_bar(capsys):
    progress = RoundProgress(2, 3, "rich")
    for t in (1, 2):
        for _ in range(3):
            progress.client_done()
        progress.round_done(
            {"round": t, "test_acc": 0.5, "train_loss": 1.0, "cum_bytes": 1e6, "wall_s": 0.1}
        )
    progress.close()
    out = capsys.readouterr().out
    assert "rounds" in out and "2/2" in out
    assert "clients" not in out.splitlines()[-1] and "0/3" not in out


def test_make_setup_says_how_to_put_afd_on_the_path():
    makefile = (ROOT / "Makefile").read_text()
    setup = makefile.split("\nsetup:")[1].split("\n\n")[0]
    assert ". $(BIN)/activate" in setup or ". .venv/bin/activate" in setup
    quick = (ROOT / "README.md").read_text().split("## Quick start")[1].split("\n## ")[0]
    assert ". .venv/bin/activate" in quick


def test_all_finite_is_exact_when_a_sum_overflows():
    """The fast path trusts finite sums; a sum that overflows on finite entries must fall
    back to the exact check instead of calling a finite model diverged."""
    import torch

    from afd_cli.federated.guard import all_finite

    big = torch.full((4,), 3e38)  # finite entries whose fp32 sum is inf
    assert bool(all_finite([big, torch.zeros(3)]))
    assert not bool(all_finite([big, torch.tensor([1.0, float("nan")])]))
    assert not bool(all_finite([torch.tensor([float("inf"), -float("inf")])]))  # sum is nan
