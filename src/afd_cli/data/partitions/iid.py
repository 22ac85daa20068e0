"""IID: a seeded permutation cut into nearly equal parts."""

from __future__ import annotations

import numpy as np

from ... import registry
from ...options import NoOptions, Options
from .base import sorted_parts


@registry.partition("iid", options=NoOptions)
def iid(
    labels: np.ndarray, num_clients: int, seed: int, opts: Options, groups: np.ndarray | None
) -> list[np.ndarray]:
    """Seeded permutation cut into num_clients nearly equal parts."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    return sorted_parts(np.array_split(perm, num_clients))
