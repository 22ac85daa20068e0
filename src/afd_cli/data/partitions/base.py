"""The partition contract: how a training set is split over the federation's clients.

A ``partition=`` option is a function ``(labels, num_clients, seed, options, groups) ->
list[np.ndarray]``: one sorted, disjoint int64 array of train indices per client, seeded only
by ``seed`` (the same arguments always give identical arrays). ``groups`` holds a natural
group id per sample where the dataset has them (Shakespeare's roles), else None; a partition
that needs them sets ``needs_groups = True`` on the function. Register it with
``@registry.partition(name, options=...)``. Every client must get at least one sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ... import registry


def sorted_parts(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def partition(
    name: str,
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    *,
    groups: np.ndarray | None = None,
    **values: Any,
) -> list[np.ndarray]:
    """Split by ``partition=name`` with its options ``values`` (others at their defaults);
    returns per-client sorted int64 train index arrays."""
    labels = np.asarray(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    plugin = registry.get("partition", name)
    opts = plugin.options(name=name, **registry.read_values("partition", name, values))
    if getattr(plugin.obj, "needs_groups", False):
        if groups is None:
            raise ValueError(
                f"partition={name} needs per-sample groups (only shakespeare has them)"
            )
        if len(groups) != len(labels):
            raise ValueError(f"{name}: {len(groups)} group ids for {len(labels)} samples")
    return plugin.obj(labels, num_clients, seed, opts, groups)


def partition_table(parts: list[np.ndarray], labels: np.ndarray, num_classes: int) -> pd.DataFrame:
    """Per-client sample count and label histogram (to report how skewed a split is)."""
    labels = np.asarray(labels)
    rows = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, p in enumerate(parts):
        rows[i] = np.bincount(labels[p], minlength=num_classes)[:num_classes]
    df = pd.DataFrame(rows, columns=[f"label_{c}" for c in range(num_classes)])
    df.insert(0, "n", np.array([len(p) for p in parts], dtype=np.int64))
    df.insert(0, "client", np.arange(len(parts), dtype=np.int64))
    return df
