"""One run over several processes (torchrun): which process trains which client, and what
they exchange so that the results are those of one process, bit for bit.

``torchrun --nproc_per_node=N --no-python afd run ...`` starts N copies of ``afd``; torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) makes them one process group: gloo for host tensors, plus nccl for CUDA
tensors with one GPU per process (``LOCAL_RANK``). Without that environment nothing here is
active and a run is the one process it always was.

The cut, and why the numbers do not depend on N:

* Every process holds the whole global model and computes the same round: client sampling
  and ``strategy.select`` are pure functions of (seed, round, strategy state).
* Client ``c`` belongs to process ``c % N`` (:func:`owner`) for the whole run. Only that
  process encodes the client's download, trains it and encodes its upload, so the client's
  compressor state (DGC ``u``/``v``, downlink copies) lives in one place.
* The round's uploads are exchanged as they go on the wire, the encoded ``bytes``, with each
  client's loss, sample count and download size (:meth:`Team.gather`). Every process then
  decodes all of them and aggregates in client order exactly as one process does. (Adding
  partial masked sums across processes instead would add floating-point numbers in another
  order.) Decoding an upload needs no per-client state: true of every compressor here, and
  required of new ones.
* Strategies observe the same losses in every process, so their state stays replicated. The
  non-finite verdict (``on_nonfinite``) and the upload counts behind ``sparsity`` are combined
  over processes before they are used.
* Evaluation: each process takes a contiguous run of test batches; the per-batch sums are
  gathered and added in batch order, as one process adds them.

Rank 0 alone writes the run directory and prints; the others follow its decisions (the run
directory, whether and from where to resume) by broadcast. A checkpoint gathers every
process's client state into rank 0's one file, keyed by client id (the compressor state's
per-client sections are the dicts keyed by int client ids, as :class:`ClientStore` writes
them); on resume every process keeps its own clients' share, so a run may go on with another
number of processes. A process that fails or stops answering ends the run: collectives time
out after ``AFD_DIST_TIMEOUT`` seconds (default 300), a lost peer is one line from rank 0,
and SIGTERM (torchrun stops every process when one fails) is handled like Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import pickle
import re
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist

from ..config import ConfigError
from .client import Evaluator, mean_of
from .guard import FiniteGuard, filler_loss
from .round import SOLO, Solo, Uploads

T = TypeVar("T")
TIMEOUT_ENV = "AFD_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def owner(client: int, size: int) -> int:
    """The process that trains ``client`` when ``size`` processes share a run."""
    return client % size


@dataclass(frozen=True)
class World:
    """This process's place in the run."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    cuda: bool  # nccl for CUDA tensors, this process's GPU = LOCAL_RANK

    @property
    def lead(self) -> bool:
        return self.rank == 0


_world: World | None = None


class PeerLost(RuntimeError):
    """Another process of the run failed or stopped answering (one line, for rank 0)."""


class FromLead(ConfigError):
    """Rank 0 refused; the other processes stop with it and leave the saying to rank 0."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: status.json says interrupted, the resume line is printed."""

    def __str__(self) -> str:
        return "SIGTERM, which torchrun sends to every process when one of them fails"


def launched() -> bool:
    """Started by torchrun (or a launcher that sets the same environment)."""
    return all(k in os.environ for k in LAUNCH_ENV)


def env_rank() -> int:
    """This process's rank from the environment (0 when not launched), before :func:`start`."""
    return int(os.environ["RANK"]) if launched() else 0


