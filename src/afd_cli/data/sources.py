"""Old home of the data layer, split by concern into samples / cache / catalog / datasets.

Kept so that ``from afd_cli.data.sources import ...`` in existing code and branches still
works; new code imports from ``afd_cli.data`` or the module that owns the name.
"""

from __future__ import annotations

from .cache import MANIFEST, DataMissing
from .catalog import fetch, is_fetched, load, status
from .datasets import DATASETS, NAMES
from .datasets.shakespeare import (
    ALL_LETTERS,
    encode_text,
    parse_play,
    parse_plays,
    shakespeare_dataset,
)
from .datasets.shakespeare import encode_roles as _encode_roles
from .samples import FederatedDataset, Samples, TensorSamples, WindowSamples

SOURCES = {name: ds.source for name, ds in DATASETS.items()}
CACHE_FILE = {name: ds.cache_file for name, ds in DATASETS.items() if ds.cache_file}

__all__ = [
    "ALL_LETTERS",
    "CACHE_FILE",
    "MANIFEST",
    "NAMES",
    "SOURCES",
    "DataMissing",
    "FederatedDataset",
    "Samples",
    "TensorSamples",
    "WindowSamples",
    "_encode_roles",
    "encode_text",
    "fetch",
    "is_fetched",
    "load",
    "parse_play",
    "parse_plays",
    "shakespeare_dataset",
    "status",
]
