"""The round loop: sample -> send -> train locally -> receive -> aggregate -> observe.

It knows nothing about how sub-models are chosen (a :class:`Strategy`), what goes on the wire
(a :class:`Compressor`) or how clients are trained (a trainer with ``train(jobs)``; the
sequential one can be swapped for a batched GPU engine). Every random draw is seeded from
``(seed, round, ...)`` so a run resumed at round ``t`` continues exactly as it would have.

Where tensors live: the global model, the clients' weights and updates, and aggregation are on
the model's device (a GPU when there is one); payloads are host ``bytes``. Compressors keep
their per-client state where they were built to (the sparse ones on the model's device when
it is a GPU, else on the host). The loop moves what a compressor decodes onto the device, so
neither side needs to know where the other runs. Uploads are encoded for a chunk of clients
at once and aggregated with one :meth:`MaskedMean.add_many`, so a batched engine can do both
as stacked ``[C, ...]`` operations.

Chunks: the round's clients go through download, training, upload and aggregation ``chunk``
at a time (all at once when ``chunk`` is None). Every client in flight holds about four model
copies (received, trained, update, decoded update), so at 250 clients of a 1.7 M-parameter
model a whole round held 6.6 GB; a chunk of 32 holds 0.85 GB. The global weights change only
after the last chunk and each client's work depends only on its own seed and state, so the
result does not depend on the chunk size, apart from the order of float additions when
clients of several sub-model shapes are aggregated (chunks are multiples of
``aggregate.STACK``, so a round of one shape sums in the same order).

What each client cost is kept as its ``clients.csv`` row (:class:`~afd_cli.metrics.ClientRow`:
bytes each way, samples, local steps, FLOPs and the width of its sub-model; a strategy's
:class:`~afd_cli.federated.client.StepPlan` -- FjORD's width per local step -- is charged
step by step). The strategy sees the rows after the round (``observe_cost``). The simulated
clock's deadline, when there is one, sees each chunk's rows once its uploads are encoded and
names the clients that finish too late (each judged by its own row): their download happened,
their upload is not sent (0 bytes), their update is not aggregated and the strategy does not
see it. Clients whose local result is not finite (``on_nonfinite=skip_client``, :mod:`.guard`)
send nothing either.

A *team* says which of the round's clients this process trains and gathers every process's
:class:`Uploads`; alone (:class:`Solo`, the default) that is all of them and nothing to gather.
Under torchrun (:mod:`.distributed`) each process encodes, trains and uploads its own clients;
every process then decodes its share of the tensors of all uploads and sums them in client
order, as one process does, and the sums are exchanged (``team.tensors``, ``team.combine``).
A team of several processes takes the round in one chunk (its exchange settles the round's
non-finite clients and upload counts at once); each process trains only its own share, and
decodes and aggregates the gathered uploads ``STACK`` at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..compression.base import Compressor, RoundContext, encode_up_many
from ..flops import TrainingCost
from ..metrics import ClientRow
from ..network import Clock
from ..strategies.base import Strategy
from ..submodel import View
from .aggregate import STACK, MaskedMean
from .client import LocalJob, LocalResult, StepPlan, Trainer, warmup_lr_scale
from .guard import FiniteGuard
from .server import ServerStep

Params = dict[str, torch.Tensor]
CHUNK = STACK  # clients in flight at once (see the module docstring)


@dataclass
class RoundResult:
    clients: list[int]
    bytes_down: int
    bytes_up: int
    train_loss: float  # sample-weighted mean of the clients' local training losses
    keep_fraction: float  # parameters sent / full-model parameters, averaged over clients
    compressor_stats: dict[str, float]
    train_s: float  # wall seconds of local training (the rest is codec + aggregation)
    rows: list[ClientRow] = field(default_factory=list)  # one per client, in order
    skipped: int = 0  # clients dropped for a non-finite result (on_nonfinite=skip_client)


@dataclass
class Uploads:
    """What the server holds once a round's clients are done: one entry per client, in order
    (a distributed run gathers them from every process)."""

    clients: list[int]
    payloads: list[bytes]  # the encoded uploads, exactly what goes on the wire
    losses: list[float]
    sizes: list[int]  # local samples (the aggregation weights)
    bytes_down: list[int]  # len() of each client's download
    seconds: list[float]  # each client's local training, wall seconds
    train_s: float  # wall seconds of the round's local training (the slowest process)


class Solo:
    """The team of one process: it trains every client and has nothing to gather."""

    def mine(self, clients: list[int]) -> list[int]:
        """Positions in ``clients`` of the clients this process trains."""
        return list(range(len(clients)))

    def gather(self, ups: Uploads) -> Uploads:
        """Every process's uploads of the round, merged in client order."""
        return ups

    def tensors(self, weights: Params) -> list[str]:
        """The parameters whose uploads this process decodes and aggregates."""
        return list(weights)

    def combine(self, mean: MaskedMean) -> None:
        """Every process's sums of its parameters into ``mean`` (nothing to add alone)."""


