"""Structured config schema: the single place that says which keys exist and what they may hold.

Hydra composes the YAML files under ``conf/``; :func:`validate` then merges the result onto
these dataclasses (so a misspelt key or a wrong type is caught) and checks ranges and
choices, raising :class:`ConfigError` with one line that names the key and the valid values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import registry

# The plug-in groups' names (strategy, compression, model, dataset, partition) live in
# afd_cli.registry; these are the choices of the other options.
VALUE_FORMATS = ("fp32", "fp16", "q8")
DEVICES = ("auto", "cpu", "cuda")
TRAINERS = ("auto", "sequential", "batched")
PRECISIONS = ("auto", "fp32", "bf16")
ON_NONFINITE = ("stop", "skip_client")
# network profiles: data, not plug-ins (conf/network/<name>.yaml; a test keeps them equal)
NETWORKS = ("none", "cellular_3g", "lte", "wifi")  # none = no clock
STATE_DTYPES = ("fp32", "fp16", "bf16")
# numpy's legacy seeding and torch.Generator.manual_seed both take any value in [0, 2**32 - 1];
# outside it a run failed after loading the data with a message about the partition
# (seed=-1) or an int64 overflow (a 23-digit seed), and had already made its run directory.
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A user-facing configuration mistake; its message is one line, printed as is."""


@dataclass
class DatasetConfig:
    name: str = "mnist"
    seq_len: int = 80  # shakespeare: characters of context per sample
    stride: int = 1  # shakespeare: step between successive windows of one role
    test_fraction: float = 0.1  # held out where there is no official test split
    max_test_samples: int | None = None  # evaluate on a fixed seeded subset (speed); null = all


@dataclass
class PartitionConfig:
    name: str = "dirichlet"
    alpha: float = 0.5  # dirichlet concentration; smaller = more skewed labels per client
    shards_per_client: int = 2  # shards: McMahan's pathological non-IID split
    min_samples: int = 1000  # natural: smallest (play, role) kept as a client, in samples
    max_samples: int | None = None  # natural: cap on one client's samples (seeded subsample)


@dataclass
class ModelConfig:
    name: str = "cnn_mnist"
    hidden: int = 200  # mlp: width of each of its two hidden layers
    embed_dim: int = 8  # char_lstm
    lstm_hidden: int = 256  # char_lstm
    lstm_layers: int = 2  # char_lstm


@dataclass
class ScheduleConfig:
    rounds: int = 10
    num_clients: int = 100
    clients_per_round: int = 10
    local_epochs: int = 1
    batch_size: int = 10
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    eval_every: int = 1
    eval_batch_size: int = 128  # evaluation speed only; results do not depend on it


@dataclass
class StrategyConfig:
    name: str = "fedavg"  # fedavg reads none of the keys below
    # fd, multi, single: fraction of units dropped per droppable layer, in [0, 1); the papers'
    # default 0.25 (0 makes every strategy FedAvg)
    rate: float = 0.25
    # AFD (multi | single), Bouacida et al. 2021, Algorithms 1-2 (see afd_cli.scoremap):
    score_init: float = 0.0  # initial score (sampling weight) of every unit, >= 0 (0 = paper)
    # share of each redraw taken uniformly; 0 (paper, literal) freezes the map after its first
    # improving round (see scoremap.py), so this project uses 0.2
    explore: float = 0.2
    score_update: str = "relative"  # relative: (l_prev - l)/l_prev (paper) ; absolute: l_prev - l


