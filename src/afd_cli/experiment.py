"""One experiment from a validated config: build the parts, run the rounds, write the outputs.

Outputs in the run directory: ``metrics.csv`` (a row per round), ``clients.csv`` (a row per
client and round: bytes, samples, steps, FLOPs), ``partition.csv`` (per-client sizes and label
histograms), ``checkpoint.pt`` (global model, the small strategy/compressor state and the index
of ``state/``, for resume), ``state/`` (per-client state files, see :mod:`afd_cli.state`),
``summary.json`` (written last: its presence marks a finished run).

A checkpoint is incremental: :meth:`StateStore.commit` writes only the per-client state that
changed since it was last written, under new file names, then ``checkpoint.pt`` is replaced
atomically and only then are the files it no longer names deleted. It is written before the
round's row, so the row's ``wall_s`` includes it; the checkpoint holds that row too, so a kill
between the two appends it on resume instead of recomputing the run.

Under torchrun (:mod:`.federated.distributed`) every process runs this with its share of the
clients, and only rank 0 reads and writes the run directory. There a checkpoint is the full
one (every process's per-client state gathered into rank 0's ``checkpoint.pt``, no
``state/`` index; each process spills to a private temporary directory), and a one-process
checkpoint's ``state/`` is read into that form on resume.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import compression, data, models, network, registry, strategies
from .config import ConfigError, RootConfig
from .federated import distributed
from .federated import round as round_loop
from .federated.client import Evaluator, LocalSGD, SequentialTrainer, Trainer
from .federated.guard import SKIP, STOP, Diverged, FiniteGuard, SkipObserve, SkipUplink, all_finite
from .federated.round import SOLO, ClientRecord, RoundResult, Solo, run_round
from .flops import TrainingCost
from .metrics import (
    ClientsWriter,
    MetricsWriter,
    RoundProgress,
    intact_client_rows,
    intact_rows,
    sim_time_to,
    write_json_atomic,
)
from .state import StateFileError, StateStore, check_index

CHECKPOINT = "checkpoint.pt"
CLIENTS = "clients.csv"
STATE_DIR = "state"  # per-client state files (spilled and checkpointed), see afd_cli.state
TARGET_SHARE = 0.99  # summary.json's target: this share of the run's best accuracy


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is visible; choose one of: auto, cpu")
    return torch.device(name)


def load_data(cfg: RootConfig) -> data.FederatedDataset:
    """The dataset split is fixed (seed 0) so runs with different seeds share one test set."""
    d = cfg.dataset
    return data.load(
        d.name,
        Path(cfg.data_dir).expanduser(),
        seed=0,
        seq_len=d.seq_len,
        stride=d.stride,
        test_fraction=d.test_fraction,
        max_test_samples=d.max_test_samples,
    )


def make_partition(cfg: RootConfig, ds: data.FederatedDataset) -> list[np.ndarray]:
    p, s = cfg.partition, cfg.schedule
    labels = ds.train.labels.cpu().numpy()
    try:
        parts = data.partition(
            p.name,
            labels,
            s.num_clients,
            cfg.seed,
            alpha=p.alpha,
            shards_per_client=p.shards_per_client,
            groups=ds.groups,
            min_samples=p.min_samples,
            max_samples=p.max_samples,
        )
    except ValueError as e:
        raise ConfigError(f"partition={p.name}: {e}") from None
    if len(parts) < s.clients_per_round:
        raise ConfigError(
            f"schedule.clients_per_round={s.clients_per_round} is more than the "
            f"{len(parts)} clients partition={p.name} produced; lower it or partition.min_samples"
        )
    return parts


def new_model(cfg: RootConfig, ds: data.FederatedDataset, device: torch.device) -> models.FLModel:
    factory = registry.load("model", cfg.model.name)
    return factory(ds.input_shape, ds.num_classes, cfg.model).to(device)


@dataclass
class Simulation:
    """Everything a run is made of, built from a config (shared by ``run`` and the benchmark)."""

    cfg: RootConfig
    device: torch.device
    ds: data.FederatedDataset
    parts: list[np.ndarray]
    model: models.FLModel
    strategy: Any
    compressor: Any
    trainer: Trainer
    store: StateStore
    team: Solo = field(default=SOLO)  # the processes of a torchrun run share the clients

    def __post_init__(self) -> None:
        self.train = self.trainer.data
        self.test = self.ds.test.to(self.device)
        self.part_tensors = [
            torch.as_tensor(p, dtype=torch.long, device=self.device) for p in self.parts
        ]
        self.weights = {k: p.data for k, p in self.model.named_parameters()}
        self.full_size = models.num_params(self.model)
        self.evaluate = distributed.evaluator(
            Evaluator(
                self.model,
                self.test,
                self.cfg.schedule.eval_batch_size,
                self.cfg.precision,
                workers=cpu_workers(self.cfg),
            )
        )
        s = self.cfg.schedule
        example = self.train.batch(torch.zeros(1, dtype=torch.long, device=self.device))[0]
        self.cost = TrainingCost(self.model, example, s.local_epochs, s.batch_size)
        self.profile = network.Profile.of(self.cfg.network)  # None: network=none, no clock

    @property
    def round_chunk(self) -> int | None:
        """Clients in flight at once: bounded on the host (memory grows ~4 model copies per
        client); on a GPU the whole round, so the batched trainer sees it as wide as it is."""
        return None if self.device.type == "cuda" else round_loop.CHUNK

    def new_model(self) -> models.FLModel:
        """A freshly initialised full model of the configured family (same device)."""
        return new_model(self.cfg, self.ds, self.device)

    @property
    def skipped(self) -> list[int]:
        """Clients of the last round dropped for a non-finite result (``on_nonfinite``)."""
        return sorted(getattr(self.trainer, "skipped", ()))

    def round(self, t: int, on_client_done=None) -> RoundResult:
        """Round ``t`` (0-based); raises :class:`Diverged` on a non-finite result."""
        if isinstance(self.trainer, FiniteGuard):
            self.trainer.begin_round(t + 1, self.cfg.schedule.clients_per_round)
        r = run_round(
            t,
            self.weights,
            seed=self.cfg.seed,
            parts=self.part_tensors,
            per_round=self.cfg.schedule.clients_per_round,
            strategy=self.strategy,
            compressor=self.compressor,
            trainer=self.trainer,
            full_size=self.full_size,
            on_client_done=on_client_done,
            drop=self._late(t) if self.profile and self.profile.deadline_s else None,
            team=self.team,
            chunk=self.round_chunk,
        )
        if not bool(all_finite(list(self.weights.values()))):
            raise Diverged(
                t + 1,
                None,
                "the global model has non-finite weights after aggregation",
                divergence_hint(self.cfg),
            )
        return r

    def client_rows(self, t: int, records: list[ClientRecord]) -> list[dict[str, int]]:
        """Round ``t``'s (0-based) ``clients.csv`` rows: bytes, samples, steps, FLOPs."""
        return [
            {
                "round": t + 1,
                "client": r.client,
                "bytes_down": r.bytes_down,
                "bytes_up": r.bytes_up,
                "samples": r.samples,
                "steps": self.cost.steps(r.samples),
                "flops": self.cost.flops(r.units, r.samples),
                "dropped": int(r.dropped),
            }
            for r in records
        ]

    def _late(self, t: int):
        """The deadline as the round loop's ``drop`` policy: stragglers of round ``t``."""
        seed, profile = self.cfg.seed, self.profile
        return lambda records: network.late(profile, seed, self.client_rows(t, records))


