"""The dataset registry: one module per dataset, each exposing a ``DATASET`` spec.

Adding a dataset: write ``datasets/<name>.py`` (source, converter, loader) and list it here;
its config lives in ``conf/dataset/<name>.yaml``. The order here is the order of
``afd data list`` and ``afd data fetch all``.
"""

from __future__ import annotations

from ..spec import DatasetSpec
from . import digits, fashion_mnist, mnist, mnist5k, shakespeare

DATASETS: dict[str, DatasetSpec] = {
    m.DATASET.name: m.DATASET for m in (mnist, fashion_mnist, mnist5k, digits, shakespeare)
}
NAMES: tuple[str, ...] = tuple(DATASETS)
