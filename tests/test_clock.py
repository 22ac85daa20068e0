"""The simulated clock (afd_cli.network) on hand-computed cases; each number below is worked
out by hand from ``latency + 8*down/rate + flops/speed + latency + 8*up/rate``."""

import math

import numpy as np
import pandas as pd
import pytest

from afd_cli import network
from afd_cli.network import Profile

# 8 Mbit/s down = 1 MB/s, 4 Mbit/s up = 0.5 MB/s, 1 GFLOP/s, 100 ms per message
P = Profile(down_mbps=8, up_mbps=4, latency_ms=100, device_gflops=1)


def row(client, down, up, flops, dropped=0, round=1):
    return {
        "round": round,
        "client": client,
        "bytes_down": down,
        "bytes_up": up,
        "flops": flops,
        "dropped": dropped,
    }


def test_one_client_time_is_latency_download_compute_latency_upload():
    link = network.client_link(P, seed=0, client=3)
    # 0.1 + 1 MB / (1 MB/s) + 2e9 / 1e9 + 0.1 + 1 MB / (0.5 MB/s) = 0.1 + 1 + 2 + 0.1 + 2
    assert network.client_seconds(P, link, 1_000_000, 1_000_000, 2 * 10**9) == pytest.approx(5.2)


def test_latency_alone_is_two_messages():
    link = network.client_link(P, 0, 0)
    assert network.client_seconds(P, link, 0, 0, 0) == pytest.approx(0.2)
    slow = Profile(8, 4, latency_ms=600, device_gflops=1)
    assert network.client_seconds(slow, link, 0, 0, 0) == pytest.approx(1.2)


def test_a_round_lasts_as_long_as_its_slowest_client():
    rows = [
        row(0, 1_000_000, 500_000, 10**9),  # 0.1 + 1 + 1 + 0.1 + 1 = 3.2
        row(1, 1_000_000, 500_000, 4 * 10**9),  # the slow device: 0.1 + 1 + 4 + 0.1 + 1 = 6.2
        row(2, 2_000_000, 0, 0),  # 0.1 + 2 + 0 + 0.1 + 0 = 2.2
    ]
    assert network.round_seconds(P, 0, rows) == pytest.approx(6.2)
    assert network.late(P, 0, rows) == set()  # no deadline: nobody is late


def test_deadline_drops_the_stragglers_and_the_round_ends_at_it():
    p = Profile(8, 4, 100, 1, deadline_s=5.0)
    rows = [row(0, 1_000_000, 500_000, 10**9), row(1, 1_000_000, 500_000, 4 * 10**9)]
    assert network.late(p, 0, rows) == {1}  # 6.2 s > 5 s
    rows[1] |= {"bytes_up": 0, "dropped": 1}  # as recorded: its upload was not sent
    assert network.round_seconds(p, 0, rows) == 5.0
    on_time = Profile(8, 4, 100, 1, deadline_s=7.0)
    assert network.late(on_time, 0, rows) == set()
    assert network.round_seconds(on_time, 0, rows[:1]) == pytest.approx(3.2)
    # finishing exactly at the deadline is in time
    assert network.late(Profile(8, 4, 100, 1, deadline_s=3.2), 0, rows[:1]) == set()


def test_spread_is_log_normal_and_reproducible_per_seed_and_client():
    network.factors.cache_clear()
    a = [network.factors(0.5, 7, c) for c in range(2000)]
    network.factors.cache_clear()
    assert [network.factors(0.5, 7, c) for c in range(2000)] == a  # same (seed, client)
    assert a != [network.factors(0.5, 8, c) for c in range(2000)]  # another seed: others
    link, device = np.log(np.array(a)).T
    # log of the factor ~ N(0, 0.5^2): median client at the profile's rates
    assert abs(np.median(link)) < 0.05 and link.std() == pytest.approx(0.5, rel=0.06)
    assert device.std() == pytest.approx(0.5, rel=0.06)
    assert abs(np.corrcoef(link, device)[0, 1]) < 0.1  # link and device drawn independently
    assert network.factors(0.0, 7, 3) == (1.0, 1.0)
    # a client's link factor scales both directions; its device factor the speed
    p = Profile(8, 4, 100, 1, spread=0.5)
    f_link, f_dev = network.factors(0.5, 7, 3)
    got = network.client_link(p, 7, 3)
    assert got.down_bps == pytest.approx(8e6 * f_link) and got.up_bps == pytest.approx(4e6 * f_link)
    assert got.flops_per_s == pytest.approx(1e9 * f_dev)


def test_retime_is_the_runs_own_arithmetic():
    p = Profile(29.5, 7.6, 28, 10, spread=0.5)
    rows = [
        row(c, 200_000 + c, 150_000 + 7 * c, 3_000_000 * (c + 1), round=r)
        for r in (1, 2, 3)
        for c in (4, 9, 11)
    ]
    rounds, per_round, cumulative = network.retime(p, 5, pd.DataFrame(rows))
    assert rounds == [1, 2, 3]
    expected = [network.round_seconds(p, 5, [x for x in rows if x["round"] == r]) for r in rounds]
    assert per_round == expected
    assert cumulative == [expected[0], expected[0] + expected[1], sum(expected[:2]) + expected[2]]
    with pytest.raises(ValueError, match="re-run"):
        network.retime(Profile(29.5, 7.6, 28, 10, deadline_s=3), 5, pd.DataFrame(rows))


def test_profile_of_config():
    from afd_cli.config import NetworkConfig

    assert network.Profile.of(NetworkConfig(name="none")) is None
    p = network.Profile.of(NetworkConfig())
    assert (p.down_mbps, p.up_mbps, p.deadline_s) == (29.5, 7.6, None)
    assert not math.isnan(p.spread)


def test_network_profiles_are_the_conf_files_and_compose():
    from pathlib import Path

    from afd_cli import compose
    from afd_cli.config import network_names, validate

    NETWORKS = network_names()

    conf = Path(__file__).resolve().parents[1] / "conf" / "network"
    assert sorted(p.stem for p in conf.glob("*.yaml")) == sorted(NETWORKS)
    for name in NETWORKS:
        assert validate(compose.compose([f"network={name}"])).network.name == name
    g3 = validate(compose.compose(["network=cellular_3g"])).network
    assert g3.up_mbps < g3.down_mbps  # the sources' uplinks are slower
    assert validate(compose.compose([])).network.name == "lte"  # the default: a mid-range phone