def divergence_hint(cfg: RootConfig) -> str:
    """The likely cause and what to try, for :class:`Diverged` messages."""
    hint = f"the learning rate may be too high (schedule.lr={cfg.schedule.lr:g}); lower it"
    if cfg.on_nonfinite != SKIP:
        hint += " or drop such clients with on_nonfinite=skip_client"
    return hint


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


def trainer_kind(cfg: RootConfig, device: torch.device) -> str:
    """``trainer=auto``: batched on CUDA, sequential on CPU (where batching measured slower)."""
    if cfg.trainer.name != "auto":
        return cfg.trainer.name
    return "batched" if device.type == "cuda" else "sequential"


def make_trainer(cfg: RootConfig, model: models.FLModel, train: data.Samples, device) -> Trainer:
    """The trainer behind ``trainer=``; both take the same jobs and give the same numbers."""
    s = cfg.schedule
    sgd = LocalSGD(s.local_epochs, s.batch_size, s.lr, s.momentum, s.weight_decay, cfg.precision)
    if trainer_kind(cfg, device) == "batched":
        from .federated.batched import BatchedTrainer

        return BatchedTrainer(model, train, sgd, device=device, chunk=cfg.trainer.chunk)
    return SequentialTrainer(model, train, sgd, device=device, workers=cpu_workers(cfg))


