"""Split a training set over federated clients (iid, Dirichlet, shards, natural groups).

Every partitioner is seeded with its own numpy Generator, so the same arguments always give
identical index arrays; each returns sorted, disjoint int64 arrays of train indices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import registry
from ..config import PartitionConfig as Defaults

DIRICHLET_MAX_ATTEMPTS = 1000


def _sorted(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Seeded permutation cut into num_clients nearly equal parts."""
    perm = np.random.default_rng(seed).permutation(n)
    return _sorted(np.array_split(perm, num_clients))


def dirichlet(
    labels: np.ndarray, num_clients: int, seed: int, alpha: float, min_client_size: int = 1
) -> list[np.ndarray]:
    """Per class, client shares ~ Dirichlet(alpha); redrawn until every client is big enough.

    Small alpha gives each client few dominant labels (strong skew); large alpha tends to iid.
    """
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    if len(labels) < num_clients * min_client_size:
        raise ValueError(
            f"{len(labels)} samples cannot give {num_clients} clients {min_client_size} each"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    for _ in range(DIRICHLET_MAX_ATTEMPTS):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                buckets[k].append(chunk)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) >= min_client_size:
            return _sorted(parts)
    raise ValueError(
        f"dirichlet(alpha={alpha}) gave a client fewer than {min_client_size} samples in "
        f"{DIRICHLET_MAX_ATTEMPTS} draws; raise alpha or lower min_client_size / num_clients"
    )


def shards(
    labels: np.ndarray, num_clients: int, seed: int, shards_per_client: int = 2
) -> list[np.ndarray]:
    """McMahan et al.: sort by label, cut into equal shards, deal shards_per_client to each.

    A client sees at most shards_per_client labels when class sizes are multiples of the shard
    size (as with balanced data); otherwise a shard may straddle two labels.
    """
    num_shards = num_clients * shards_per_client
    if len(labels) < num_shards:
        raise ValueError(
            f"shards: {len(labels)} samples are fewer than {num_clients} clients x "
            f"{shards_per_client} shards = {num_shards}"
        )
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, num_shards)
    deal = np.random.default_rng(seed).permutation(num_shards).reshape(num_clients, -1)
    return _sorted([np.concatenate([pieces[s] for s in row]) for row in deal])


def natural(
    groups: np.ndarray,
    num_clients: int,
    seed: int,
    min_samples: int = 1000,
    max_samples: int | None = None,
) -> list[np.ndarray]:
    """One client per natural group (e.g. a Shakespeare role) with >= min_samples samples.

    With more eligible groups than num_clients, a seeded choice of num_clients of them (kept in
    group-id order); with fewer, all of them, so the caller must read the actual count. A client
    larger than max_samples keeps a seeded random max_samples of its samples.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError("natural: groups must be a 1-D array of group ids per sample")
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(counts >= min_samples)
    rng = np.random.default_rng(seed)
    if len(eligible) > num_clients:
        eligible = np.sort(rng.choice(eligible, size=num_clients, replace=False))
    order = np.argsort(inverse, kind="stable")
    ends = np.cumsum(counts)
    starts = ends - counts
    parts: list[np.ndarray] = []
    for g in eligible:
        idx = order[starts[g] : ends[g]]
        if max_samples is not None and len(idx) > max_samples:
            idx = rng.choice(idx, size=max_samples, replace=False)
        parts.append(idx)
    return _sorted(parts)


def partition(
    name: str,
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    *,
    alpha: float = Defaults.alpha,
    shards_per_client: int = Defaults.shards_per_client,
    groups: np.ndarray | None = None,
    min_samples: int = Defaults.min_samples,
    max_samples: int | None = Defaults.max_samples,
    min_client_size: int = 1,
) -> list[np.ndarray]:
    """Dispatch to a partitioner by name; returns per-client sorted int64 train index arrays."""
    labels = np.asarray(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if name == "iid":
        return iid(len(labels), num_clients, seed)
    if name == "dirichlet":
        return dirichlet(labels, num_clients, seed, alpha, min_client_size)
    if name == "shards":
        return shards(labels, num_clients, seed, shards_per_client)
    if name == "natural":
        if groups is None:
            raise ValueError(
                "natural partition needs per-sample groups (only shakespeare has them)"
            )
        if len(groups) != len(labels):
            raise ValueError(f"natural: {len(groups)} group ids for {len(labels)} samples")
        return natural(groups, num_clients, seed, min_samples, max_samples)
    valid = ", ".join(registry.names("partition"))
    raise ValueError(f"partition={name!r} is not valid; choose one of: {valid}")


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
