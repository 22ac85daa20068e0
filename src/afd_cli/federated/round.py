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

What each client cost is kept as a :class:`ClientRecord` (bytes each way, samples, sub-model
shape). An optional ``drop`` policy (the simulated clock's deadline) sees each chunk's records
once its uploads are encoded and names clients to leave out (it judges each client by its own
record): their download happened, their upload is not sent (0 bytes), their update is not
aggregated and the strategy does not see it.

A *team* says which of the round's clients this process trains and gathers every process's
:class:`Uploads`; alone (:class:`Solo`, the default) that is all of them and nothing to gather.
Under torchrun (:mod:`.distributed`) each process encodes, trains and uploads its own clients,
and every process then decodes and aggregates all uploads in client order, as one process does.
A team of several processes takes the round in one chunk (its exchange settles the round's
non-finite clients and upload counts at once); each process trains only its own share, and
decodes and aggregates the gathered uploads ``STACK`` at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..compression.base import Compressor, RoundContext, encode_up_many
from ..strategies.base import Strategy
from .aggregate import STACK, MaskedMean
from .client import LocalJob, LocalResult

Params = dict[str, torch.Tensor]
CHUNK = STACK  # clients in flight at once (see the module docstring)


@dataclass
class ClientRecord:
    """One client's part of a round: what it cost on the wire and what it trained."""

    client: int
    bytes_down: int
    bytes_up: int  # 0 when its upload was not sent (dropped, or skipped as non-finite)
    samples: int
    units: dict[str, int]  # the (sub-)model it trained, units per droppable layer
    dropped: bool = False  # left out by the ``drop`` policy (a straggler past the deadline)


@dataclass
class RoundResult:
    clients: list[int]
    bytes_down: int
    bytes_up: int
    train_loss: float  # sample-weighted mean of the clients' local training losses
    keep_fraction: float  # parameters sent / full-model parameters, averaged over clients
    compressor_stats: dict[str, float]
    train_s: float  # wall seconds of local training (the rest is codec + aggregation)
    records: list[ClientRecord] = field(default_factory=list)  # one per client, in order


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


SOLO = Solo()


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


def run_round(
    round: int,
    weights: Params,
    *,
    seed: int,
    parts: list[torch.Tensor],
    per_round: int,
    strategy: Strategy,
    compressor: Compressor,
    trainer,
    full_size: int,
    on_client_done=None,
    drop: Callable[[list[ClientRecord]], set[int]] | None = None,
    team: Solo = SOLO,
    chunk: int | None = CHUNK,
) -> RoundResult:
    """Run one round in place on ``weights`` (the global model) and report what it cost."""
    clients = sample_clients(seed, round, len(parts), per_round)
    views = strategy.select(round, clients)
    ctx = RoundContext(round, len(clients))
    device = next(iter(weights.values())).device
    mean = MaskedMean(weights)
    train_s, losses, sizes, records = 0.0, [], [], []
    kept: list[int] = []  # positions in ``clients`` of the clients aggregated
    step = (chunk if type(team) is Solo else None) or len(clients)  # see the module docstring

    for lo in range(0, len(clients), step):
        ids, vs = clients[lo : lo + step], views[lo : lo + step]
        mine = team.mine(ids)
        jobs, down = [], []
        for cid, view in ((ids[i], vs[i]) for i in mine):
            payload = compressor.encode_down(cid, view.extract(weights), view)
            down.append(len(payload))
            start = to_device(compressor.decode_down(cid, payload, view), device)
            jobs.append(LocalJob(cid, view.units, start, parts[cid], client_seed(seed, round, cid)))

        t_train = time.perf_counter()
        results: list[LocalResult] = trainer.train(jobs, on_client_done)
        chunk_train_s = time.perf_counter() - t_train

        updates = [update_of(job, res) for job, res in zip(jobs, results, strict=True)]
        own = [job.client for job in jobs]
        del jobs  # only the updates are needed from here
        payloads = encode_up_many(compressor, own, updates, [vs[i] for i in mine], ctx)
        del updates  # the chunk's uploads are bytes now
        ups = team.gather(
            Uploads(
                own,
                payloads,
                [r.loss for r in results],
                [r.num_samples for r in results],
                down,
                [r.seconds for r in results],
                chunk_train_s,
            )
        )
        del results, payloads
        train_s += ups.train_s
        losses += ups.losses
        sizes += ups.sizes
        recs = [
            ClientRecord(cid, d, len(up), n, dict(view.units))
            for cid, d, up, n, view in zip(
                ids, ups.bytes_down, ups.payloads, ups.sizes, vs, strict=True
            )
        ]
        dropped = drop(recs) if drop is not None else set()
        for rec in recs:
            if rec.client in dropped:
                rec.bytes_up, rec.dropped = 0, True
        records += recs
        # every payload is decoded (a compressor may expect each encoded upload to be decoded:
        # guard.SkipUplink does), the dropped ones are then discarded unused; STACK at a time,
        # so a team's one big chunk never holds all decoded updates at once
        for a in range(0, len(ids), STACK):
            part = range(a, min(a + STACK, len(ids)))
            decoded = {i: compressor.decode_up(ids[i], ups.payloads[i], vs[i]) for i in part}
            keep = [i for i in part if ids[i] not in dropped]
            kept += [lo + i for i in keep]
            received = [to_device(decoded[i], device) for i in keep]
            del decoded
            mean.add_many([vs[i] for i in keep], received, [sizes[lo + i] for i in keep])
            del received
        del ups
    server_step = getattr(compressor, "apply_aggregate", None)  # e.g. server momentum
    if server_step is None:
        mean.apply_(weights)
    else:
        server_step(mean.delta(), weights)

    strategy.observe(
        round, [clients[i] for i in kept], [losses[i] for i in kept], [sizes[i] for i in kept]
    )
    return RoundResult(
        clients=clients,
        bytes_down=sum(r.bytes_down for r in records),
        bytes_up=sum(r.bytes_up for r in records),
        train_loss=float(np.average(losses, weights=sizes)),
        keep_fraction=float(np.mean([v.num_kept(weights) for v in views])) / full_size,
        compressor_stats=compressor.end_round(),
        train_s=train_s,
        records=records,
    )