def build(
    cfg: RootConfig, ds: data.FederatedDataset | None = None, run_dir: Path | None = None
) -> Simulation:
    """Load data, partition, and build model, strategy, compressor and trainer (seeded).

    Per-client state goes to one :class:`StateStore` with the ``state.*`` budget and dtype,
    spilling to ``run_dir/state`` (a temporary directory without ``run_dir``).
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
    torch.manual_seed(cfg.seed)
    model = new_model(cfg, ds, device)
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    guard = FiniteGuard(
        make_trainer(cfg, model, ds.train.to(device), device),
        cfg.on_nonfinite,
        divergence_hint(cfg),
    )
    store = StateStore(
        cfg.state.memory_mb,
        # under torchrun each process spills to a private temporary directory (None)
        run_dir / STATE_DIR if run_dir is not None and distributed.world() is None else None,
        cfg.state.dtype,
    )
    strategy = strategies.build(cfg.strategy, model, cfg.seed, store)
    compressor = compression.build(
        cfg.compression, shapes=shapes, seed=cfg.seed, device=device, store=store
    )
    if cfg.on_nonfinite == SKIP:  # skipped clients: no upload, no score-map update
        strategy, compressor = SkipObserve(strategy, guard), SkipUplink(compressor, guard, shapes)
    team, compressor = distributed.team(guard, compressor, device)
    return Simulation(
        cfg=cfg,
        device=device,
        ds=ds,
        parts=parts,
        model=model,
        strategy=strategy,
        compressor=compressor,
        trainer=guard,
        store=store,
        team=team,
    )


def run(cfg: RootConfig, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) the experiment in ``run_dir``; return the summary."""
    t_start = time.perf_counter()
    lead = distributed.is_lead()  # the one process that reads and writes run_dir
    if cfg.progress != "none" and lead:  # loading (and verifying) a dataset can take seconds
        print(f"loading {cfg.dataset.name} ...", flush=True)
    sim = build(cfg, run_dir=run_dir)
    cfg = sim.cfg  # with precision=auto resolved for this machine
    ds, device, weights = sim.ds, sim.device, sim.weights
    strategy, compressor, test, full_size = sim.strategy, sim.compressor, sim.test, sim.full_size
    if lead:
        data.partition_table(sim.parts, ds.train.labels.cpu().numpy(), ds.num_classes).to_csv(
            run_dir / "partition.csv", index=False
        )
    s, m, parts = cfg.schedule, cfg.model, sim.parts

    state = {
        "round": 0,
        "cum_down": 0,
        "cum_up": 0,
        "best_acc": None,
        "best_round": None,
        "last_acc": None,
        "elapsed": 0.0,
        "sim_time": 0.0,
    }
    ckpt_path = run_dir / CHECKPOINT
    ckpt = distributed.from_lead(lambda: resume_point(cfg, run_dir, sim), "reading the checkpoint")
    last_row = ckpt.pop("last_row", None) if ckpt is not None else None
    if ckpt is not None and "store" in ckpt:  # one process (resume_point inlines it otherwise)
        sim.store.restore(ckpt["store"])  # per-client state stays on disk until asked for
    elif sim.team is SOLO:
        sim.store.reset()  # starting over (or from an inline checkpoint): no stale state files
    if ckpt is not None:
        with torch.no_grad():
            for k, w in weights.items():
                w.copy_(ckpt["weights"][k])
        strategy.load_state_dict(ckpt["strategy"])
        compressor.load_state_dict(ckpt["compressor"])
        state = ckpt["state"]
    keep = state["round"] - bool(last_row)
    writer = MetricsWriter(run_dir / "metrics.csv", keep_rounds=keep) if lead else None
    clients_writer = ClientsWriter(run_dir / CLIENTS, s.clients_per_round, keep) if lead else None
    if last_row is not None and writer is not None and clients_writer is not None:
        clients_writer.write(last_row["clients"])
        writer.write(last_row["metrics"])
    profile = sim.profile
    shown = cfg.progress if lead else "none"
    progress = RoundProgress(s.rounds, s.clients_per_round, shown, start=state["round"])
    try:
        for t in range(state["round"], s.rounds):
            t0 = time.perf_counter()
            r = sim.round(t, on_client_done=progress.client_done)
            test_loss = test_acc = None  # not evaluated: an empty cell in metrics.csv
            t_eval = time.perf_counter()
            if (t + 1) % s.eval_every == 0 or t + 1 == s.rounds:
                test_loss, test_acc = sim.evaluate(weights)
                if not math.isfinite(test_loss) and cfg.on_nonfinite == STOP:
                    raise Diverged(
                        t + 1,
                        None,
                        f"non-finite test loss ({test_loss}) of the global model",
                        divergence_hint(cfg),
                    )
                state["last_acc"] = test_acc
                if state["best_acc"] is None or test_acc > state["best_acc"]:
                    state["best_acc"], state["best_round"] = test_acc, t + 1
            eval_s = time.perf_counter() - t_eval
            client_rows = sim.client_rows(t, r.records)
            sim_round = network.round_seconds(profile, cfg.seed, client_rows) if profile else None
            state["sim_time"] = state.get("sim_time", 0.0) + (sim_round or 0.0)
            state["cum_down"] += r.bytes_down
            state["cum_up"] += r.bytes_up
            state["round"] = t + 1
            row = {
                "round": t + 1,
                "dataset": cfg.dataset.name,
                "model": m.name,
                "partition": cfg.partition.name,
                "strategy": cfg.strategy.name,
                "compression": cfg.compression.name,
                "seed": cfg.seed,
                "clients": len(r.clients),
                "skipped": len(sim.skipped),
                "dropped": sum(rec.dropped for rec in r.records),
                "bytes_down": r.bytes_down,
                "bytes_up": r.bytes_up,
                "cum_bytes_down": state["cum_down"],
                "cum_bytes_up": state["cum_up"],
                "cum_bytes": state["cum_down"] + state["cum_up"],
                "train_loss": r.train_loss,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "keep_fraction": r.keep_fraction,
                "sparsity": r.compressor_stats.get("sparsity", 0.0),
                "sim_round_s": sim_round,
                "sim_time_s": state["sim_time"] if profile else None,
                "wall_s": time.perf_counter() - t0,  # without the checkpoint (saved in it)
                "train_s": r.train_s,
                "eval_s": eval_s,
            }
            if state["round"] % cfg.checkpoint_every == 0 or state["round"] == s.rounds:
                t_ckpt = time.perf_counter()
                saved = dict(state, elapsed=state["elapsed"] + row["wall_s"])
                path = ckpt_path if lead else None  # every process hands in its clients' state
                last = {"metrics": row, "clients": client_rows}
                written = _save_checkpoint(path, cfg, sim, saved, last)
                ckpt_s = time.perf_counter() - t_ckpt
                state["checkpoint_s"] = state.get("checkpoint_s", 0.0) + ckpt_s
                state["checkpoint_bytes"] = state.get("checkpoint_bytes", 0) + written
            row["wall_s"] = time.perf_counter() - t0  # the whole round, its checkpoint included
            if writer is not None and clients_writer is not None:
                clients_writer.write(client_rows)
                writer.write(row)
            state["elapsed"] += row["wall_s"]
            progress.round_done(row)
    finally:
        progress.close()
        if writer is not None and clients_writer is not None:
            writer.close()
            clients_writer.close()

    summary = {
        "rounds": state["round"],
        "final_acc": state["last_acc"],
        "best_acc": state["best_acc"],
        "best_round": state["best_round"],
        "total_bytes_down": state["cum_down"],
        "total_bytes_up": state["cum_up"],
        "total_bytes": state["cum_down"] + state["cum_up"],
        "sim_time_s": state["sim_time"] if profile else None,  # the network.* clock
        # simulated seconds to reach 99% of this run's best accuracy (afd report uses
        # fedavg + none's best in the same setting instead)
        "sim_time_to_target_s": (
            sim_time_to(run_dir / "metrics.csv", TARGET_SHARE * state["best_acc"])
            if lead and profile and state["best_acc"] is not None  # rank 0 has the file
            else None
        ),
        "target_acc": TARGET_SHARE * state["best_acc"] if state["best_acc"] is not None else None,
        "train_wall_s": state["elapsed"],  # rounds incl. evaluation and checkpoints (wall_s)
        "checkpoint_s": state.get("checkpoint_s", 0.0),  # checkpoints, all rounds (in wall_s)
        "checkpoint_bytes": state.get("checkpoint_bytes", 0),  # written by them, all rounds
        "wall_s": time.perf_counter() - t_start,
        "num_params": full_size,
        "num_clients": len(parts),
        "majority_baseline": majority_share(test.labels),
        "compressor_state_bytes": compressor.state_nbytes(),
        "client_state_bytes": sim.store.nbytes(),  # all per-client state, memory and disk
        "client_state_peak_memory_bytes": sim.store.peak_resident,  # this process's peak
        "client_state_disk_bytes": sim.store.disk_bytes(),
        "device": str(device),
        "processes": distributed.size(),
        "config": asdict(cfg),
    }
    if lead:
        write_json_atomic(run_dir / "summary.json", summary)
    return summary


