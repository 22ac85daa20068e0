"""The run's configuration: which keys exist, what they may hold, and the check of a composed one.

The plug-in groups (``strategy``, ``compression``, ``model``, ``dataset``, ``partition``) take
their keys from the chosen plug-in's options dataclass (:mod:`afd_cli.options`,
:mod:`afd_cli.registry`); the other groups -- ``schedule``, ``trainer``, ``network``,
``state`` -- and the top-level keys are declared here, the same way. Network profiles are data:
one yaml each under ``conf/network/``.

Hydra composes the yaml under ``conf/`` on the schema of :func:`register_schema`;
:func:`validate` then builds a typed :class:`RootConfig`, raising :class:`ConfigError` with one
line that names the key and the valid values.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import options as opt
from . import registry
from .options import ConfigError, Options, option

__all__ = ["CONF_DIR", "ConfigError", "RootConfig", "register_schema", "validate"]

# conf/ beside src/ (the project checkout); AFD_CONF_DIR points elsewhere
CONF_DIR = Path(os.environ.get("AFD_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))
# numpy's legacy seeding and torch.Generator.manual_seed both take any value in [0, 2**32 - 1];
# outside it a run failed after loading the data with a message about the partition
# (seed=-1) or an int64 overflow (a 23-digit seed), and had already made its run directory.
MAX_SEED = 2**32 - 1
_POSITIVE = {"ge": 1, "expected": "an integer >= 1"}


@dataclass
class ScheduleConfig:
    """McMahan et al.'s MNIST setting by default: 100 clients, 10 per round, E=1, B=10."""

    rounds: int = option(10, "rounds to run", **_POSITIVE)
    num_clients: int = option(100, "clients in the federation", **_POSITIVE)
    clients_per_round: int = option(10, "clients sampled per round", **_POSITIVE)
    local_epochs: int = option(1, "local epochs per round (E)", **_POSITIVE)
    batch_size: int = option(10, "local minibatch size (B)", **_POSITIVE)
    lr: float = option(0.05, "local SGD learning rate", gt=0)
    lr_warmup_rounds: int = option(
        0,
        "rounds of linear lr warm-up, round r at lr * (r + 1) / (W + 1); 0 = off. Lin et al. "
        "warm up 5 epochs = 5 * num_clients / (clients_per_round * local_epochs) rounds",
        ge=0,
    )
    momentum: float = option(0.0, "local SGD momentum", ge=0, lt=1)
    weight_decay: float = option(0.0, "local SGD weight decay", ge=0)
    eval_every: int = option(1, "rounds between evaluations of the global model", **_POSITIVE)
    eval_batch_size: int = option(128, "evaluation batch (speed only)", **_POSITIVE)

    def check(self, prefix: str) -> None:
        opt.require(
            self.clients_per_round <= self.num_clients,
            f"{prefix}clients_per_round",
            self.clients_per_round,
            f"<= schedule.num_clients ({self.num_clients})",
        )


@dataclass
class TrainerConfig:
    """How a round's clients are trained; the numbers do not depend on it (tests check that)."""

    name: str = option(
        "auto",
        "auto: batched on CUDA, sequential on CPU",
        choices=("auto", "sequential", "batched"),
    )
    chunk: int | None = option(
        None, "batched: clients trained together; null = as many as fit", ge=1
    )


@dataclass
class NetworkConfig:
    """The simulated network and device clock (:mod:`afd_cli.network`); ``none`` = no clock.

    The defaults are the ``lte`` profile; conf/network/lte.yaml says where they come from.
    """

    name: str = "lte"  # a profile: conf/network/<name>.yaml
    down_mbps: float = option(29.5, "median client's download rate, 10^6 bit/s", gt=0)
    up_mbps: float = option(7.6, "median client's upload rate, 10^6 bit/s", gt=0)
    latency_ms: float = option(28.0, "round-trip time, charged once per message", ge=0)
    device_gflops: float = option(10.0, "median client's local-training speed, GFLOP/s", gt=0)
    spread: float = option(0.5, "log-normal sigma of link and device speed (0 = equal)", ge=0)
    deadline_s: float | None = option(None, "drop clients that finish later; null = off", gt=0)
    compute: bool = option(
        True,
        "charge local training time (FLOPs / device speed); false: latency + bytes / bandwidth "
        "only, the AFD walkthrough's time model",
    )

    def check(self, prefix: str) -> None:
        profiles = network_names()
        if self.name not in profiles:
            raise ConfigError(
                f"network={self.name!r} is not valid; choose one of: {', '.join(profiles)}"
            )
        if self.deadline_s is not None and self.name == "none":
            raise ConfigError(
                f"network.deadline_s={self.deadline_s!r} needs a clock, not network='none'; "
                f"choose one of: {', '.join(x for x in profiles if x != 'none')}"
            )


