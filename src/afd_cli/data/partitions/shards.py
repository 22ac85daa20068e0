"""McMahan et al.'s pathological non-IID split: label-sorted shards dealt to clients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import registry
from ...options import Options, option
from .base import sorted_parts


@dataclass
class ShardsOptions(Options):
    shards_per_client: int = option(2, "label-sorted shards dealt to each client", ge=1)


@registry.partition("shards", options=ShardsOptions)
def shards(
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    opts: ShardsOptions,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Sort by label, cut into equal shards, deal shards_per_client to each client.

    A client sees at most shards_per_client labels when class sizes are multiples of the shard
    size (as with balanced data); otherwise a shard may straddle two labels.
    """
    per_client = opts.shards_per_client
    num_shards = num_clients * per_client
    if len(labels) < num_shards:
        raise ValueError(
            f"shards: {len(labels)} samples are fewer than {num_clients} clients x "
            f"{per_client} shards = {num_shards}"
        )
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, num_shards)
    deal = np.random.default_rng(seed).permutation(num_shards).reshape(num_clients, -1)
    return sorted_parts([np.concatenate([pieces[s] for s in row]) for row in deal])
