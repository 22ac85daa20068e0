"""Generated clients: a dataset that makes its own clients (``dataset=synthetic``) is already
split; this option takes its first ``schedule.num_clients`` clients as they are.

Nothing is split and nothing is generated here: ``run.build`` asks the dataset's population
for :class:`~afd_cli.data.population.ClientParts`, which makes a client's indices only when
the client is sampled (a partition over all clients would generate all of them).
"""

from __future__ import annotations

import numpy as np

from ... import registry
from ...options import NoOptions, Options


@registry.partition("generated", options=NoOptions)
def generated(
    labels: np.ndarray, num_clients: int, seed: int, opts: Options, groups: np.ndarray | None
) -> list[np.ndarray]:
    """Never called with samples: a generated dataset's clients come from its population."""
    raise ValueError("it takes the clients of a dataset that generates them (dataset=synthetic)")


generated.needs_clients = True  # type: ignore[attr-defined]
