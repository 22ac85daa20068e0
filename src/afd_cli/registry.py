"""Every name a plug-in option can take, once: ``strategy=``, ``compression=``, ``model=``,
``dataset=``, ``partition=``.

Validation (:mod:`afd_cli.config`), the builders (``strategies.build``, ``compression.build``,
``models.build``, ``data``) and ``conf/<group>/*.yaml`` all take their names from here, so a
name cannot be valid in one place and unknown in another (a test checks the yaml options).
Implementations are named as ``"module:attribute"`` and imported on first use: this module
stays torch-free, so checking a config (and refusing a bad one) takes no torch import.

Adding a plug-in: write its module, add one line here and one ``conf/<group>/<name>.yaml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Plugin:
    """Where an option's implementation lives and what kind of input it works on."""

    target: str  # "package.module:attribute", imported by :func:`load`
    input: str = "image"  # image | text: a model must fit its dataset's input
    # the keys of its group it reads (besides ``name``); None = all. The others cannot change
    # its results, so a resume or a report grouping ignores them (fedavg has no strategy.rate)
    reads: tuple[str, ...] | None = None


AFD_OPTIONS = ("rate", "score_init", "explore", "score_update")
SERVER_OPTIONS = ("server_momentum", "server_lr")  # momentum on the aggregate: any compressor
SPARSE_OPTIONS = ("values", "sparsity", "dense_below", "downlink", "first_copy", *SERVER_OPTIONS)
HADAMARD_OPTIONS = ("bits", "bits_down", "subsample", "block", "dense_below", "downlink")
DGC_OPTIONS = (
    "warmup_rounds",
    "momentum",
    "momentum_correction",
    "momentum_masking",
    "clip_norm",
    "sample_ratio",
)


STRATEGIES: dict[str, Plugin] = {
    "fedavg": Plugin("afd_cli.strategies.fedavg:FedAvg", reads=()),
    "fd": Plugin("afd_cli.strategies.fd:FederatedDropout", reads=("rate",)),
    "multi": Plugin("afd_cli.strategies.afd:MultiModelAFD", reads=AFD_OPTIONS),
    "single": Plugin("afd_cli.strategies.afd:SingleModelAFD", reads=AFD_OPTIONS),
}

COMPRESSIONS: dict[str, Plugin] = {
    "none": Plugin("afd_cli.compression.dense:DenseCompressor", reads=SERVER_OPTIONS),
    "fp16": Plugin("afd_cli.compression.dense:DenseCompressor", reads=SERVER_OPTIONS),
    "q8": Plugin("afd_cli.compression.dense:DenseCompressor", reads=SERVER_OPTIONS),
    "topk": Plugin("afd_cli.compression.topk:TopKCompressor", reads=SPARSE_OPTIONS),
    "dgc": Plugin("afd_cli.compression.dgc:DGCCompressor", reads=SPARSE_OPTIONS + DGC_OPTIONS),
    # Caldas et al.'s lossy codec: rotation, subsampling, stochastic quantisation
    "hadamard": Plugin(
        "afd_cli.compression.lossy:HadamardCompressor", reads=HADAMARD_OPTIONS + SERVER_OPTIONS
    ),
}
# the sparse compressors (compression.sparsity & co.; downlink deltas against per-client copies)
SPARSE_COMPRESSIONS: tuple[str, ...] = ("topk", "dgc")
# the compressors that can also compress the download (compression.downlink=true)
DOWNLINK_COMPRESSIONS: tuple[str, ...] = (*SPARSE_COMPRESSIONS, "hadamard")

MODELS: dict[str, Plugin] = {
    "cnn_mnist": Plugin("afd_cli.models:cnn_mnist", reads=()),
    "cnn_femnist": Plugin("afd_cli.models:cnn_femnist", reads=()),
    "mlp": Plugin("afd_cli.models:mlp", reads=("hidden",)),
    "char_lstm": Plugin(
        "afd_cli.models:char_lstm", input="text", reads=("embed_dim", "lstm_hidden", "lstm_layers")
    ),
}

# in the order of `afd data list` and `afd data fetch all`
DATASETS: dict[str, Plugin] = {
    "mnist": Plugin("afd_cli.data.datasets.mnist:DATASET"),
    "fashion_mnist": Plugin("afd_cli.data.datasets.fashion_mnist:DATASET"),
    "mnist5k": Plugin("afd_cli.data.datasets.mnist5k:DATASET"),
    "digits": Plugin("afd_cli.data.datasets.digits:DATASET"),
    "shakespeare": Plugin("afd_cli.data.datasets.shakespeare:DATASET", input="text"),
}

PARTITIONS: dict[str, Plugin] = {
    "iid": Plugin("afd_cli.data.partition:iid", reads=()),
    "dirichlet": Plugin("afd_cli.data.partition:dirichlet", reads=("alpha",)),
    "shards": Plugin("afd_cli.data.partition:shards", reads=("shards_per_client",)),
    # needs a dataset with per-sample groups (the text one)
    "natural": Plugin("afd_cli.data.partition:natural", reads=("min_samples", "max_samples")),
}

GROUPS: dict[str, dict[str, Plugin]] = {
    "strategy": STRATEGIES,
    "compression": COMPRESSIONS,
    "model": MODELS,
    "dataset": DATASETS,
    "partition": PARTITIONS,
}


def names(group: str) -> tuple[str, ...]:
    """The valid options of a config group, in registry order."""
    return tuple(GROUPS[group])


def unread(group: str, name: Any, keys: Iterable[str]) -> list[str]:
    """Those of ``keys`` (a group's keys, without the ``group.`` prefix) that option
    ``group=name`` does not read; none when the option is unknown or reads all."""
    plugin = GROUPS[group].get(str(name))
    if plugin is None or plugin.reads is None:
        return []
    return [k for k in keys if k != "name" and k not in plugin.reads]


def unread_keys(config: Mapping[str, Any]) -> list[str]:
    """Dotted keys of a (nested) config dict that its chosen plug-ins do not read, e.g.
    ``strategy.rate`` under ``strategy=fedavg``: they cannot change its results."""
    out = []
    for group in GROUPS:
        node = config.get(group)
        if isinstance(node, Mapping):
            out += [f"{group}.{k}" for k in unread(group, node.get("name"), node)]
    return out


def load(group: str, name: str) -> Any:
    """The implementation behind ``group=name`` (a class, function or spec object).

    An unknown name raises ``ValueError`` naming the valid choices (configs are validated
    first, so this only happens to code that builds plug-ins by hand).
    """
    table = GROUPS[group]
    if name not in table:
        raise ValueError(f"{group}={name!r} is not valid; choose one of: {', '.join(table)}")
    module, attr = table[name].target.split(":")
    return getattr(importlib.import_module(module), attr)