def resume_point(
    cfg: RootConfig, run_dir: Path, sim: Simulation | None = None
) -> dict[str, Any] | None:
    """The checkpoint to continue from (``resume`` and one in ``run_dir``), or None to start
    at round 1: refused (ConfigError) if it holds another run.

    ``last_row`` (popped by the caller): the checkpoint's own round's rows, when they did not
    reach metrics.csv / clients.csv (killed between the checkpoint and its rows). ``sim``
    under torchrun: a one-process checkpoint's ``state/`` is read into the inline form every
    process can load (see the module docstring)."""
    ckpt_path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path) if cfg.resume and ckpt_path.exists() else None
    if ckpt is not None:
        differ = config_differences(ckpt["config"], _comparable(cfg))
        if differ:
            raise ConfigError(
                f"{run_dir} holds a run with other {', '.join(differ)}; use a new "
                f"hydra.run.dir, or start over with: afd resume {run_dir} --from-scratch"
            )
        done = ckpt["state"]["round"]
        per_round = cfg.schedule.clients_per_round
        metrics_rows = len(intact_rows(run_dir / "metrics.csv", done))
        intact, where = min(
            (metrics_rows, run_dir / "metrics.csv"),
            (
                len(intact_client_rows(run_dir / CLIENTS, per_round, done)) // per_round,
                run_dir / CLIENTS,
            ),
            key=lambda x: x[0],
        )
        last = ckpt.get("row")
        if (  # clients.csv is written first: only a missing metrics row is such a kill
            intact == done - 1
            and metrics_rows == done - 1
            and isinstance(last, dict)
            and "metrics" in last
            and last["metrics"]["round"] == done
        ):
            intact = done  # killed between the checkpoint and its rows: the rows are in it
            ckpt["last_row"] = last
        if intact < done:
            # rows intact..done are damaged or gone and the checkpoint holds only round `done`:
            # rounds are seeded by (seed, round), so running again from round 1 restores them
            lost = f"round {done}" if intact + 1 == done else f"rounds {intact + 1}-{done}"
            print(
                f"note: {where} holds {intact} intact rounds but "
                f"{ckpt_path} is at round {done}; recomputing from round 1 to restore "
                f"{lost} exactly",
                file=sys.stderr,
                flush=True,
            )
            ckpt = None
    if ckpt is not None and "store" in ckpt and sim is not None and sim.team is not SOLO:
        _inline_store(ckpt, cfg, sim, run_dir / STATE_DIR)
    return ckpt


