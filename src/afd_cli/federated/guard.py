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
    """One boolean (on the tensors' device): are all entries of all ``tensors`` finite?"""
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


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
    ``skipped`` holds the clients dropped so far in the round.
    """

    def __init__(self, inner: Any, mode: str = STOP, hint: str = ""):
        if mode not in (STOP, SKIP):
            raise ValueError(f"on_nonfinite={mode!r}")
        self.inner, self.mode, self.hint = inner, mode, hint
        self.round = 0
        self.clients = 0  # clients in the round (0: unknown, each train call is a round)
        self.skipped: set[int] = set()
        self._seen = 0  # clients trained so far in the round

    def begin_round(self, round: int, clients: int) -> None:
        """Round ``round`` (1-based) of ``clients`` clients starts: nothing skipped yet."""
        self.round, self.clients = round, clients
        self.skipped, self._seen = set(), 0

    def __getattr__(self, name: str) -> Any:  # data, device, ... of the wrapped trainer
        return getattr(self.inner, name)

    def train(
        self, jobs: list[LocalJob], on_done: Callable[[], None] | None = None
    ) -> list[LocalResult]:
        if not self.clients or self._seen >= self.clients:  # not announced: one call, one round
            self.skipped, self._seen = set(), 0
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
        everyone = len(self.skipped) + len(bad) == max(self.clients, self._seen)
        if self.mode == STOP or (everyone and self._seen >= self.clients):
            client, why = bad[0]
            if len(bad) > 1:
                why += f" (and {len(bad) - 1} more client{'s' if len(bad) > 2 else ''})"
            if self.mode == SKIP:
                why += "; every client of the round, nothing left to aggregate"
            raise Diverged(self.round, client, why, self.hint)
        self.skipped |= {c for c, _ in bad}
        kept = [r for j, r in zip(jobs, results, strict=True) if j.client not in self.skipped]
        n = sum(r.num_samples for r in kept)
        # any finite loss will do at weight 0; this one keeps a weighted mean over the
        # call unchanged even where a caller forgets the weights
        filler = sum(r.loss * r.num_samples for r in kept) / n if n else 0.0
        return [
            LocalResult(dict(job.weights), filler, 0, res.seconds)
            if job.client in self.skipped
            else res
            for job, res in zip(jobs, results, strict=True)
        ]


class SkipUplink:
    """A compressor that sends nothing (0 bytes, a zero update) for the guard's skipped
    clients, leaving their per-client state untouched; everything else is the inner one's."""

    def __init__(self, inner: Any, guard: FiniteGuard):
        self.inner, self.guard = inner, guard
        self._zeros: dict[int, dict[str, torch.Tensor]] = {}

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
