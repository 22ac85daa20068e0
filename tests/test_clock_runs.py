"""The clock in real runs (``afd run`` / ``afd report`` in subprocesses): clients.csv, the
sim_* columns, FD against FedAvg, a deadline, and re-timing finished runs with --network."""

import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import afd_run
from test_flops import mlp_flops

from afd_cli import network
from afd_cli.config import NetworkConfig
from afd_cli.metrics import CLIENT_COLUMNS

# the command: 100 digits clients of ~16 samples, 10 per round
BASE = ["dataset=digits", "model=mlp", "schedule.rounds=3", "progress=none"]
G3 = NetworkConfig(
    name="cellular_3g", down_mbps=5.9, up_mbps=1.6, latency_ms=63.5, device_gflops=5.0
)


def afd(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return afd_run(cwd, *args, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clock")
    jobs = {
        "lte": [],
        "none": ["network=none"],
        "g3": ["network=cellular_3g"],
        "g3fd": ["network=cellular_3g", "strategy=fd"],
    }
    for name, extra in jobs.items():
        p = afd(root, "run", *BASE, *extra, f"hydra.run.dir={root / name}")
        assert p.returncode == 0, p.stderr
    return {name: root / name for name in jobs}


def metrics(d: Path) -> pd.DataFrame:
    return pd.read_csv(d / "metrics.csv")


def clients(d: Path) -> pd.DataFrame:
    return pd.read_csv(d / "clients.csv")


def profile(**changes) -> network.Profile:
    return network.Profile.of(NetworkConfig(**{**G3.__dict__, **changes}))


def test_run_writes_clients_csv_and_an_increasing_clock(runs):
    m, c = metrics(runs["g3"]), clients(runs["g3"])
    assert list(c.columns) == CLIENT_COLUMNS and len(c) == 3 * 10
    assert list(c["round"]) == [r for r in (1, 2, 3) for _ in range(10)]
    # what each client cost, recorded per client and adding up to the round's bytes
    per_round = c.groupby("round")[["bytes_down", "bytes_up"]].sum()
    assert list(per_round.bytes_down) == list(m.bytes_down)
    assert list(per_round.bytes_up) == list(m.bytes_up)
    assert (c.flops == mlp_flops(64, 200, 200, 10) * c.samples).all()  # E = 1
    assert (c.steps == -(-c.samples // 10)).all() and (c.dropped == 0).all()
    # sim_time_s increases, and each round is its slowest client under cellular_3g
    assert (m.sim_round_s > 0).all() and m.sim_time_s.is_monotonic_increasing
    assert m.sim_time_s.iloc[-1] == pytest.approx(m.sim_round_s.sum(), rel=1e-10)
    for r, rows in c.groupby("round"):
        expected = network.round_seconds(profile(), 0, rows.to_dict("records"))
        assert m.sim_round_s[r - 1] == pytest.approx(expected, rel=1e-10)
    summary = json.loads((runs["g3"] / "summary.json").read_text())
    assert summary["sim_time_s"] == pytest.approx(m.sim_time_s.iloc[-1], rel=1e-10)
    reached = m[m.test_acc >= summary["target_acc"]].sim_time_s.iloc[0]
    assert summary["sim_time_to_target_s"] == pytest.approx(reached, rel=1e-10)


def test_fd_rounds_are_shorter_than_fedavg_rounds(runs):
    """Same profile and seed, so the same clients: less to download, upload and compute."""
    fedavg, fd = metrics(runs["g3"]), metrics(runs["g3fd"])
    assert (fd.sim_round_s < fedavg.sim_round_s).all()
    a, b = clients(runs["g3"]), clients(runs["g3fd"])
    assert (a.client == b.client).all()
    assert (b.flops < a.flops).all() and (b.bytes_down < a.bytes_down).all()


def test_network_none_has_no_clock_but_records_clients(runs):
    m = metrics(runs["none"])
    assert m.sim_round_s.isna().all() and m.sim_time_s.isna().all()
    assert len(clients(runs["none"])) == 30
    assert json.loads((runs["none"] / "summary.json").read_text())["sim_time_s"] is None


def test_report_network_retimes_a_run_as_if_it_ran_with_that_profile(runs, tmp_path):
    out = tmp_path / "out"
    p = afd(tmp_path, "report", str(runs["lte"]), "--network", "cellular_3g", "-o", str(out))
    assert p.returncode == 0, p.stderr
    retimed = pd.read_csv(out / "all_metrics.csv")
    ran = metrics(runs["g3"])
    assert retimed.sim_round_s.tolist() == pytest.approx(ran.sim_round_s.tolist(), rel=1e-10)
    assert retimed.sim_time_s.tolist() == pytest.approx(ran.sim_time_s.tolist(), rel=1e-10)
    assert (out / "accuracy_vs_time.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "hours to target" in md and "time ×" in md and "--network cellular_3g" in md
    # a run without a clock is timed the same way
    p = afd(tmp_path, "report", str(runs["none"]), "--network", "lte", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert pd.read_csv(out / "all_metrics.csv").sim_time_s.tolist() == pytest.approx(
        metrics(runs["lte"]).sim_time_s.tolist(), rel=1e-10
    )


def test_report_network_overrides_adjust_each_runs_own_profile(runs, tmp_path):
    out = tmp_path / "out"
    p = afd(tmp_path, "report", str(runs["g3"]), "network.up_mbps=0.5", "-o", str(out))
    assert p.returncode == 0, p.stderr
    _, per_round, cumulative = network.retime(profile(up_mbps=0.5), 0, clients(runs["g3"]))
    got = pd.read_csv(out / "all_metrics.csv")
    assert got.sim_time_s.tolist() == pytest.approx(cumulative, rel=1e-10)
    assert got.sim_round_s.iloc[0] > metrics(runs["g3"]).sim_round_s.iloc[0]  # slower uplink


def test_deadline_drops_stragglers_and_such_runs_are_not_retimed(runs, tmp_path):
    # the median client time of cellular_3g's round 1: about half the clients miss it
    first = clients(runs["g3"]).query("round == 1").to_dict("records")
    times = sorted(network.record_seconds(profile(), 0, r) for r in first)
    deadline = round((times[4] + times[5]) / 2, 6)
    d = tmp_path / "deadline"
    p = afd(
        tmp_path,
        "run",
        *BASE,
        "network=cellular_3g",
        f"network.deadline_s={deadline}",
        f"hydra.run.dir={d}",
    )
    assert p.returncode == 0, p.stderr
    m, c = metrics(d), clients(d)
    assert m.dropped.iloc[0] == 5 and (m.dropped == c.groupby("round").dropped.sum().values).all()
    assert (m.sim_round_s[m.dropped > 0] == deadline).all()
    assert (c[c.dropped == 1].bytes_up == 0).all()  # the upload did not happen
    assert (c[c.dropped == 1].bytes_down > 0).all()  # the download did
    assert list(m.bytes_up) == list(c.groupby("round").bytes_up.sum())
    assert not math.isclose(m.test_acc.iloc[-1], metrics(runs["g3"]).test_acc.iloc[-1])
    p = afd(tmp_path, "report", str(d), "--network", "lte", "-o", str(tmp_path / "o"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "ran with network.deadline_s" in p.stderr and "needs a new run" in p.stderr
    p = afd(tmp_path, "report", str(runs["g3"]), "network.deadline_s=9", "-o", str(tmp_path / "o"))
    assert p.returncode == 2 and "cannot be applied to finished runs" in p.stderr


def test_report_with_several_networks_puts_their_times_side_by_side(runs, tmp_path):
    out = tmp_path / "out"
    p = afd(
        tmp_path,
        "report",
        str(runs["g3"]),
        str(runs["g3fd"]),
        "--network",
        "cellular_3g,wifi",
        "-o",
        str(out),
    )
    assert p.returncode == 0, p.stderr
    wide = pd.read_csv(out / "time_by_network.csv")
    assert list(wide.strategy) == ["fedavg", "fd"]
    for name in ("cellular_3g", "wifi"):
        one = pd.read_csv(out / name / "summary.csv").set_index("strategy")
        hours = one.loc["fedavg", "hours_to_target_mean"]
        assert float(wide[f"hours to target ({name})"][0].split()[0]) == pytest.approx(
            hours, rel=5e-3
        )
        assert (out / name / "accuracy_vs_time.png").exists()
    # the same runs are faster on Wi-Fi than on 3G
    three_g = pd.read_csv(out / "cellular_3g" / "summary.csv").sim_hours_mean
    wifi = pd.read_csv(out / "wifi" / "summary.csv").sim_hours_mean
    assert (wifi < three_g).all()
    assert "| strategy | seeds |" in (out / "time_by_network.md").read_text()