@dataclass
class CompressionConfig:
    name: str = "none"
    values: str = "fp32"  # value precision of sparse payloads: fp32 | fp16
    sparsity: float = 0.999  # target fraction of entries NOT sent (topk, dgc)
    # dgc: exponential warm-up 75%, 93.75%, 98.4375%, 99.6% spread over these rounds, then the
    # target. Lin et al. warm up over 4 epochs: 4 * K/(C*E) rounds in FL (40 in
    # experiment=paper_mnist); 4 suits short runs
    warmup_rounds: int = 4
    momentum: float = 0.9  # dgc: momentum of the correction buffer u
    momentum_correction: bool = True  # dgc: u = m*u + G; v = v + u   (false: v = v + G)
    momentum_masking: bool = True  # dgc: zero u and v where sent  (false: zero v only)
    clip_norm: float | None = None  # dgc: global clip c; each client clips to c * N^-1/2
    sample_ratio: float = 0.01  # dgc: fraction of entries sampled to estimate the threshold
    dense_below: int = 1024  # tensors with fewer entries go dense (biases)
    downlink: bool = False  # also compress server -> client (sparse diff vs client's copy)
    # topk/dgc with downlink: dense downlink records (first copies, small tensors) in
    # fp32 | fp16 | q8; the client's copy holds what it decoded (fp32: small ones in `values`)
    first_copy: str = "fp32"
    # hadamard (Caldas et al. 2018): randomised Hadamard rotation per block, subsampling of
    # the upload, unbiased stochastic quantisation
    bits: int = 8  # bits per rotated coordinate, 1..8
    bits_down: int | None = None  # bits of the downlink (downlink=true); null = bits
    subsample: float = 1.0  # fraction of rotated upload coordinates sent, in (0, 1]
    block: int = 4096  # rotation and quantisation block (a power of two)
    # server momentum on the aggregate (FetchSGD / FedAvgM): m = b*m + mean; w += lr * m
    server_momentum: float = 0.0  # b; 0 = off (plain FedAvg aggregation)
    server_lr: float = 1.0


@dataclass
class TrainerConfig:
    """How a round's clients are trained; the numbers do not depend on it (tests check that)."""

    name: str = "auto"  # auto: batched on CUDA, sequential on CPU | sequential | batched
    chunk: int | None = None  # batched: clients trained together; null = as many as fit


@dataclass
class NetworkConfig:
    """The simulated network and device clock (:mod:`afd_cli.network`); ``none`` = no clock.

    The defaults are the ``lte`` profile; conf/network/lte.yaml says where they come from.
    """

    name: str = "lte"  # none | cellular_3g | lte | wifi
    down_mbps: float = 29.5  # median client's download rate, 10^6 bit/s
    up_mbps: float = 7.6  # median client's upload rate, 10^6 bit/s
    latency_ms: float = 28.0  # round-trip time, charged once per message (down and up)
    device_gflops: float = 10.0  # median client's sustained local-training speed, 10^9 FLOP/s
    spread: float = 0.5  # log-normal sigma of each client's link and device speed (0 = equal)
    deadline_s: float | None = None  # drop clients that finish later (stragglers); null = off


@dataclass
class StateConfig:
    """Where per-client state lives (DGC u/v, downlink copies, Multi-Model AFD score maps)."""

    # in memory up to this many MiB; beyond it the least recently used clients' state goes to
    # files in the run directory (state/). null = no limit. Results do not depend on it.
    # 1024 leaves room for a round's working memory: 1,000 cnn_mnist DGC clients, 250 a
    # round, stay under 4 GiB of RSS (README, "Client state").
    memory_mb: int | None = 1024
    dtype: str = "fp32"  # precision the compressors' buffers are kept in: fp32 | fp16 | bf16