def _inline_store(ckpt: dict[str, Any], cfg: RootConfig, sim: Simulation, directory: Path) -> None:
    """Replace a one-process checkpoint's state-store references by the per-client values
    (the form a torchrun run gathers and loads), read through throwaway owners."""
    store = StateStore(None, directory, cfg.state.dtype)
    shapes = {k: tuple(w.shape) for k, w in sim.weights.items()}
    strategy = strategies.build(cfg.strategy, sim.model, cfg.seed, store)
    compressor = compression.build(
        cfg.compression, shapes=shapes, seed=cfg.seed, device=sim.device, store=store
    )
    store.restore(ckpt.pop("store"))
    strategy.load_state_dict(ckpt["strategy"])
    compressor.load_state_dict(ckpt["compressor"])
    ckpt["strategy"], ckpt["compressor"] = strategy.state_dict(), compressor.state_dict()


def majority_share(labels: torch.Tensor) -> float:
    """Accuracy of always predicting the most common test label (the trivial baseline)."""
    return float(torch.bincount(labels.cpu()).max()) / len(labels)


# Options a resume may change: they do not alter the numbers of the rounds already run (or,
# for schedule.rounds and schedule.eval_every, only how many rounds and which are evaluated).
MAY_CHANGE = (
    "resume",  # (first: not listed in messages)
    "progress",
    "data_dir",
    "device",
    "threads",
    "checkpoint_every",
    "trainer",
    "state.memory_mb",  # spilling to disk and reading back is exact
    "on_nonfinite",  # matters only once a result is non-finite
    "schedule.rounds",  # extending a finished run with more rounds is allowed
    "schedule.eval_every",
)


