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
  client's loss, sample count and download size (:meth:`Team.gather`). Aggregation is cut by
  tensor, not by client: each process decodes only its tensors of every upload
  (:meth:`Compressor.decode_up_part`, :func:`~.team.split_tensors`) and sums them in client
  order exactly as one process does, then the sums are exchanged (:meth:`Team.combine`).
  Every entry is thus a sum in client order, bit for bit one process's; summing each
  process's clients and all-reducing the partial sums would add in another order and change
  the last bits. Decoding an upload needs no per-client state: true of every compressor
  here, and required of new ones.
* Strategies observe the same losses in every process, so their state stays replicated. The
  non-finite verdict (``on_nonfinite``) and the upload counts behind ``sparsity`` are combined
  over processes before they are used.
* Evaluation: each process takes a contiguous run of test batches; the per-batch sums are
  gathered and added in batch order, as one process adds them.

Rank 0 alone writes the run directory and prints; the others follow its decisions (the run
directory, whether and from where to resume) by broadcast. A checkpoint is written by every
process, its clients' state files into the run's ``state/``, and rank 0 joins their indexes
(:mod:`afd_cli.stateindex`); on resume every process takes its own clients' share of the
index, so a run may go on with another number of processes. A process that fails or stops
answering ends the run: collectives time out after ``AFD_DIST_TIMEOUT`` seconds (default 300),
a lost peer is one line from rank 0, and SIGTERM (torchrun stops every process when one
fails) is handled like Ctrl-C. The pieces a round uses (the team, the split evaluation) are
in :mod:`.team`.
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
from ..stateindex import owner  # noqa: F401 (the process that trains a client)

T = TypeVar("T")
TIMEOUT_ENV = "AFD_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


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


def barrier(what: str) -> None:
    """Wait for every process (nothing to do alone)."""
    if _world is not None:
        with _collective(what):
            dist.barrier()
