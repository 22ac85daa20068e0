"""Label skew: per class, client shares drawn from Dirichlet(alpha)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import registry
from ...options import Options, option
from .base import sorted_parts

DIRICHLET_MAX_ATTEMPTS = 1000


@dataclass
class DirichletOptions(Options):
    alpha: float = option(0.5, "concentration; smaller = more skewed labels per client", gt=0)


@registry.partition("dirichlet", options=DirichletOptions)
def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    opts: DirichletOptions,
    groups: np.ndarray | None = None,
    min_client_size: int = 1,
) -> list[np.ndarray]:
    """Per class, client shares ~ Dirichlet(alpha); redrawn until every client is big enough.

    Small alpha gives each client few dominant labels (strong skew); large alpha tends to iid.
    """
    alpha = opts.alpha
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
            return sorted_parts(parts)
    raise ValueError(
        f"Dirichlet(partition.alpha={alpha}) gave a client fewer than {min_client_size} "
        f"samples in {DIRICHLET_MAX_ATTEMPTS} draws; raise partition.alpha or lower "
        f"schedule.num_clients"
    )