def _comparable(cfg: RootConfig) -> dict[str, Any]:
    """The parts of a config that must match for a resume to be the same run: all but
    :data:`MAY_CHANGE` and the keys its plug-ins do not read (``strategy.rate`` of fedavg)."""
    d = asdict(cfg)  # precision=auto as it resolves here: the checkpoint stores it resolved
    d["precision"] = resolve_precision(cfg.precision, resolve_device(cfg.device))
    for key in (*MAY_CHANGE, *registry.unread_keys(d)):
        *parents, leaf = key.split(".")
        node = d
        for k in parents:
            node = node[k]
        node.pop(leaf, None)
    return d


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, as ``key (run: x, asked: y)``, skipping
    :data:`MAY_CHANGE` and unread keys (so checkpoints that still hold those keys compare the
    same)."""
    a, b = flatten(old), flatten(new)
    allowed = (*MAY_CHANGE, *registry.unread_keys(old), *registry.unread_keys(new))
    out = []
    for key in sorted(a.keys() | b.keys()):
        if key in allowed or key.startswith(tuple(f"{k}." for k in allowed)):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key} (run: {a.get(key, '<unset>')}, asked: {b.get(key, '<unset>')})")
    return out


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read: one line naming the file."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` of a run's checkpoint; anything wrong with the file (cut, garbage, not a
    checkpoint) is a :class:`CheckpointError` naming it and how to start over."""
    try:
        # host first: generator states and client buffers must stay CPU tensors on a GPU run
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or not {"config", "weights", "state"} <= ckpt.keys():
            raise ValueError("not an afd checkpoint")
        int(ckpt["state"]["round"])
        # checkpoints from before state.* existed kept everything in fp32
        ckpt["config"].setdefault("state", {"dtype": "fp32"})
    except Exception as e:
        why = " ".join(str(e).split()) or type(e).__name__
        why = why if len(why) <= 80 else why[:79].rsplit(" ", 1)[0] + " ..."
        raise CheckpointError(
            f"{path} is damaged and cannot be read ({type(e).__name__}: {why}); start over "
            f"with: afd resume {path.parent} --from-scratch"
        ) from None
    if "store" in ckpt:
        try:
            check_index(ckpt["store"], path.parent / STATE_DIR)
        except StateFileError as e:
            raise CheckpointError(
                f"{path} names client state that cannot be read ({e}); start over with: "
                f"afd resume {path.parent} --from-scratch"
            ) from None
    return ckpt


def _save_checkpoint(
    path: Path | None,
    cfg: RootConfig,
    sim: Simulation,
    state: dict[str, Any],
    last: dict[str, Any],
) -> int:
    """Write the checkpoint (see the module docstring); returns the bytes it wrote.

    ``path`` None (a torchrun process other than rank 0): only hand in this process's state.
    Under torchrun the checkpoint is the full, gathered one (no incremental state files).
    """
    if sim.team is not SOLO:
        ckpt = {
            "config": _comparable(cfg),
            "weights": {k: w.cpu() for k, w in sim.weights.items()},
            "strategy": sim.strategy.state_dict(),
            "compressor": sim.compressor.state_dict(),  # gathered into rank 0's
            "state": dict(state),
            "row": dict(last),
        }
        if path is None:
            return 0
        tmp = path.with_suffix(".pt.tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
        return path.stat().st_size
    assert path is not None
    before = sim.store.bytes_written
    index = sim.store.commit()  # changed client state, under new file names
    with sim.store.references():  # per-client state: only its namespace, the index has it
        strategy_state, compressor_state = sim.strategy.state_dict(), sim.compressor.state_dict()
    tmp = path.with_suffix(".pt.tmp")
    torch.save(
        {
            "config": _comparable(cfg),
            "weights": {k: w.cpu() for k, w in sim.weights.items()},
            "strategy": strategy_state,
            "compressor": compressor_state,
            "state": dict(state),
            "store": index,
            "row": dict(last),
        },
        tmp,
    )
    os.replace(tmp, path)
    sim.store.committed()  # only now: the files the new index no longer names
    return sim.store.bytes_written - before + path.stat().st_size
