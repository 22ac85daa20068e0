"""Natural clients: one client per natural group of the dataset (a Shakespeare role)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import registry
from ...options import Options, option
from .base import sorted_parts


@dataclass
class NaturalOptions(Options):
    min_samples: int = option(1000, "smallest group kept as a client, in samples", ge=1)
    max_samples: int | None = option(
        None, "cap on one client's samples (a seeded subsample); null = none", ge=1
    )


@registry.partition("natural", options=NaturalOptions)
def natural(
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    opts: NaturalOptions,
    groups: np.ndarray | None,
) -> list[np.ndarray]:
    """One client per natural group with >= min_samples samples.

    With more eligible groups than num_clients, a seeded choice of num_clients of them (kept in
    group-id order); with fewer, all of them, so the caller must read the actual count. A client
    larger than max_samples keeps a seeded random max_samples of its samples.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError("natural: groups must be a 1-D array of group ids per sample")
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(counts >= opts.min_samples)
    rng = np.random.default_rng(seed)
    if len(eligible) > num_clients:
        eligible = np.sort(rng.choice(eligible, size=num_clients, replace=False))
    order = np.argsort(inverse, kind="stable")
    ends = np.cumsum(counts)
    starts = ends - counts
    parts: list[np.ndarray] = []
    for g in eligible:
        idx = order[starts[g] : ends[g]]
        if opts.max_samples is not None and len(idx) > opts.max_samples:
            idx = rng.choice(idx, size=opts.max_samples, replace=False)
        parts.append(idx)
    return sorted_parts(parts)


natural.needs_groups = True  # type: ignore[attr-defined]
