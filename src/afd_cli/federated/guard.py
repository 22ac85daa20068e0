"""Non-finite losses and updates: stop the run, or drop the clients that produced them.

:class:`FiniteGuard` wraps a trainer and checks every :class:`LocalResult` before the round
loop aggregates it. ``on_nonfinite=stop`` raises :class:`Diverged` naming the round and the
client. ``on_nonfinite=skip_client`` replaces a bad result with an empty one (the client's
starting weights, so a zero update, with weight ``num_samples=0``): the masked mean then adds
nothing for it and leaves its total unchanged, so the round aggregates exactly the other
clients. Two thin wrappers finish the job without the round loop knowing: :class:`SkipUplink`
sends nothing for a skipped client (its compressor state, e.g. DGC's ``u``/``v``, is left as
it was) and :class:`SkipObserve` hides it from the strategy's ``observe`` (AFD score maps).
A round in which every client is non-finite has nothing left to aggregate and stops the run
either way.

In a distributed run (``deferred``) each process only sees its own clients, so the guard
drops its bad ones locally and :meth:`FiniteGuard.settle` gives the round's verdict once every
process's bad clients are known, in client order: the same verdict and message as one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..compression.base import encode_up_many
from .client import LocalJob, LocalResult

STOP, SKIP = "stop", "skip_client"


class Diverged(RuntimeError):
    """A non-finite loss or update; its message is one line naming the round and the client."""

    def __init__(self, round: int, client: int | None, what: str, hint: str = ""):
        self.round, self.client, self.what = round, client, what
        who = f"client {client}: " if client is not None else ""
        text = f"round {round}: {who}{what}"
        super().__init__(f"{text}; {hint}" if hint else text)


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One boolean (on the tensors' device): are all entries of all ``tensors`` finite?

    A NaN or an infinity makes a sum non-finite, so finite sums settle it in one read of each
    tensor (a round checks ~10 models: ``isfinite`` allocated a mask as large as each). A
    non-finite sum may also be an overflow of large finite entries: only then is every entry
    looked at.
    """
    sums = torch.stack([t.sum() for t in tensors])
    if bool(torch.isfinite(sums).all()):
        return torch.ones((), dtype=torch.bool, device=sums.device)
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def filler_loss(losses: list[float], sizes: list[int]) -> float:
    """The loss reported for a skipped client (at weight 0): any finite value will do; this one
    keeps a weighted mean over the round unchanged even where a caller forgets the weights."""
    n = sum(sizes)
    return (
        sum(loss * size for loss, size in zip(losses, sizes, strict=True)) / n if n else losses[0]
    )


def _problem(res: LocalResult, weights_ok: bool) -> str | None:
    if not math.isfinite(res.loss):
        return f"non-finite local training loss ({res.loss})"
    if not weights_ok:
        return "non-finite weights after local training"
    return None