@dataclass
class RootConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    state: StateConfig = field(default_factory=StateConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # fp32 | bf16 (autocast in local training and evaluation) | auto (bf16 where the CPU or
    # GPU computes it natively, else fp32; stored resolved in the checkpoint and summary)
    precision: str = "fp32"
    # torch CPU threads; null = torch's default (all cores); use 1 per job for parallel sweeps
    threads: int | None = None
    data_dir: str = "~/.cache/afd-cli"  # conf/config.yaml reads $AFD_DATA_DIR first
    progress: str = "auto"  # auto (rich on a terminal, plain lines otherwise) | rich | plain | none
    # afd resume (and a re-run sweep job) continues from the checkpoint; afd run refuses a dir
    # that holds a run
    resume: bool = True
    checkpoint_every: int = 1  # rounds between checkpoints
    # a non-finite local loss or update: stop the run (status "diverged") or drop that client
    on_nonfinite: str = "stop"  # stop | skip_client


def register_schema() -> None:
    """Put the schema first in the defaults list (``afd_schema``): every key exists and is typed
    at compose time, so ``compression.sparsity=0.99`` works with any compression option."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="afd_schema", node=RootConfig)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range; expected {expected}")


def validate(cfg: DictConfig) -> RootConfig:
    """Merge a composed config onto the schema and check every range; return typed config."""
    schema = OmegaConf.structured(RootConfig)
    user = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("hydra", "experiment")])
    try:
        merged = OmegaConf.merge(schema, user)
    except OmegaConfBaseException as e:
        raise ConfigError(_omegaconf_message(e)) from None
    c: RootConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    _check_finite(c)

    for group in registry.GROUPS:
        _choice(group, getattr(c, group).name, registry.names(group))
    _choice("device", c.device, DEVICES)
    _choice("trainer", c.trainer.name, TRAINERS)
    _choice("precision", c.precision, PRECISIONS)
    _choice("progress", c.progress, ("auto", "rich", "plain", "none"))
    _choice("on_nonfinite", c.on_nonfinite, ON_NONFINITE)
    _choice("compression.values", c.compression.values, ("fp32", "fp16"))
    _choice("compression.first_copy", c.compression.first_copy, VALUE_FORMATS)
    _choice("strategy.score_update", c.strategy.score_update, ("relative", "absolute"))
    validate_network(c.network)
    _choice("state.dtype", c.state.dtype, STATE_DTYPES)

    s = c.schedule
    for key in (
        "rounds",
        "num_clients",
        "clients_per_round",
        "local_epochs",
        "batch_size",
        "eval_every",
        "eval_batch_size",
    ):
        v = getattr(s, key)
        _check(v >= 1, f"schedule.{key}", v, "an integer >= 1")
    _check(
        s.clients_per_round <= s.num_clients,
        "schedule.clients_per_round",
        s.clients_per_round,
        f"<= schedule.num_clients ({s.num_clients})",
    )
    _check(s.lr > 0, "schedule.lr", s.lr, "a number > 0")
    _check(0 <= s.momentum < 1, "schedule.momentum", s.momentum, "a number in [0, 1)")
    _check(s.weight_decay >= 0, "schedule.weight_decay", s.weight_decay, "a number >= 0")

    p = c.partition
    _check(p.alpha > 0, "partition.alpha", p.alpha, "a number > 0")
    _check(
        p.shards_per_client >= 1,
        "partition.shards_per_client",
        p.shards_per_client,
        "an integer >= 1",
    )
    _check(p.min_samples >= 1, "partition.min_samples", p.min_samples, "an integer >= 1")
    _check(
        p.max_samples is None or p.max_samples >= 1,
        "partition.max_samples",
        p.max_samples,
        "null or an integer >= 1",
    )

    d = c.dataset
    _check(d.seq_len >= 1, "dataset.seq_len", d.seq_len, "an integer >= 1")
    _check(d.stride >= 1, "dataset.stride", d.stride, "an integer >= 1")
    _check(0 < d.test_fraction < 1, "dataset.test_fraction", d.test_fraction, "a number in (0, 1)")
    _check(
        d.max_test_samples is None or d.max_test_samples >= 1,
        "dataset.max_test_samples",
        d.max_test_samples,
        "null or an integer >= 1",
    )

    m = c.model
    for key in ("hidden", "embed_dim", "lstm_hidden", "lstm_layers"):
        v = getattr(m, key)
        _check(v >= 1, f"model.{key}", v, "an integer >= 1")

    st = c.strategy
    _check(0 <= st.rate < 1, "strategy.rate", st.rate, "a number in [0, 1)")
    _check(0 <= st.explore <= 1, "strategy.explore", st.explore, "a number in [0, 1]")
    _check(st.score_init >= 0, "strategy.score_init", st.score_init, "a number >= 0")

    z = c.compression
    _check(0 <= z.sparsity < 1, "compression.sparsity", z.sparsity, "a number in [0, 1)")
    _check(z.warmup_rounds >= 0, "compression.warmup_rounds", z.warmup_rounds, "an integer >= 0")
    _check(0 <= z.momentum < 1, "compression.momentum", z.momentum, "a number in [0, 1)")
    _check(
        z.clip_norm is None or z.clip_norm > 0,
        "compression.clip_norm",
        z.clip_norm,
        "null or a number > 0",
    )
    _check(
        0 < z.sample_ratio <= 1, "compression.sample_ratio", z.sample_ratio, "a number in (0, 1]"
    )
    _check(z.dense_below >= 0, "compression.dense_below", z.dense_below, "an integer >= 0")
    downlink = registry.DOWNLINK_COMPRESSIONS
    if z.downlink and z.name not in downlink:
        # dense codecs already use one format both ways; silently ignoring the flag would
        # leave a researcher believing the download was sparsified
        raise ConfigError(
            f"compression.downlink=true needs a sparse compressor, not compression={z.name!r}; "
            f"choose one of: {', '.join(downlink)}"
        )
    sparse = registry.SPARSE_COMPRESSIONS
    if z.first_copy != "fp32" and not (z.downlink and z.name in sparse):
        raise ConfigError(
            f"compression.first_copy={z.first_copy} needs compression.downlink=true with a "
            f"sparse compressor, not compression={z.name!r}; choose one of: "
            f"{', '.join(sparse)}"
        )
    _check(1 <= z.bits <= 8, "compression.bits", z.bits, "an integer in [1, 8]")
    _check(
        z.bits_down is None or 1 <= z.bits_down <= 8,
        "compression.bits_down",
        z.bits_down,
        "null or an integer in [1, 8]",
    )
    _check(0 < z.subsample <= 1, "compression.subsample", z.subsample, "a number in (0, 1]")
    _check(
        z.block >= 2 and z.block & (z.block - 1) == 0 and z.block <= 2**16,
        "compression.block",
        z.block,
        "a power of two in [2, 65536]",
    )
    _check(
        0 <= z.server_momentum < 1,
        "compression.server_momentum",
        z.server_momentum,
        "a number in [0, 1)",
    )
    _check(z.server_lr > 0, "compression.server_lr", z.server_lr, "a number > 0")
    _check(c.threads is None or c.threads >= 1, "threads", c.threads, "null or an integer >= 1")
    _check(
        c.trainer.chunk is None or c.trainer.chunk >= 1,
        "trainer.chunk",
        c.trainer.chunk,
        "null or an integer >= 1",
    )
    _check(
        c.state.memory_mb is None or c.state.memory_mb >= 0,
        "state.memory_mb",
        c.state.memory_mb,
        "null or an integer >= 0",
    )
    _check(0 <= c.seed <= MAX_SEED, "seed", c.seed, f"an integer in [0, {MAX_SEED}]")
    _check(c.checkpoint_every >= 1, "checkpoint_every", c.checkpoint_every, "an integer >= 1")

    kind = registry.DATASETS[d.name].input
    text_data = kind == "text"
    if registry.MODELS[m.name].input != kind:
        ok = ", ".join(n for n, x in registry.MODELS.items() if x.input == kind)
        raise ConfigError(f"model={m.name!r} does not fit dataset={d.name!r}; choose one of: {ok}")
    if p.name == "natural" and not text_data:
        raise ConfigError(
            f"partition=natural needs a dataset with natural clients (shakespeare), not "
            f"dataset={d.name!r}; choose one of: iid, dirichlet, shards"
        )
    return c


def validate_network(n: NetworkConfig) -> None:
    """Range checks of ``network.*`` (also used by ``afd report --network``)."""
    _choice("network", n.name, NETWORKS)
    _check_finite(n, "network.")
    for key in ("down_mbps", "up_mbps", "device_gflops"):
        v = getattr(n, key)
        _check(v > 0, f"network.{key}", v, "a number > 0")
    _check(n.latency_ms >= 0, "network.latency_ms", n.latency_ms, "a number >= 0")
    _check(n.spread >= 0, "network.spread", n.spread, "a number >= 0")
    _check(
        n.deadline_s is None or n.deadline_s > 0,
        "network.deadline_s",
        n.deadline_s,
        "null or a number > 0",
    )
    if n.deadline_s is not None and n.name == "none":
        raise ConfigError(
            f"network.deadline_s={n.deadline_s!r} needs a clock, not network='none'; "
            f"choose one of: {', '.join(x for x in NETWORKS if x != 'none')}"
        )


def _check_finite(node: Any, prefix: str = "") -> None:
    """Every float option must be a finite number: ``nan`` / ``inf`` pass most range checks
    (``inf > 0``) and would only surface as a diverged or endless run."""
    for f in fields(node):
        v = getattr(node, f.name)
        if is_dataclass(v):
            _check_finite(v, f"{prefix}{f.name}.")
        elif isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{prefix}{f.name}={v!r} is out of range; expected a finite number")


def _omegaconf_message(e: OmegaConfBaseException) -> str:
    """Turn OmegaConf's multi-line validation errors into one line naming the key."""
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0].strip()
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.structured(RootConfig)
        valid = node if not parent else OmegaConf.select(node, parent)
        choices = ", ".join(valid.keys()) if isinstance(valid, DictConfig) else ""
        return f"unknown config key {key!r}; valid keys here: {choices}"
    return f"{key}: {msg}"
