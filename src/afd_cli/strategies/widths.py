"""Widths per client: how large a sub-model each sampled client gets.

A *width* ``w`` in (0, 1] sizes a sub-model: HeteroFL, FjORD and FedRolex keep
``ceil(w * units)`` units of every droppable layer; the dropout strategies (``fd``, ``multi``,
``single``) drop the share ``1 - w`` (a per-client ``rate``). ``strategy.widths`` lists the
tiers and ``strategy.shares`` the share of clients in each (equal when null);
``strategy.assign`` says which client gets which:

* ``fixed``: a client keeps its tier for the whole run. HeteroFL's ``fix`` mode
  (``utils.process_control``): clients in index blocks, ``floor(N / sum(shares)) * share_i``
  clients of tier ``i`` in the order listed, the remainder in the last tier (shares that are
  not whole numbers: ``floor(N * share_i / sum)`` each). FjORD's ``cid // 20`` over five
  tiers and 100 clients is the same rule.
* ``per_round``: every round each sampled client's tier is drawn from the shares (HeteroFL's
  ``dynamic`` mode, which FedRolex's README runs), from ``(seed, round, client)``.
* ``device``: from the clock. With ``network.deadline_s``, each client gets the widest tier
  whose estimated round time fits the deadline (the narrowest when none does, and the
  deadline then drops it). Without a deadline, the speed-quantile rule: all clients ranked by
  their estimated time at the widest tier, the fastest ``shares[0]`` of them get the widest
  tier, the next ``shares[1]`` the next one, and so on (tiers taken widest first).
* ``listed``: ``widths[i]`` is client ``i``'s width (one entry per client).

The estimate is the clock's own formula (:func:`afd_cli.network.client_seconds`) with the
client's link and device factors (:func:`afd_cli.network.client_link`) and, for the width, its
FLOPs on the client's samples (:class:`afd_cli.flops.TrainingCost`; FjORD: the mean over the
step widths it may draw, plus its distillation pass) and its bytes *before encoding*: the bytes
per parameter each way measured over the previous round's messages (all widths pooled: bytes
over the parameters of the sub-models sent), times the width's parameters; before the first
round, 4 bytes (fp32, dense). A codec's savings thus widen what fits, one round late, and the
deadline judges the bytes actually encoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..network import client_link, client_seconds
from ..options import ConfigError, Options, option, require
from ..submodel import View, units_at_width
from .base import Strategy

if TYPE_CHECKING:
    from ..metrics import ClientRow
    from ..registry import Setup

ASSIGN = ("fixed", "per_round", "device", "listed")
EVAL_WIDTHS = ("off", "last", "every")
WIDTH_TAG = 0x3D7  # keeps the per_round draws apart from every other seeded stream
DENSE_BYTES = 4.0  # fp32: the bytes per parameter assumed before any round was measured
HETEROFL_TIERS = (1.0, 0.5, 0.25, 0.125, 0.0625)  # HeteroFL's a-e (utils.process_control)


def _widths_ok(v: Any) -> bool:
    return v is None or (len(v) > 0 and all(isinstance(x, int | float) and 0 < x <= 1 for x in v))


def _shares_ok(v: Any) -> bool:
    return v is None or (len(v) > 0 and all(isinstance(x, int | float) and x > 0 for x in v))


@dataclass
class WidthOptions(Options):
    """The width keys every sized strategy reads (:mod:`afd_cli.strategies.widths`)."""

    widths: list[float] | None = option(
        None,
        "the width tiers (share of each layer's units kept), or with assign=listed one width "
        "per client; null = one tier, 1 - rate",
        test=_widths_ok,
        expected="a list of numbers in (0, 1]",
    )
    shares: list[float] | None = option(
        None,
        "share of clients in each tier, as many as widths (null = equal)",
        test=_shares_ok,
        expected="a list of positive numbers",
    )
    assign: str = option(
        "fixed",
        "fixed: a client keeps its tier; per_round: redrawn each round; device: from the "
        "clock (widest tier that fits network.deadline_s, else by speed quantile); listed: "
        "widths[i] is client i's",
        choices=ASSIGN,
    )
    eval_widths: str = option(
        "off",
        "test each tier's sub-model too (widths.csv): off, at the last round, or every evaluation",
        choices=EVAL_WIDTHS,
    )

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.shares is not None:
            n = "null" if self.widths is None else len(self.widths)
            require(
                self.widths is not None and len(self.shares) == len(self.widths),
                f"{prefix}shares",
                self.shares,
                f"null or one share per width ({prefix}widths has {n})",
            )
            require(
                self.assign != "listed",
                f"{prefix}shares",
                self.shares,
                f"null with {prefix}assign=listed (one width per client, no tiers)",
            )
        require(
            self.assign != "listed" or self.widths is not None,
            f"{prefix}assign",
            self.assign,
            f"a list of one width per client in {prefix}widths first",
        )


def block_tiers(num_clients: int, shares: list[float]) -> list[int]:
    """HeteroFL's ``fix`` rule: the tier index of each client, in index blocks.

    Whole-number shares (HeteroFL's ``a1-b1-...`` proportions) follow its code exactly:
    ``floor(N / sum) * share_i`` clients per tier in order, the rest in the last tier.
    """
    if all(float(s).is_integer() for s in shares):
        per = num_clients // int(sum(shares))
        counts = [per * int(s) for s in shares]
    else:
        total = sum(shares)
        counts = [math.floor(num_clients * s / total) for s in shares]
    tiers = [i for i, c in enumerate(counts) for _ in range(c)][:num_clients]
    return tiers + [len(shares) - 1] * (num_clients - len(tiers))


class Sized(Strategy):
    """A strategy whose clients get widths; subclasses say what a width means (:meth:`units_of`,
    :meth:`flops_of`) and build views from :meth:`widths`."""

    default_tiers: tuple[float, ...] = HETEROFL_TIERS

    def __init__(self, opts: WidthOptions, setup: Setup) -> None:
        super().__init__(opts, setup)
        self.listed = opts.assign == "listed"
        tiers = list(opts.widths) if opts.widths is not None else list(self.default_widths())
        self.tiers = [] if self.listed else [float(w) for w in tiers]
        self.per_client = [float(w) for w in tiers] if self.listed else None
        self.shares = [float(s) for s in opts.shares] if opts.shares else [1.0] * len(self.tiers)
        self.assign, self.eval_every = opts.assign, opts.eval_widths
        self.samples, self.clock, self.cost = setup.samples, setup.clock, setup.cost
        self.shapes = setup.shapes
        self.bytes_per_param = [DENSE_BYTES, DENSE_BYTES]  # down, up: the last round's
        self._fixed: list[int] | None = None
        self._params: dict[tuple[int, ...], int] = {}

    # -- what a width means (subclasses) ------------------------------------------------------

    def default_widths(self) -> tuple[float, ...]:
        """The tiers when ``strategy.widths`` is null."""
        return self.default_tiers

    def units_of(self, width: float) -> dict[str, int]:
        """Units per droppable layer of a sub-model of this width."""
        return {k: units_at_width(n, width) for k, n in self.model.units.items()}

    def flops_of(self, width: float, samples: int) -> int:
        """FLOPs of a client's local training at this width (what the clock will charge)."""
        assert self.cost is not None
        return self.cost.flops(self.units_of(width), samples)

    def all_widths(self) -> list[float]:
        """Every width a client can get, widest first."""
        return sorted(set(self.per_client or self.tiers), reverse=True)

    # -- assignment ---------------------------------------------------------------------------

    def widths(self, round: int, clients: list[int]) -> list[float]:
        """The width of each of the round's clients (``strategy.assign``)."""
        if self.per_client is not None:
            n = len(self.per_client)
            bad = [c for c in clients if c >= n]
            if bad:
                raise ConfigError(
                    f"strategy.widths lists {n} widths but client {bad[0]} was sampled; "
                    "assign=listed needs one width per client (schedule.num_clients)"
                )
            return [self.per_client[c] for c in clients]
        if len(self.tiers) == 1:
            return [self.tiers[0]] * len(clients)
        if self.assign == "fixed":
            if self._fixed is None:
                self._fixed = block_tiers(self._num_clients(), self.shares)
            return [self.tiers[self._fixed[c]] for c in clients]
        if self.assign == "per_round":
            p = np.asarray(self.shares) / sum(self.shares)
            return [
                self.tiers[
                    int(np.random.default_rng([self.seed, round, c, WIDTH_TAG]).choice(len(p), p=p))
                ]
                for c in clients
            ]
        return self._from_clock(clients)

    def _num_clients(self) -> int:
        if self.samples is None:
            raise ConfigError("strategy.assign needs the run's clients (a setup without them)")
        return len(self.samples)

    def _from_clock(self, clients: list[int]) -> list[float]:
        if self.clock is None or self.cost is None or self.samples is None:
            raise ConfigError(
                "strategy.assign=device needs the simulated clock; choose a network profile "
                "other than network=none"
            )
        order = sorted(range(len(self.tiers)), key=lambda i: -self.tiers[i])
        deadline = self.clock.deadline_s
        if deadline is not None:
            out = []
            for c in clients:
                fits = [i for i in order if self.seconds(c, self.tiers[i]) <= deadline]
                out.append(self.tiers[fits[0] if fits else order[-1]])
            return out
        # speed quantiles: everyone ranked by the estimate at the widest tier
        widest = self.tiers[order[0]]
        n = self._num_clients()
        ranked = sorted(range(n), key=lambda c: (self.seconds(c, widest), c))
        blocks = block_tiers(n, [self.shares[i] for i in order])
        tier_of = {c: self.tiers[order[b]] for c, b in zip(ranked, blocks, strict=True)}
        return [tier_of[c] for c in clients]

    def seconds(self, client: int, width: float) -> float:
        """The clock's estimate of the client's round at this width (see the module doc)."""
        assert self.clock is not None and self.samples is not None
        p = self.clock.profile
        params = self.params_of(self.units_of(width))
        down, up = (round(b * params) for b in self.bytes_per_param)
        flops = self.flops_of(width, self.samples[client])
        return client_seconds(p, client_link(p, self.seed, client), down, up, flops)

    def params_of(self, units: dict[str, int]) -> int:
        """Parameters of the sub-model with these unit counts (from shapes and the layout)."""
        key = tuple(units[k] for k in sorted(units))
        if key not in self._params:
            total = 0
            for name, shape in self.shapes.items():
                dims = list(shape)
                for a in self.model.layout.get(name, ()):
                    dims[a.dim] = units[a.layer] * a.repeat * a.block
                total += math.prod(dims)
            self._params[key] = total
        return self._params[key]

    # -- hooks --------------------------------------------------------------------------------

    def observe_cost(self, round: int, rows: list[ClientRow], views: list[View]) -> None:
        """Bytes per parameter each way over the round's messages, for the next estimate."""
        params = [self.params_of(v.units) for v in views]
        sent = [(r.bytes_down, p) for r, p in zip(rows, params, strict=True)]
        up = [(r.bytes_up, p) for r, p in zip(rows, params, strict=True) if r.bytes_up > 0]
        for i, pairs in enumerate((sent, up)):
            if pairs and sum(p for _, p in pairs) > 0:
                self.bytes_per_param[i] = sum(b for b, _ in pairs) / sum(p for _, p in pairs)

    def eval_views(self) -> dict[float, View]:
        """The first ``ceil(w * units)`` units of every layer, for each width below 1
        (HeteroFL's evaluation of each tier's sub-model)."""
        import torch

        return {
            w: View(self.model, {k: torch.arange(n) for k, n in self.units_of(w).items()}, width=w)
            for w in self.all_widths()
            if w < 1
        }

    def eval_due(self, round: int, last: bool) -> bool:
        return self.eval_every == "every" or (self.eval_every == "last" and last)

    def state_dict(self) -> dict[str, Any]:
        down, up = self.bytes_per_param
        return {"bytes_per_param": {"down": down, "up": up}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("bytes_per_param")  # absent in checkpoints from before widths
        if saved is not None:
            self.bytes_per_param = [float(saved["down"]), float(saved["up"])]
