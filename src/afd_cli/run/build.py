"""Build a run from a validated config: data, partition, model, plug-ins, trainer, clock.

Everything is seeded from ``seed``; the dataset split is fixed (seed 0) so runs with different
seeds share one test set. :class:`Simulation` holds the parts (the benchmark builds one too);
:class:`~afd_cli.federated.round.Federation` is what each round runs with.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .. import compression, data, models, network, registry, strategies
from ..config import ConfigError, RootConfig
from ..federated import distributed, server, team
from ..federated.client import Evaluator, LocalSGD, SequentialTrainer, Trainer
from ..federated.guard import SKIP, Diverged, FiniteGuard, all_finite
from ..federated.round import CHUNK, Federation, RoundResult, run_round
from ..flops import TrainingCost
from ..state import StateStore
from ..stateindex import ALONE, Shard
from .degenerate import lower_steps
from .rundir import STATE_DIR


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is visible; choose one of: auto, cpu")
    return torch.device(name)


ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")  # kernel choice pins


def cpu_identity() -> dict[str, object]:
    """What decides the CPU kernels' numbers (docs: reproducibility): the CPU's model and
    vector extensions, and the environment variables that pin the kernels' instruction set.
    Recorded in summary.json, so two runs that differ can be told apart by it."""
    model, flags = "", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    vector = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    pins = {k: os.environ[k] for k in ISA_ENV if k in os.environ}
    return {"model": model, "vector": vector, "pins": pins, "torch": torch.__version__}


def cpu_has_bf16() -> bool | None:
    """Whether this CPU has bfloat16 arithmetic (AMX or AVX512-BF16; Linux flags); None when
    it cannot tell (no ``/proc/cpuinfo``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision=auto``: bf16 where the hardware computes it natively (a CUDA GPU with bf16,
    a CPU with AMX or AVX512-BF16), fp32 elsewhere, because emulated bf16 is several times
    slower than fp32. Resolved once per run and stored resolved (checkpoint, summary.json),
    so a resume on a machine that would resolve otherwise is refused, not silently mixed."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def cpu_workers(cfg: RootConfig) -> int:
    """Clients trained side by side on CPU: one per thread torch may use (``threads``)."""
    return cfg.threads or torch.get_num_threads()


def plans_steps(cfg: RootConfig) -> bool:
    """Whether the strategy trains by a per-step plan (FjORD), which only the sequential
    trainer runs."""
    return bool(getattr(registry.load("strategy", cfg.strategy.name), "plans_steps", False))


def trainer_kind(cfg: RootConfig, device: torch.device) -> str:
    """``trainer=auto``: batched on CUDA, sequential on CPU (where batching measured slower)
    and for a strategy with per-step widths (FjORD)."""
    if cfg.trainer.name == "batched" and plans_steps(cfg):
        raise ConfigError(
            f"trainer=batched cannot train strategy={cfg.strategy.name}'s width per local "
            "step; choose one of: auto, sequential"
        )
    if cfg.trainer.name != "auto":
        return cfg.trainer.name
    return "batched" if device.type == "cuda" and not plans_steps(cfg) else "sequential"


def make_trainer(cfg: RootConfig, model: models.FLModel, train: data.Samples, device) -> Trainer:
    """The trainer behind ``trainer=``; both take the same jobs and give the same numbers."""
    s = cfg.schedule
    sgd = LocalSGD(s.local_epochs, s.batch_size, s.lr, s.momentum, s.weight_decay, cfg.precision)
    if trainer_kind(cfg, device) == "batched":
        from ..federated.batched import BatchedTrainer

        return BatchedTrainer(model, train, sgd, device=device, chunk=cfg.trainer.chunk)
    return SequentialTrainer(model, train, sgd, device=device, workers=cpu_workers(cfg))


_loaded: dict[tuple, data.FederatedDataset] = {}  # the last dataset loaded, for the next run


def load_data(cfg: RootConfig) -> data.FederatedDataset:
    """The configured dataset, split with seed 0 (every run seed shares one test set). The last
    one loaded is kept: the feasibility check before a run and the run share one load, and so
    do the jobs of a sweep over one dataset."""
    key = (cfg.dataset.name, str(Path(cfg.data_dir).expanduser()), repr(cfg.dataset))
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = data.load(key[0], Path(key[1]), cfg.dataset, seed=0)
    return _loaded[key]


def make_partition(cfg: RootConfig, ds: data.FederatedDataset) -> Sequence[Any]:
    """Each client's train sample indices: a list of arrays, or for a dataset that generates
    its clients, :class:`~afd_cli.data.population.ClientParts` (made per client on use)."""
    p, s = cfg.partition, cfg.schedule
    plugin = registry.get("partition", p.name)
    if ds.clients is not None:  # partition=generated (config checks the pairing)
        return ds.clients.parts(s.num_clients)
    labels = ds.train.labels.cpu().numpy()
    natural = getattr(plugin.obj, "needs_groups", False)  # num_clients is only a cap there
    if not natural and s.num_clients > len(labels):
        raise ConfigError(
            f"schedule.num_clients={s.num_clients} is more than the {len(labels):,} training "
            f"samples of dataset={cfg.dataset.name}: some clients would have none; lower it"
        )
    try:
        if natural and ds.groups is None:
            raise ValueError("it needs per-sample groups, which this dataset does not have")
        parts = plugin.obj(labels, s.num_clients, cfg.seed, p, ds.groups)
    except ValueError as e:
        raise ConfigError(f"partition={p.name}: {e}") from None
    if len(parts) < s.clients_per_round:
        raise ConfigError(
            f"schedule.clients_per_round={s.clients_per_round} is more than the "
            f"{len(parts)} clients partition={p.name} produced; lower it or partition.min_samples"
        )
    return parts


def device_parts(parts: Sequence[Any], device: torch.device) -> Sequence[Any]:
    """Index tensors on the device; generated clients' indices are made when sampled (a
    trainer moves a batch's indices where its samples are)."""
    if isinstance(parts, data.ClientParts):
        return parts
    return [torch.as_tensor(p, dtype=torch.long, device=device) for p in parts]


def new_model(cfg: RootConfig, ds: data.FederatedDataset, device: torch.device) -> models.FLModel:
    factory = registry.load("model", cfg.model.name)
    return factory(ds.input_shape, ds.num_classes, cfg.model).to(device)


def divergence_hint(cfg: RootConfig, client: bool = True) -> str:
    """The likely cause and what to try, for :class:`Diverged` messages.

    ``client``: a client's local loss or update is non-finite, so its local steps were too
    large: lower them, or leave such clients out (``on_nonfinite=skip_client``). Otherwise
    every client's result was finite and the global model broke (non-finite after
    aggregation, at evaluation, or its loss exploding): leaving clients out cannot help, only
    smaller steps, the clients' or the server's.
    """
    s, c = cfg.schedule, cfg.compression
    local = [f"schedule.lr={s.lr:g}"]
    if s.momentum:
        local.append(f"schedule.momentum={s.momentum:g}")
    if client:
        them = "them" if len(local) > 1 else "it"
        hint = f"the learning rate may be too high ({', '.join(local)}); lower {them}"
        if cfg.on_nonfinite != SKIP:
            hint += " or drop such clients with on_nonfinite=skip_client"
        return hint
    return "every client's result was finite, so on_nonfinite=skip_client cannot help; " + (
        lower_steps(s.lr, c.server_lr, s.momentum, c.server_momentum)
    )


def majority_share(labels: torch.Tensor) -> float:
    """Accuracy of always predicting the most common test label (the trivial baseline)."""
    return float(torch.bincount(labels.cpu()).max()) / len(labels)


@dataclass
class Simulation:
    """Everything a run is made of, built from a config (shared by ``run`` and the benchmark)."""

    cfg: RootConfig  # with precision=auto resolved for this machine
    device: torch.device
    ds: data.FederatedDataset
    parts: Sequence[Any]  # list of index arrays, or ClientParts (generated clients)
    model: models.FLModel
    fed: Federation  # what every round runs with
    store: StateStore
    test: data.Samples  # on the device
    evaluate: Evaluator | team.SplitEvaluator  # (weights) -> (test loss, test accuracy)
    clock: network.Clock | None  # None: network=none

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return self.fed.weights

    @property
    def strategy(self) -> strategies.Strategy:
        return self.fed.strategy

    @property
    def compressor(self) -> compression.Compressor:
        return self.fed.compressor

    @property
    def train(self) -> data.Samples:
        return self.fed.trainer.data  # type: ignore[attr-defined]

    @property
    def part_tensors(self) -> list[torch.Tensor]:
        return self.fed.parts

    def new_model(self) -> models.FLModel:
        """A freshly initialised full model of the configured family (same device)."""
        return new_model(self.cfg, self.ds, self.device)

    def round(self, t: int, on_client_done=None) -> RoundResult:
        """Round ``t`` (0-based); raises :class:`Diverged` on a non-finite result."""
        r = run_round(self.fed, t, on_client_done)
        if not bool(all_finite(list(self.weights.values()))):
            raise Diverged(
                t + 1,
                None,
                "the global model has non-finite weights after aggregation",
                divergence_hint(self.cfg, client=False),
            )
        return r


def build(
    cfg: RootConfig, ds: data.FederatedDataset | None = None, run_dir: Path | None = None
) -> Simulation:
    """Load data, partition, and build model, strategy, compressor and trainer (seeded).

    Per-client state goes to one :class:`StateStore` with the ``state.*`` budget and dtype,
    spilling to ``run_dir/state`` (a temporary directory without ``run_dir``, and under
    torchrun, where each process spills to a private one).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))
    if cfg.precision == "bf16" and device.type == "cpu" and cpu_has_bf16() is False:
        print(
            "note: precision=bf16 on a CPU without AMX or AVX512-BF16 emulates bfloat16 and "
            "runs several times slower than fp32 (8x measured on one such CPU)",
            file=sys.stderr,
        )
    ds = ds if ds is not None else load_data(cfg)
    parts = make_partition(cfg, ds)
    if ds.clients is not None:  # the held-out part of the federation's own clients
        ds = replace(ds, test=ds.clients.test(len(parts)))
    torch.manual_seed(cfg.seed)
    model = new_model(cfg, ds, device)
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    # under torchrun every process keeps its own store in the run's state/ (stateindex)
    w = distributed.world()
    shard = Shard(w.rank, w.size) if w is not None else ALONE
    spill = run_dir / STATE_DIR if run_dir is not None else None
    store = StateStore(cfg.state.memory_mb, spill, cfg.state.dtype, cfg.state.fsync, shard)
    s = cfg.schedule
    example = ds.train.batch(torch.zeros(1, dtype=torch.long))[0]  # one input, for FLOPs
    cost = TrainingCost(model, example, s.local_epochs, s.batch_size)
    clock = network.Clock.of(cfg.network, cfg.seed)
    if getattr(cfg.strategy, "assign", None) == "device" and clock is None:
        raise ConfigError(
            "strategy.assign=device chooses widths from the simulated clock, which "
            "network=none turns off; choose one of: fixed, per_round, listed, or a network"
        )
    samples = tuple(len(p) for p in parts)
    setup = registry.Setup(model, shapes, cfg.seed, device, store, samples, clock, cost)
    strategy = strategies.build(cfg.strategy, setup)
    compressor = compression.build(cfg.compression, setup)
    guard = FiniteGuard(cfg.on_nonfinite, divergence_hint(cfg))
    trainer = make_trainer(cfg, model, ds.train.to(device), device)
    fed = Federation(
        weights={k: p.data for k, p in model.named_parameters()},
        parts=device_parts(parts, device),
        per_round=s.clients_per_round,
        seed=cfg.seed,
        strategy=strategy,
        compressor=compressor,
        trainer=trainer,
        guard=guard,
        server=server.build(cfg.compression.server_momentum, cfg.compression.server_lr),
        cost=cost,
        full_size=models.num_params(model),
        clock=clock if clock is not None and clock.deadline_s else None,
        team=team.team(guard, compressor, device),
        # clients in flight at once: bounded on the host (memory grows ~4 model copies per
        # client); on a GPU the whole round, so the batched trainer sees it as wide as it is
        chunk=None if device.type == "cuda" else CHUNK,
        lr_warmup_rounds=s.lr_warmup_rounds,
    )
    test = ds.test.to(device)
    evaluate = team.evaluator(
        Evaluator(
            model,
            test,
            s.eval_batch_size,
            cfg.precision,
            workers=cpu_workers(cfg),
        )
    )
    return Simulation(cfg, device, ds, parts, model, fed, store, test, evaluate, clock)
