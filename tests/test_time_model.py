"""The AFD walkthrough's time model (``network.compute=false``): communication only, local
training left out; the default clock is unchanged, and finished runs re-time under either."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest
from helpers import AFD, SMALL

from afd_cli import network
from afd_cli.compose import compose
from afd_cli.config import validate
from afd_cli.network import Profile

P = Profile(down_mbps=8, up_mbps=4, latency_ms=100, device_gflops=1)
COMM = Profile(down_mbps=8, up_mbps=4, latency_ms=100, device_gflops=1, compute=False)


def test_without_compute_a_client_is_latency_and_bytes_over_bandwidth():
    link = network.client_link(COMM, seed=0, client=3)
    # 0.1 + 1 MB / (1 MB/s) + 0.1 + 1 MB / (0.5 MB/s): the 2e9 FLOPs cost nothing
    got = network.client_seconds(COMM, link, 1_000_000, 1_000_000, 2 * 10**9)
    assert got == pytest.approx(3.2)
    assert network.client_seconds(P, link, 1_000_000, 1_000_000, 2 * 10**9) == pytest.approx(5.2)


def test_the_default_clock_is_the_one_before_the_option_bit_for_bit():
    link = network.client_link(P, 0, 7)
    lat = P.latency_ms / 1e3
    want = (
        lat + 8 * 123_456 / link.down_bps + 9.87e9 / link.flops_per_s + lat + 8 * 654 / link.up_bps
    )
    assert network.client_seconds(P, link, 123_456, 654, int(9.87e9)) == want


def test_the_option_is_a_network_key_of_every_profile():
    for name in ("cellular_3g", "lte", "wifi"):
        cfg = validate(compose([f"network={name}", "network.compute=false"]))
        assert cfg.network.compute is False and network.Profile.of(cfg.network).compute is False
    assert validate(compose([])).network.compute is True


@pytest.mark.slow
def test_a_finished_run_re_times_under_the_communication_only_model(tmp_path):
    run = tmp_path / "r"
    p = subprocess.run(
        [*AFD, "run", *SMALL, "schedule.rounds=2", "network=cellular_3g", f"hydra.run.dir={run}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    out = {}
    for label, extra in (("full", []), ("comm", ["network.compute=false"])):
        q = subprocess.run(
            [
                *AFD,
                "report",
                str(run),
                "--network",
                "cellular_3g",
                *extra,
                "-o",
                str(tmp_path / label),
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert q.returncode == 0, q.stderr
        out[label] = pd.read_csv(tmp_path / label / "all_metrics.csv")
    ran = pd.read_csv(run / "metrics.csv")
    pd.testing.assert_series_equal(out["full"]["sim_time_s"], ran["sim_time_s"], check_names=False)
    assert (out["comm"]["sim_time_s"] < out["full"]["sim_time_s"]).all()
    # the difference is exactly the slowest clients' local training, which bytes cannot explain
    clients = pd.read_csv(run / "clients.csv")
    g3 = validate(compose(["network=cellular_3g", "network.compute=false"])).network
    retimed = network.retime(network.Profile.of(g3), 0, clients)
    assert list(out["comm"]["sim_time_s"]) == pytest.approx(retimed[2], rel=1e-9)
