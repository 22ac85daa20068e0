"""The simulated clock: how long a round takes on a network and device profile.

A client's time in a round (seconds) is

    latency + 8 * bytes_down / down_rate + flops / speed + latency + 8 * bytes_up / up_rate

with rates in bit/s and speed in FLOP/s; ``latency`` is the profile's round-trip time, charged
once per message. ``network.compute=false`` leaves local training out (``flops / speed``): the
time model of the AFD paper's walkthrough, in which communication time is sending time, set by
data size and bandwidth, with propagation small beside it -- the bottleneck compression
attacks. No codec shrinks local compute, so the two models bound what a codec can gain.

A synchronous round lasts as long as its slowest client. With a deadline,
clients that would finish later are dropped (stragglers): their download happened, their
upload does not, and the round lasts until the deadline.

Clients differ (``spread``): each client's link rate (down and up together: a poor signal is
slow both ways) and its device speed are the profile's medians times log-normal factors
``exp(spread * z)``, drawn once per client from ``(seed, client)``. So, without a deadline,
the clock is a pure function of ``clients.csv`` (bytes, FLOPs per client and round), the
profile and the seed: :func:`retime` times a finished run under another profile.

Everything here is plain arithmetic on numbers the round already knows; nothing trains.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Any

import numpy as np

_SPREAD_STREAM = 0x5EED_C10C  # keeps these draws apart from every other seeded stream


@dataclass(frozen=True)
class Profile:
    """A network + device profile (the ``network.*`` keys, in the units the config uses)."""

    down_mbps: float
    up_mbps: float
    latency_ms: float
    device_gflops: float
    spread: float = 0.0
    deadline_s: float | None = None
    compute: bool = True  # charge local training (flops / speed); false: communication only

    @classmethod
    def of(cls, cfg: Any) -> Profile | None:
        """From a ``NetworkConfig`` (or any object with those attributes); None for ``none``."""
        if cfg is None or getattr(cfg, "name", None) == "none":
            return None
        return cls(
            float(cfg.down_mbps),
            float(cfg.up_mbps),
            float(cfg.latency_ms),
            float(cfg.device_gflops),
            float(cfg.spread),
            None if cfg.deadline_s is None else float(cfg.deadline_s),
            bool(getattr(cfg, "compute", True)),
        )


@dataclass(frozen=True)
class Link:
    """One client's rates: bit/s down and up, FLOP/s of its device."""

    down_bps: float
    up_bps: float
    flops_per_s: float


@lru_cache(maxsize=65536)
def factors(spread: float, seed: int, client: int) -> tuple[float, float]:
    """(link factor, device factor) of a client: ``exp(spread * z)``, z ~ N(0, 1) from
    ``(seed, client)``; both 1 without spread. The median client gets the profile's rates."""
    if spread == 0:
        return 1.0, 1.0
    z = np.random.default_rng([seed, client, _SPREAD_STREAM]).standard_normal(2)
    link, device = np.exp(spread * z)
    return float(link), float(device)


def client_link(p: Profile, seed: int, client: int) -> Link:
    link, device = factors(p.spread, seed, client)
    return Link(p.down_mbps * 1e6 * link, p.up_mbps * 1e6 * link, p.device_gflops * 1e9 * device)


def client_seconds(p: Profile, link: Link, bytes_down: int, bytes_up: int, flops: int) -> float:
    """Download, local training and upload of one client, with one latency per message."""
    latency = p.latency_ms / 1e3
    return (
        latency
        + 8 * bytes_down / link.down_bps
        + (flops / link.flops_per_s if p.compute else 0.0)
        + latency
        + 8 * bytes_up / link.up_bps
    )


def late(p: Profile, seed: int, records: Iterable[Mapping[str, Any]]) -> set[int]:
    """Clients of a round that would finish after the deadline (none without one)."""
    if p.deadline_s is None:
        return set()
    return {int(r["client"]) for r in records if record_seconds(p, seed, r) > p.deadline_s}


def round_seconds(p: Profile, seed: int, records: Sequence[Mapping[str, Any]]) -> float:
    """A synchronous round: its slowest client, or the deadline when a client was dropped.

    ``records`` are the round's ``clients.csv`` rows (``client``, ``bytes_down``,
    ``bytes_up``, ``flops``, ``dropped``).
    """
    if p.deadline_s is not None and any(int(r.get("dropped", 0)) for r in records):
        return p.deadline_s
    return max(record_seconds(p, seed, r) for r in records)


def record_seconds(p: Profile, seed: int, r: Mapping[str, Any]) -> float:
    """One client's time from its `clients.csv` row under profile ``p`` (run seed ``seed``)."""
    link = client_link(p, seed, int(r["client"]))
    return client_seconds(p, link, int(r["bytes_down"]), int(r["bytes_up"]), int(r["flops"]))


def retime(p: Profile, seed: int, clients: Any) -> tuple[list[int], list[float], list[float]]:
    """``(rounds, sim_round_s, sim_time_s)`` of a run from its ``clients.csv`` (a DataFrame),
    exactly as the run computes them (same arithmetic, same order of additions).

    Without a deadline only: with one, the dropped clients changed the training itself.
    """
    if p.deadline_s is not None:
        raise ValueError("a deadline drops clients during training; re-run instead")
    rounds, per_round = [], []
    for rnd, rows in clients.groupby("round", sort=True):
        rounds.append(int(rnd))
        per_round.append(round_seconds(p, seed, rows.to_dict("records")))
    return rounds, per_round, list(accumulate(per_round))


class Clock:
    """The run's simulated clock: its profile and seed, asked by the round (which clients
    miss the deadline) and by the run (how long each round took). Built once per run;
    :meth:`of` gives None for ``network=none``."""

    def __init__(self, profile: Profile, seed: int) -> None:
        self.profile, self.seed = profile, seed

    @classmethod
    def of(cls, cfg: Any, seed: int) -> Clock | None:
        profile = Profile.of(cfg)
        return None if profile is None else cls(profile, seed)

    @property
    def deadline_s(self) -> float | None:
        return self.profile.deadline_s

    def late(self, rows: Iterable[Any]) -> set[int]:
        """Clients whose row (a ``ClientRow``) finishes after the deadline."""
        return late(self.profile, self.seed, [_mapping(r) for r in rows])

    def round_seconds(self, rows: Sequence[Any]) -> float:
        """Simulated seconds of a round from its client rows."""
        return round_seconds(self.profile, self.seed, [_mapping(r) for r in rows])


def _mapping(row: Any) -> Mapping[str, Any]:
    return row if isinstance(row, Mapping) else vars(row)