class FiniteGuard:
    """A trainer that checks its inner trainer's results (see the module docstring).

    The caller announces each round with :meth:`begin_round` (1-based, for messages; and
    how many clients it has, since the round loop may train them in several calls);
    ``skipped`` holds the clients dropped so far in the round. ``deferred``: never raise in
    :meth:`train`, drop the bad clients and leave the verdict to :meth:`settle` (``bad``
    lists them).
    """

    def __init__(self, inner: Any, mode: str = STOP, hint: str = ""):
        if mode not in (STOP, SKIP):
            raise ValueError(f"on_nonfinite={mode!r}")
        self.inner, self.mode, self.hint = inner, mode, hint
        self.round = 0
        self.clients = 0  # clients in the round (0: unknown, each train call is a round)
        self.skipped: set[int] = set()
        self.deferred = False
        self.bad: list[tuple[int, str]] = []
        self._seen = 0  # clients trained so far in the round

    def begin_round(self, round: int, clients: int) -> None:
        """Round ``round`` (1-based) of ``clients`` clients starts: nothing skipped yet."""
        self.round, self.clients = round, clients
        self.skipped, self.bad, self._seen = set(), [], 0

    def __getattr__(self, name: str) -> Any:  # data, device, ... of the wrapped trainer
        return getattr(self.inner, name)

    def train(
        self, jobs: list[LocalJob], on_done: Callable[[], None] | None = None
    ) -> list[LocalResult]:
        if not self.clients or self._seen >= self.clients:  # not announced: one call, one round
            self.skipped, self.bad, self._seen = set(), [], 0
        results = self.inner.train(jobs, on_done)
        self._seen += len(jobs)
        if not results:
            return results
        ok = torch.stack([all_finite(list(r.weights.values())) for r in results]).tolist()
        bad = [
            (job.client, why)
            for job, res, fine in zip(jobs, results, ok, strict=True)
            if (why := _problem(res, fine)) is not None
        ]
        if not bad:
            return results
        self.bad += bad
        total = max(self.clients, self._seen)
        if self.deferred:
            self.skipped |= {c for c, _ in bad}
        elif self.mode == STOP or self._seen >= total:  # the round's last call: its verdict
            self.settle(self.bad, total)
        else:
            self.skipped |= {c for c, _ in bad}
        kept = [r for j, r in zip(jobs, results, strict=True) if j.client not in self.skipped]
        filler = filler_loss([r.loss for r in kept], [r.num_samples for r in kept]) if kept else 0.0
        return [
            LocalResult(dict(job.weights), filler, 0, res.seconds)
            if job.client in self.skipped
            else res
            for job, res in zip(jobs, results, strict=True)
        ]

    def settle(self, bad: list[tuple[int, str]], clients: int) -> None:
        """The verdict on a round's non-finite clients (``bad``, in client order, out of
        ``clients``): raise :class:`Diverged`, or skip them (``skipped``)."""
        if self.mode == STOP or len(bad) == clients:
            client, why = bad[0]
            if len(bad) > 1:
                why += f" (and {len(bad) - 1} more client{'s' if len(bad) > 2 else ''})"
            if self.mode == SKIP:
                why += "; every client of the round, nothing left to aggregate"
            raise Diverged(self.round, client, why, self.hint)
        self.skipped = {c for c, _ in bad}


class SkipUplink:
    """A compressor that sends nothing (0 bytes, a zero update) for the guard's skipped
    clients, leaving their per-client state untouched; everything else is the inner one's.

    ``shapes`` (full model): the zero update of a client skipped by another process of a
    distributed run, which this one never saw."""

    def __init__(self, inner: Any, guard: FiniteGuard, shapes: dict | None = None):
        self.inner, self.guard = inner, guard
        self._zeros: dict[int, dict[str, torch.Tensor]] = {}
        self._shapes = shapes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_up(self, client: int, update, view, ctx) -> bytes:
        if client in self.guard.skipped:
            self._zeros[client] = {k: torch.zeros_like(v) for k, v in update.items()}
            return b""
        return self.inner.encode_up(client, update, view, ctx)

    def encode_up_many(self, clients: list[int], updates, views, ctx) -> list[bytes]:
        """The inner compressor's (batched) uploads for the kept clients only."""
        keep = [i for i, c in enumerate(clients) if c not in self.guard.skipped]
        out = [
            self.encode_up(c, u, v, ctx) if c in self.guard.skipped else b""
            for c, u, v in zip(clients, updates, views, strict=True)
        ]
        sent = encode_up_many(
            self.inner,
            [clients[i] for i in keep],
            [updates[i] for i in keep],
            [views[i] for i in keep],
            ctx,
        )
        for i, payload in zip(keep, sent, strict=True):
            out[i] = payload
        return out

    def decode_up(self, client: int, payload: bytes, view):
        if client in self._zeros:
            return self._zeros.pop(client)
        if client in self.guard.skipped and not payload and self._shapes is not None:
            return view.extract({k: torch.zeros(s) for k, s in self._shapes.items()})
        return self.inner.decode_up(client, payload, view)


class SkipObserve:
    """A strategy whose ``observe`` never sees the guard's skipped clients."""

    def __init__(self, inner: Any, guard: FiniteGuard):
        self.inner, self.guard = inner, guard

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def observe(self, round: int, clients, losses, num_samples) -> None:
        keep = [i for i, c in enumerate(clients) if c not in self.guard.skipped]
        self.inner.observe(
            round,
            [clients[i] for i in keep],
            [losses[i] for i in keep],
            [num_samples[i] for i in keep],
        )