SOLO = Solo()


@dataclass
class Federation:
    """Everything a round is run with, built once per run (:func:`afd_cli.run.build.build`)."""

    weights: Params  # the global model, updated in place
    parts: Sequence[torch.Tensor]  # each client's train sample indices (made on use, maybe)
    per_round: int
    seed: int
    strategy: Strategy
    compressor: Compressor
    trainer: Trainer
    guard: FiniteGuard
    server: ServerStep
    cost: TrainingCost
    full_size: int  # parameters of the full model
    clock: Clock | None = None  # the deadline, when the clock has one
    team: Solo = SOLO  # the processes of a torchrun run share the clients
    chunk: int | None = CHUNK
    lr_warmup_rounds: int = 0  # schedule.lr_warmup_rounds (client.warmup_lr_scale)


def sample_clients(seed: int, round: int, num_clients: int, per_round: int) -> list[int]:
    """Uniform sampling without replacement, a pure function of (seed, round)."""
    rng = np.random.default_rng([seed, round, 0x5A])
    return sorted(rng.choice(num_clients, size=per_round, replace=False).tolist())


def client_seed(seed: int, round: int, client: int) -> int:
    return int(np.random.default_rng([seed, round, client, 0xC1]).integers(2**62))


def to_device(params: Params, device: torch.device) -> Params:
    """Decoded payloads come back as host tensors; training and aggregation need them here."""
    return {k: v.to(device, non_blocking=True) for k, v in params.items()}


def update_of(job: LocalJob, result: LocalResult) -> Params:
    """What a client uploads: trained minus received weights (sub-model shape)."""
    return {k: result.weights[k] - job.weights[k] for k in job.weights}