def timeout_s() -> float:
    """Seconds a collective may wait for the other processes (``AFD_DIST_TIMEOUT``)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is out of range; expected seconds > 0")
    return value


def start() -> World | None:
    """Join torchrun's process group (once per process); None when not launched by it.

    Also: this process's GPU (``LOCAL_RANK``), its CPU threads (cores / processes on this
    node; ``threads`` overrides it later), and SIGTERM raising :class:`Terminated`.
    """
    global _world
    if _world is not None or not launched():
        return _world
    if not dist.is_available() or not dist.is_gloo_available():
        raise ConfigError("launched by torchrun, but this torch build has no torch.distributed")
    timeout = timeout_s()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    cuda = torch.cuda.is_available() and local_rank < torch.cuda.device_count()
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // max(1, local_size)))
    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(stop)
    _world = World(rank, size, local_rank, local_size, cuda)
    return _world


def stop() -> None:
    """Leave the process group (at the end of a command, and at exit)."""
    global _world
    if _world is not None and dist.is_initialized():
        with contextlib.suppress(Exception):  # a peer already gone: nothing left to tidy
            dist.destroy_process_group()
    _world = None


def exit_process(code: int) -> NoReturn:
    """End this torchrun process: atexit handlers (:func:`stop`, the client-state store's
    spill directory), flushed streams, then ``os._exit``, without interpreter finalisation.

    Why: gloo's run-loop thread drops a finished collective's work object (whose tensors
    hold Python references) after the collective has returned to Python. When that lands in
    ``Py_FinalizeEx``, the thread cannot take the GIL, is unwound through a noexcept
    destructor and ``std::terminate`` aborts the process: a finished run exits -6 ("terminate
    called without an active exception"), about 1 launch in 10 on 2 cores, after
    ``destroy_process_group`` has returned (gdb: ``AsyncAllgatherWork::~AsyncAllgatherWork``
    in ``ProcessGroupGloo::runLoop``; pytorch/pytorch#179291 is the same race).
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def world() -> World | None:
    return _world


def is_lead() -> bool:
    """Whether this process writes files and prints: rank 0, or the only process."""
    return _world is None or _world.lead


def size() -> int:
    return 1 if _world is None else _world.size


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let status.json be written
    raise Terminated()


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a collective's failure (a peer gone, a timeout) into one :class:`PeerLost` line."""
    try:
        yield
    except RuntimeError as e:  # gloo / nccl errors and timeouts (DistError is one)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's SIGTERM must not cut the report
        why = re.sub(r"\[[^\]]*\.(cc|cpp|h|py):\d+\]\s*", "", " ".join(str(e).split()))
        why = why.split(". ")[0]  # gloo adds a paragraph of advice after the cause
        why = why if len(why) <= 160 else why[:159] + "..."
        raise PeerLost(
            f"another process of this distributed run failed or stopped answering while "
            f"{what} ({type(e).__name__}: {why})"
        ) from None


def _all_gather_bytes(blob: bytes, what: str, device: torch.device) -> list[bytes]:
    """Every process's ``blob``, in rank order (through nccl when ``device`` is a GPU)."""
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(device)
    n = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    with _collective(what):
        sizes = [torch.zeros_like(n) for _ in range(size())]
        dist.all_gather(sizes, n)
        lengths = [int(s) for s in sizes]
        padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
        padded[: data.numel()] = data
        out = [torch.empty_like(padded) for _ in lengths]
        dist.all_gather(out, padded)
    return [o[:k].cpu().numpy().tobytes() for o, k in zip(out, lengths, strict=True)]


def all_gather(obj: T, what: str, device: torch.device | str = "cpu") -> list[T]:
    """Every process's ``obj`` (picklable), in rank order."""
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return [pickle.loads(b) for b in _all_gather_bytes(blob, what, torch.device(device))]


def from_lead(fn: Callable[[], T], what: str) -> T:
    """``fn()`` on rank 0 (it may read and write the run directory), its value everywhere.

    Rank 0's exceptions reach the others too: a refusal (:class:`ConfigError`) as
    :class:`FromLead`, an exit as the same exit code, anything else as exit code 1.
    """
    if _world is None:
        return fn()
    if _world.lead:
        try:
            value = fn()
        except BaseException as e:
            _broadcast(("raise", _describe(e)), what)
            raise
        _broadcast(("ok", value), what)
        return value
    kind, value = _broadcast(None, what)
    if kind == "ok":
        return value
    code, message = value
    if code is None:
        raise FromLead(message)
    raise SystemExit(code)


def _describe(e: BaseException) -> tuple[int | None, str]:
    if isinstance(e, ConfigError):
        return None, str(e)
    if isinstance(e, SystemExit):
        return (e.code if isinstance(e.code, int) else 1), ""
    if isinstance(e, KeyboardInterrupt):
        return 130, ""
    return int(getattr(e, "exit_code", 1)), ""  # click's Exit carries exit_code


def _broadcast(obj: Any, what: str) -> Any:
    box = [obj]
    with _collective(what):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def total(value: int, what: str) -> int:
    """The sum of ``value`` over the processes."""
    return value if _world is None else sum(all_gather(value, what))


# --- the pieces a Simulation is made of ------------------------------------------------------


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


class Sharded:
    """A compressor whose per-client state is spread over the processes (see the module
    docstring): its checkpoint state is gathered into one dict on rank 0, and loading keeps
    this process's clients. Everything else is the inner compressor's."""

    def __init__(self, inner: Any, w: World):
        self.inner, self.world = inner, w

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def state_dict(self) -> dict[str, Any]:
        """Every process's state merged (rank 0; the others get their own, unused)."""
        local = self.inner.state_dict()
        states: list[dict[str, Any]] | None = [{}] * self.world.size if self.world.lead else None
        with _collective("gathering the client state for the checkpoint"):
            dist.gather_object(local, states, dst=0)
        return merge_states(states) if states is not None else local

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(own_share(state, self.world.rank, self.world.size))

    def state_nbytes(self) -> int:
        return total(self.inner.state_nbytes(), "adding up the client state")


def _per_client(sections: list[Any]) -> bool:
    return all(isinstance(s, dict) for s in sections) and all(
        isinstance(k, int) for s in sections for k in s
    )


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One compressor state out of every process's: the per-client sections (dicts keyed by
    client id) united, everything else (replicated) from rank 0."""
    merged = dict(states[0])
    for key in states[0]:
        sections = [s.get(key, {}) for s in states]
        if not _per_client(sections):
            continue
        united: dict[int, Any] = {}
        for section in sections:
            for client, value in section.items():
                if client in united:
                    raise RuntimeError(
                        f"compressor state {key!r}: client {client} is in two processes"
                    )
                united[client] = value
        merged[key] = dict(sorted(united.items()))
    return merged


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


def team(guard: FiniteGuard, compressor: Any, device: torch.device) -> tuple[Solo, Any]:
    """The round's team and the compressor to use: :data:`SOLO` and the compressor itself
    in a single process, else a :class:`Team` and the :class:`Sharded` compressor."""
    if _world is None:
        return SOLO, compressor
    if device.type == "cuda" and not _world.cuda:
        raise ConfigError(
            f"device=cuda under torchrun needs one GPU per process: LOCAL_RANK="
            f"{_world.local_rank} but {torch.cuda.device_count()} GPUs are visible; start fewer "
            "processes per node or use device=cpu"
        )
    if not hasattr(compressor, "set_upload_counts"):  # the DenseCompressor base has them
        raise ConfigError(
            f"compression={compressor.name} does not report its upload counts "
            "(upload_counts / set_upload_counts), which a run over several processes adds up"
        )
    return Team(_world, guard, compressor, device), Sharded(compressor, _world)


def evaluator(inner: Evaluator) -> Evaluator | SplitEvaluator:
    """The evaluator to use: split over the processes of a distributed run."""
    return inner if _world is None else SplitEvaluator(inner, _world)
