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

DATASETS = ("mnist", "fashion_mnist", "mnist5k", "digits", "shakespeare")
PARTITIONS = ("iid", "dirichlet", "shards", "natural")
MODELS = ("cnn_mnist", "cnn_femnist", "mlp", "char_lstm")
STRATEGIES = ("fedavg", "fd", "multi", "single")
COMPRESSIONS = ("none", "fp16", "q8", "topk", "dgc")
SPARSE_COMPRESSIONS = ("topk", "dgc")  # the only ones that read compression.* options
DEVICES = ("auto", "cpu", "cuda")
TRAINERS = ("auto", "sequential", "batched")
PRECISIONS = ("fp32", "bf16")
ON_NONFINITE = ("stop", "skip_client")
STATE_DTYPES = ("fp32", "fp16", "bf16")
TEXT_DATASETS = ("shakespeare",)
TEXT_MODELS = ("char_lstm",)
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
    name: str = "fedavg"
    rate: float = 0.0  # fraction of units dropped per droppable layer, in [0, 1)
    # AFD (multi | single), Bouacida et al. 2021, Algorithms 1-2 (see afd_cli.scoremap):
    score_init: float = 0.0  # initial score (sampling weight) of every unit, >= 0 (0 = paper)
    explore: float = 0.0  # share of each layer's budget always drawn uniformly (0 = paper)
    score_update: str = "relative"  # relative: (l_prev - l)/l_prev (paper) ; absolute: l_prev - l


@dataclass
class CompressionConfig:
    name: str = "none"
    values: str = "fp32"  # value precision of sparse payloads: fp32 | fp16
    sparsity: float = 0.999  # target fraction of entries NOT sent (topk, dgc)
    warmup_rounds: int = 4  # dgc: exponential warm-up 75%, 93.75%, ... over these rounds
    momentum: float = 0.9  # dgc: momentum of the correction buffer u
    momentum_correction: bool = True
    momentum_masking: bool = True
    clip_norm: float | None = None  # dgc: global clip c; each client clips to c * N^-1/2
    sample_ratio: float = 0.01  # dgc: fraction of entries sampled to estimate the threshold
    dense_below: int = 1024  # tensors with fewer entries go dense (biases)
    downlink: bool = False  # also compress server -> client (sparse diff vs client's copy)


@dataclass
class TrainerConfig:
    """How a round's clients are trained; the numbers do not depend on it (tests check that)."""

    name: str = "auto"  # auto: batched on CUDA, sequential on CPU | sequential | batched
    chunk: int | None = None  # batched: clients trained together; null = as many as fit


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
    state: StateConfig = field(default_factory=StateConfig)
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 (autocast in local training and evaluation)
    threads: int | None = None  # torch CPU threads; null = torch's default (all cores)
    data_dir: str = "~/.cache/afd-cli"
    progress: str = "auto"  # auto | rich | plain | none
    resume: bool = True  # continue a run dir that has a checkpoint instead of starting over
    checkpoint_every: int = 1
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

    _choice("dataset", c.dataset.name, DATASETS)
    _choice("partition", c.partition.name, PARTITIONS)
    _choice("model", c.model.name, MODELS)
    _choice("strategy", c.strategy.name, STRATEGIES)
    _choice("compression", c.compression.name, COMPRESSIONS)
    _choice("device", c.device, DEVICES)
    _choice("trainer", c.trainer.name, TRAINERS)
    _choice("precision", c.precision, PRECISIONS)
    _choice("progress", c.progress, ("auto", "rich", "plain", "none"))
    _choice("on_nonfinite", c.on_nonfinite, ON_NONFINITE)
    _choice("compression.values", c.compression.values, ("fp32", "fp16"))
    _choice("strategy.score_update", c.strategy.score_update, ("relative", "absolute"))
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
    if z.downlink and z.name not in SPARSE_COMPRESSIONS:
        # dense codecs already use one format both ways; silently ignoring the flag would
        # leave a researcher believing the download was sparsified
        raise ConfigError(
            f"compression.downlink=true needs a sparse compressor, not compression={z.name!r}; "
            f"choose one of: {', '.join(SPARSE_COMPRESSIONS)}"
        )
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

    text_data, text_model = d.name in TEXT_DATASETS, m.name in TEXT_MODELS
    if text_data != text_model:
        fits = TEXT_MODELS if text_data else tuple(x for x in MODELS if x not in TEXT_MODELS)
        ok = ", ".join(fits)
        raise ConfigError(f"model={m.name!r} does not fit dataset={d.name!r}; choose one of: {ok}")
    if p.name == "natural" and not text_data:
        raise ConfigError(
            f"partition=natural needs a dataset with natural clients (shakespeare), not "
            f"dataset={d.name!r}; choose one of: iid, dirichlet, shards"
        )
    return c


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
