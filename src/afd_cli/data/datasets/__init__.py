"""The datasets: one module per dataset, each exposing a ``DATASET`` spec.

Adding a dataset: write ``datasets/<name>.py`` (source, converter, loader), list it in
:data:`afd_cli.registry.DATASETS` and add ``conf/dataset/<name>.yaml``. The registry's order is
the order of ``afd data list`` and ``afd data fetch all``.
"""

from __future__ import annotations

from ... import registry
from ..spec import DatasetSpec

NAMES: tuple[str, ...] = registry.names("dataset")
DATASETS: dict[str, DatasetSpec] = {name: registry.load("dataset", name) for name in NAMES}