@dataclass
class StateConfig:
    """Where per-client state lives (DGC u/v, downlink copies, Multi-Model AFD score maps)."""

    # 1024 leaves room for a round's working memory: 1,000 cnn_mnist DGC clients, 250 a
    # round, stay under 4 GiB of RSS (docs: client state).
    memory_mb: int | None = option(
        1024, "MiB kept in memory, the rest spills to state/; null = no limit", ge=0
    )
    dtype: str = option(
        "fp32", "precision compressor buffers are kept in", choices=("fp32", "fp16", "bf16")
    )
    # on by default: +0.2 s on a 140 MB DGC checkpoint, ~3% of a round (docs: client state)
    fsync: bool = option(
        True, "flush checkpoint.pt and the state files it names to the disk (power cuts)"
    )


@dataclass
class RootConfig:
    """A validated run config: each plug-in group holds its plug-in's own options."""

    dataset: Options = field(default_factory=lambda: options_of("dataset"))
    partition: Options = field(default_factory=lambda: options_of("partition"))
    model: Options = field(default_factory=lambda: options_of("model"))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    strategy: Options = field(default_factory=lambda: options_of("strategy"))
    compression: Options = field(default_factory=lambda: options_of("compression"))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    state: StateConfig = field(default_factory=StateConfig)
    seed: int = option(0, "seed of every random draw", ge=0, le=MAX_SEED)
    device: str = option("auto", "auto: CUDA when visible", choices=("auto", "cpu", "cuda"))
    precision: str = option(
        "fp32",
        "bf16 autocasts training and evaluation; auto: bf16 where native",
        choices=("auto", "fp32", "bf16"),
    )
    threads: int | None = option(None, "torch CPU threads; null = all cores", **_POSITIVE)
    data_dir: str = option(
        "~/.cache/afd-cli", "dataset cache; conf/config.yaml reads $AFD_DATA_DIR"
    )
    progress: str = option(
        "auto",
        "rich on a terminal, plain lines otherwise",
        choices=("auto", "rich", "plain", "none"),
    )
    resume: bool = option(True, "continue from the run directory's checkpoint (afd resume sets it)")
    checkpoint_every: int = option(1, "rounds between checkpoints", **_POSITIVE)
    on_nonfinite: str = option(
        "stop",
        "a non-finite loss or update: stop the run, or drop that client",
        choices=("stop", "skip_client"),
    )
    on_degenerate: str = option(
        "warn",
        "a train loss 1000x round 1's or more: warn and go on, or stop the run there",
        choices=("warn", "stop"),
    )


PLUGIN_GROUPS = registry.GROUPS
NOUN = {"compression": "compressor"}  # compression=dgc is "a compressor"
FIXED_GROUPS = {
    "schedule": ScheduleConfig,
    "trainer": TrainerConfig,
    "network": NetworkConfig,
    "state": StateConfig,
}


# the option of each plug-in group that conf/config.yaml picks (and a config without one gets)
DEFAULTS = {
    "dataset": "mnist",
    "partition": "dirichlet",
    "model": "cnn_mnist",
    "strategy": "fedavg",
    "compression": "none",
}


def options_of(group: str, name: str | None = None, **values: Any) -> Options:
    """The options of ``group=name`` with ``values`` set (the others at their defaults)."""
    name = name or DEFAULTS[group]
    cls = registry.get(group, name).options
    return cls(name=name, **values)


def network_names() -> tuple[str, ...]:
    """The network profiles: ``conf/network/<name>.yaml`` (``none`` = no clock)."""
    return tuple(sorted(p.stem for p in (CONF_DIR / "network").glob("*.yaml")))


@cache
def root_schema() -> type:
    """The compose-time schema: plug-in groups as the union of their plug-ins' keys (all
    unset until set; :func:`registry.schema`), the fixed groups and top-level keys typed with
    their defaults."""
    spec: list[tuple[str, Any, Any]] = []
    for f in fields(RootConfig):
        if f.name in PLUGIN_GROUPS:
            node = registry.schema(f.name)
            spec.append((f.name, node, field(default_factory=node)))
        else:
            spec.append((f.name, opt.hints(RootConfig)[f.name], f))
    cls = make_dataclass("RootSchema", [(n, t, _plain(f)) for n, t, f in spec])
    cls.__module__ = __name__  # pickled configs (joblib sweeps) find it again by name
    return cls


def __getattr__(name: str) -> Any:
    if name == "RootSchema":
        return root_schema()
    raise AttributeError(name)


def _plain(f: Any) -> Any:
    """A schema field without our metadata (OmegaConf only needs the default)."""
    if not hasattr(f, "metadata"):
        return f
    if f.default is not MISSING:
        return field(default=f.default)
    return field(default_factory=f.default_factory)


def register_schema() -> None:
    """Put the schema first in the defaults list (``afd_schema``): every key exists and is typed
    at compose time, so ``compression.sparsity=0.99`` works with any compression option."""
    from hydra.core.config_store import ConfigStore

    for group in PLUGIN_GROUPS:
        registry.plugins(group)  # other packages' yaml into the ConfigStore
    ConfigStore.instance().store(name="afd_schema", node=root_schema())


