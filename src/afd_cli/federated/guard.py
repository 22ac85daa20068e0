"""Non-finite losses and updates: stop the run, or drop the clients that produced them.

:class:`FiniteGuard` wraps a trainer and checks every :class:`LocalResult` before the round
loop aggregates it. ``on_nonfinite=stop`` raises :class:`Diverged` naming the round and the
client. ``on_nonfinite=skip_client`` replaces a bad result with an empty one (the client's
starting weights, so a zero update, with weight ``num_samples=0``): the masked mean then adds
nothing for it and leaves its total unchanged, so the round aggregates exactly the other
clients. The round loop then sends nothing for a skipped client (its compressor state, e.g.
DGC's ``u``/``v``, is left as it was) and leaves it out of the strategy's ``observe`` (AFD
score maps).
A round in which every client is non-finite has nothing left to aggregate and stops the run
either way.

In a distributed run (``deferred``) each process only sees its own clients, so the guard
drops its bad ones locally and :meth:`FiniteGuard.settle` gives the round's verdict once every
process's bad clients are known, in client order: the same verdict and message as one process.
"""

from __future__ import annotations

import math

import torch

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
    """Checks a round's local results (see the module docstring).

    The round announces itself with :meth:`begin_round` (1-based, for messages; and how many
    clients it has, since the round loop may train them in several chunks); ``skipped`` holds
    the clients dropped so far in the round. ``deferred``: never raise in :meth:`check`, drop
    the bad clients and leave the verdict to :meth:`settle` (``bad`` lists them).
    """

    def __init__(self, mode: str = STOP, hint: str = ""):
        if mode not in (STOP, SKIP):
            raise ValueError(f"on_nonfinite={mode!r}")
        self.mode, self.hint = mode, hint
        self.round = 0
        self.clients = 0  # clients in the round (0: unknown, each check call is a round)
        self.skipped: set[int] = set()
        self.deferred = False
        self.bad: list[tuple[int, str]] = []
        self._seen = 0  # clients checked so far in the round

    def begin_round(self, round: int, clients: int) -> None:
        """Round ``round`` (1-based) of ``clients`` clients starts: nothing skipped yet."""
        self.round, self.clients = round, clients
        self.skipped, self.bad, self._seen = set(), [], 0

    def check(self, jobs: list[LocalJob], results: list[LocalResult]) -> list[LocalResult]:
        """``results`` of ``jobs``, a bad one replaced by an empty result (skip_client), or
        :class:`Diverged` raised (stop; or skip_client when no client of the round is left)."""
        if not self.clients or self._seen >= self.clients:  # not announced: one call, one round
            self.skipped, self.bad, self._seen = set(), [], 0
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