def run_round(fed: Federation, round: int, on_client_done: Callable[[], None] | None = None):
    """Run round ``round`` (0-based) in place on ``fed.weights`` and report what it cost."""
    weights, comp, guard, team = fed.weights, fed.compressor, fed.guard, fed.team
    clients = sample_clients(fed.seed, round, len(fed.parts), fed.per_round)
    views = fed.strategy.select(round, clients)
    ctx = RoundContext(round, len(clients))
    device = next(iter(weights.values())).device
    guard.begin_round(round + 1, len(clients))
    comp.begin_round(round)
    mean = MaskedMean(weights)
    names = set(team.tensors(weights))  # decoded and aggregated here (see the docstring)
    train_s, losses, sizes, rows = 0.0, [], [], []
    kept: list[int] = []  # positions in ``clients`` of the clients aggregated
    step = (fed.chunk if type(team) is Solo else None) or len(clients)  # see the docstring
    lr_scale = warmup_lr_scale(round, fed.lr_warmup_rounds)

    for lo in range(0, len(clients), step):
        ids, vs = clients[lo : lo + step], views[lo : lo + step]
        plans = [
            fed.strategy.local_plan(round, c, v, fed.cost.steps(len(fed.parts[c])))
            for c, v in zip(ids, vs, strict=True)
        ]
        mine = team.mine(ids)
        jobs, down = [], []
        for i in mine:
            cid, view = ids[i], vs[i]
            payload = comp.encode_down(cid, view.extract(weights), view)
            down.append(len(payload))
            start = to_device(comp.decode_down(cid, payload, view), device)
            seed = client_seed(fed.seed, round, cid)
            jobs.append(LocalJob(cid, view.units, start, fed.parts[cid], seed, plans[i], lr_scale))

        t_train = time.perf_counter()
        results = guard.check(jobs, fed.trainer.train(jobs, on_client_done))
        chunk_train_s = time.perf_counter() - t_train

        own = [job.client for job in jobs]
        done = ([r.loss for r in results], [r.num_samples for r in results])
        seconds = [r.seconds for r in results]
        send = [i for i, c in enumerate(own) if c not in guard.skipped]
        updates = {i: update_of(jobs[i], results[i]) for i in send}
        del jobs, results  # only the updates are needed from here
        payloads = _upload(comp, own, updates, [vs[i] for i in mine], ctx)
        del updates  # the chunk's uploads are bytes now
        ups = team.gather(Uploads(own, payloads, *done, down, seconds, chunk_train_s))
        del payloads
        train_s += ups.train_s
        losses += ups.losses
        sizes += ups.sizes
        recs = [
            ClientRow(
                round + 1,
                cid,
                d,
                len(up),
                n,
                fed.cost.steps(n),
                fed.cost.flops(v.units, n)
                if plan is None
                else fed.cost.plan_flops(plan, v.units, n),
                0,
                v.width,
            )
            for cid, d, up, n, v, plan in zip(
                ids, ups.bytes_down, ups.payloads, ups.sizes, vs, plans, strict=True
            )
        ]
        dropped = fed.clock.late(recs) if fed.clock is not None else set()
        for rec in recs:
            if rec.client in dropped:
                rec.bytes_up, rec.dropped = 0, 1
        rows += recs
        # every upload is decoded once, in client order (a compressor may count on it); the
        # dropped ones are then discarded; STACK at a time, so a team's one big chunk never
        # holds all decoded updates at once
        for a in range(0, len(ids), STACK):
            part = range(a, min(a + STACK, len(ids)))
            decoded = {
                i: _download(comp, guard, ids[i], ups.payloads[i], vs[i], weights, names)
                for i in part
            }
            keep = [i for i in part if ids[i] not in dropped]
            kept += [lo + i for i in keep]
            received = [to_device(decoded[i], device) for i in keep]
            del decoded
            mean.add_many([vs[i] for i in keep], received, [sizes[lo + i] for i in keep])
            del received
        del ups
    team.combine(mean)  # every process's parameters: the whole mean everywhere
    fed.server.apply(mean, weights)
    fed.strategy.observe_cost(round, rows, views)

    seen = [i for i in kept if clients[i] not in guard.skipped]
    fed.strategy.observe(
        round, [clients[i] for i in seen], [losses[i] for i in seen], [sizes[i] for i in seen]
    )
    return RoundResult(
        clients=clients,
        bytes_down=sum(r.bytes_down for r in rows),
        bytes_up=sum(r.bytes_up for r in rows),
        train_loss=float(np.average(losses, weights=sizes)),
        keep_fraction=float(np.mean([v.num_kept(weights) for v in views])) / fed.full_size,
        compressor_stats=comp.end_round(),
        train_s=train_s,
        rows=rows,
        skipped=len(guard.skipped),
    )


def _flops(cost: TrainingCost, view: View, plan: StepPlan | None, samples: int) -> int:
    """FLOPs of a client's local training: its sub-model at every step, or its plan's."""
    if plan is None:
        return cost.flops(view.units, samples)
    return cost.plan_flops(plan, view.units, samples)


def _upload(
    comp: Compressor,
    clients: list[int],
    updates: dict[int, Params],
    views: list[View],
    ctx: RoundContext,
) -> list[bytes]:
    """The chunk's encoded uploads: ``updates`` by position in ``clients``; nothing (``b""``)
    for the others, the clients the guard skipped."""
    send = sorted(updates)
    out = [b""] * len(clients)
    encoded = encode_up_many(
        comp, [clients[i] for i in send], [updates[i] for i in send], [views[i] for i in send], ctx
    )
    for i, payload in zip(send, encoded, strict=True):
        out[i] = payload
    return out


def _download(
    comp: Compressor,
    guard: FiniteGuard,
    client: int,
    payload: bytes,
    view: View,
    like: Params,
    names: set[str],
) -> Params:
    """The update the server aggregates, its tensors ``names``: the decoded upload, or zeros
    (at weight 0) for a client skipped as non-finite, so the masked mean adds nothing for it."""
    if client in guard.skipped:
        return view.extract({k: torch.zeros(w.shape) for k, w in like.items() if k in names})
    if len(names) == len(like):
        return comp.decode_up(client, payload, view)
    return comp.decode_up_part(client, payload, view, names)