def validate(cfg: DictConfig | dict[str, Any]) -> RootConfig:
    """Merge a composed config onto the schema and check every key; return the typed config."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    user = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("hydra", "experiment")])
    try:
        merged = OmegaConf.merge(OmegaConf.structured(root_schema()), user)
    except OmegaConfBaseException as e:
        raise ConfigError(omegaconf_message(e)) from None
    raw: dict[str, Any] = OmegaConf.to_container(merged, resolve=True, throw_on_missing=False)  # type: ignore[assignment]
    built: dict[str, Any] = {}
    for f in fields(RootConfig):
        value = raw.get(f.name)
        if f.name in PLUGIN_GROUPS:
            built[f.name] = _plugin_options(f.name, value)
        elif f.name in FIXED_GROUPS:
            built[f.name] = FIXED_GROUPS[f.name](**value)
        else:
            built[f.name] = value
    c = RootConfig(**built)
    opt.check(c, "")
    _check_fit(c)
    return c


def _plugin_options(group: str, node: dict[str, Any]) -> Options:
    """The chosen plug-in's options from its group's composed node: the keys it reads as set
    (its defaults where unset); every set key's value is checked, read or not, and a *strict*
    key set for a plug-in that does not read it is an error."""
    name = node.get("name")
    name = DEFAULTS[group] if name in (None, registry.UNSET) else name
    try:
        plugin = registry.get(group, name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    reads = set(plugin.reads)
    values = {k: v for k, v in node.items() if k in reads and v != "???"}
    for key, value in node.items():
        if key == "name" or value == "???" or key in reads:
            continue
        owner, f = registry.declaring(group, key)  # type: ignore[misc]
        opt.check_value(f"{group}.{key}", value, f, owner)
        if f.metadata.get("strict") and value != opt.default_of(owner, key):
            ok = registry.readers(group, key)
            raise ConfigError(
                f"{group}.{key}={_show(value)} needs a {NOUN.get(group, group)} that reads it, not "
                f"{group}={name!r}; choose one of: {', '.join(ok)}"
            )
    return plugin.options(name=name, **values)


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_fit(c: RootConfig) -> None:
    """A model must take its dataset's input; a partition by natural groups needs a dataset
    that has them; a dataset that generates its clients takes only ``partition=generated``
    (any other would split all of its samples, i.e. generate every client)."""
    data = registry.get("dataset", c.dataset.name)
    model = registry.get("model", c.model.name)
    if not registry.takes(model, data.input):
        models = registry.plugins("model").items()
        ok = ", ".join(n for n, p in models if registry.takes(p, data.input))
        raise ConfigError(
            f"model={c.model.name!r} does not fit dataset={c.dataset.name!r}; choose one of: {ok}"
        )
    part = registry.get("partition", c.partition.name)
    if _needs_groups(part) and not data.obj.groups:
        ok = [n for n, p in registry.plugins("partition").items() if not _needs_groups(p)]
        with_groups = [n for n, p in registry.plugins("dataset").items() if p.obj.groups]
        raise ConfigError(
            f"partition={c.partition.name} needs a dataset with natural clients "
            f"({', '.join(with_groups)}), not dataset={c.dataset.name!r}; choose one of: "
            f"{', '.join(ok)}"
        )
    made = [n for n, p in registry.plugins("partition").items() if _needs_clients(p)]
    if _needs_clients(part) and not data.obj.generated:
        gen = [n for n, p in registry.plugins("dataset").items() if p.obj.generated]
        raise ConfigError(
            f"partition={c.partition.name} takes the clients of a dataset that generates them "
            f"({', '.join(gen)}), not dataset={c.dataset.name!r}; choose a partition of: "
            f"{', '.join(n for n in registry.names('partition') if n not in made)}"
        )
    if data.obj.generated and not _needs_clients(part):
        raise ConfigError(
            f"dataset={c.dataset.name} generates its clients when sampled; "
            f"partition={c.partition.name} would split all of them; choose partition="
            f"{' or '.join(made)}"
        )


def _needs_clients(partition: registry.Plugin) -> bool:
    return bool(getattr(partition.obj, "needs_clients", False))


def _needs_groups(partition: registry.Plugin) -> bool:
    return bool(getattr(partition.obj, "needs_groups", False))


def as_dict(cfg: RootConfig) -> dict[str, Any]:
    """The config as plain nested data (each plug-in group: only the keys its plug-in reads)."""
    return asdict(cfg)


def omegaconf_message(e: OmegaConfBaseException) -> str:
    """One line out of OmegaConf's multi-line errors, naming the key (and, for an unknown key,
    the valid keys there)."""
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0].strip()
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        return unknown_key_message(key)
    return f"{key}: {msg}"


def unknown_key_message(key: str) -> str:
    """``unknown config key 'strategy.rat'; valid keys of strategy: ...`` (every key any
    plug-in of the group reads, or the top-level keys)."""
    parent = key.rpartition(".")[0]
    node = OmegaConf.structured(root_schema())
    valid = OmegaConf.select(node, parent) if parent else node
    choices = ", ".join(valid.keys()) if isinstance(valid, DictConfig) else ""
    return f"unknown config key {key!r}; valid keys{f' of {parent}' if parent else ''}: {choices}"
