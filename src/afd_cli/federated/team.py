"""The processes of a torchrun run as the round sees them (:mod:`.distributed` says how the
run is cut and why the numbers do not depend on the number of processes): which clients are
this process's, every process's uploads gathered in client order, the checkpoint's
client-state indexes joined, and evaluation split by test batches."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..stateindex import join
from .aggregate import MaskedMean
from .client import Evaluator, mean_of
from .distributed import World, _collective, all_gather, owner, world
from .guard import FiniteGuard, filler_loss
from .round import SOLO, Solo, Uploads


class Team(Solo):
    """The processes of a run as :func:`~afd_cli.federated.round.run_round` sees them: this
    one's clients (:func:`owner`), and every process's uploads gathered in client order."""

    def __init__(self, w: World, guard: FiniteGuard, compressor: Any, device: torch.device):
        self.world, self.guard, self.compressor = w, guard, compressor
        self.device = device if device.type == "cuda" else torch.device("cpu")
        self._clients: list[int] = []
        guard.deferred = True  # the verdict on non-finite clients waits for every process's

    def mine(self, clients: list[int]) -> list[int]:
        self._clients = list(clients)
        return [i for i, c in enumerate(clients) if owner(c, self.world.size) == self.world.rank]

    def tensors(self, weights: dict[str, torch.Tensor]) -> list[str]:
        """This process's parameters (:func:`split_tensors`): it decodes only their part of
        every upload and sums them in client order, as one process does tensor by tensor."""
        return split_tensors(weights, self.world.size)[self.world.rank]

    def combine(self, mean: MaskedMean) -> None:
        """Every process's sums of its parameters, exchanged bit for bit: the weights of the
        sums (``den``, ``total``) follow from the views and sample counts, known to all."""
        mine = split_tensors(mean.num, self.world.size)[self.world.rank]
        parts = all_gather(
            {k: mean.num[k].cpu() for k in mine},
            f"adding up the uploads of round {self.guard.round}",
            self.device,
        )
        for part in parts:
            for k, v in part.items():
                mean.num[k] = v.to(mean.num[k].device)

    def gather(self, ups: Uploads) -> Uploads:
        """Every process's uploads and non-finite clients; the round's verdict on those
        (:meth:`FiniteGuard.settle`, raising :class:`Diverged` in every process alike) and
        the upload counts, both over all processes."""
        sent, offered = self.compressor.upload_counts()
        parts = all_gather(
            (ups, self.guard.bad, sent, offered),
            f"exchanging the uploads of round {self.guard.round}",
            self.device,
        )
        rows: dict[int, tuple[bytes, float, int, int, float]] = {}
        bad: list[tuple[int, str]] = []
        sent = offered = 0
        for part, part_bad, part_sent, part_offered in parts:
            rows.update(
                zip(
                    part.clients,
                    zip(
                        part.payloads,
                        part.losses,
                        part.sizes,
                        part.bytes_down,
                        part.seconds,
                        strict=True,
                    ),
                    strict=True,
                )
            )
            bad += part_bad
            sent, offered = sent + part_sent, offered + part_offered
        clients = sorted(rows)
        if clients != sorted(self._clients):
            raise RuntimeError(
                f"the processes disagree on the clients of round {self.guard.round}: "
                f"{clients} gathered, {sorted(self._clients)} sampled here"
            )
        self.guard.skipped = set()
        if bad:
            self.guard.settle(sorted(bad), len(clients))
        losses = [rows[c][1] for c in clients]
        sizes = [rows[c][2] for c in clients]
        if self.guard.skipped:  # their loss as one process reports it (weight 0)
            kept = [i for i, c in enumerate(clients) if c not in self.guard.skipped]
            filler = filler_loss([losses[i] for i in kept], [sizes[i] for i in kept])
            skipped = self.guard.skipped
            losses = [filler if c in skipped else x for c, x in zip(clients, losses, strict=True)]
        self.compressor.set_upload_counts(sent, offered)
        return Uploads(
            clients,
            [rows[c][0] for c in clients],
            losses,
            sizes,
            [rows[c][3] for c in clients],
            [rows[c][4] for c in clients],
            max(part.train_s for part, *_ in parts),
        )


def split_tensors(weights: dict[str, torch.Tensor], size: int) -> list[list[str]]:
    """The parameters each of ``size`` processes decodes and aggregates: whole tensors, the
    largest first to the least loaded process (a pure function of the shapes, so every process
    computes the same split)."""
    loads, parts = [0] * size, [[] for _ in range(size)]  # type: list[int], list[list[str]]
    for name in sorted(weights, key=lambda k: (-weights[k].numel(), k)):
        r = min(range(size), key=lambda i: (loads[i], i))
        loads[r] += weights[name].numel()
        parts[r].append(name)
    return parts


def joined_index(index: dict[str, Any], written: int) -> tuple[dict[str, Any] | None, int]:
    """Every process's client-state index (each naming its own clients' files, written
    already) joined on rank 0 (:func:`afd_cli.stateindex.join`), with the bytes they wrote;
    the other processes get None and their own bytes."""
    w = world()
    assert w is not None
    parts: list[Any] | None = [None] * w.size if w.lead else None
    with _collective("gathering the client-state indexes for the checkpoint"):
        dist.gather_object((index, written), parts, dst=0)
    if parts is None:
        return None, written
    return join([ix for ix, _ in parts]), sum(n for _, n in parts)


def my_share(state: dict[str, Any]) -> dict[str, Any]:
    """A compressor state with every client's values inline (a torchrun checkpoint before
    the per-process state files) cut to this process's clients (all of it alone)."""
    w = world()
    return state if w is None else own_share(state, w.rank, w.size)


def _per_client(sections: list[Any]) -> bool:
    return all(isinstance(s, dict) for s in sections) and all(
        isinstance(k, int) for s in sections for k in s
    )


def own_share(state: dict[str, Any], rank: int, size: int) -> dict[str, Any]:
    """``state`` with only this process's clients in its per-client sections."""
    return {
        k: {c: v for c, v in s.items() if owner(c, size) == rank} if _per_client([s]) else s
        for k, s in state.items()
    }


class SplitEvaluator:
    """Each process evaluates a contiguous run of test batches; the per-batch sums are
    gathered and added in batch order, as one process adds them."""

    def __init__(self, inner: Evaluator, w: World):
        self.inner, self.world = inner, w

    def __call__(self, weights: dict[str, torch.Tensor]) -> tuple[float, float]:
        sums = self.inner.sums(weights, (self.world.rank, self.world.size))
        parts = all_gather(sums, "evaluating the global model")
        return mean_of(torch.cat(parts), len(self.inner.data))


def team(guard: FiniteGuard, compressor: Any, device: torch.device) -> Solo:
    """The round's team: :data:`SOLO` in a single process, else a :class:`Team`."""
    w = world()
    if w is None:
        return SOLO
    if device.type == "cuda" and not w.cuda:
        raise ConfigError(
            f"device=cuda under torchrun needs one GPU per process: LOCAL_RANK="
            f"{w.local_rank} but {torch.cuda.device_count()} GPUs are visible; start fewer "
            "processes per node or use device=cpu"
        )
    return Team(w, guard, compressor, device)


def evaluator(inner: Evaluator) -> Evaluator | SplitEvaluator:
    """The evaluator to use: split over the processes of a distributed run."""
    w = world()
    return inner if w is None else SplitEvaluator(inner, w)
