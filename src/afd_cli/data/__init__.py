"""Data layer: offline dataset sources, in-memory samples and federated partitioners.

Where things live: ``samples`` (in-memory tensors), ``cache`` (files, manifests, checksums),
``catalog`` (fetch / status / load by name), ``datasets/`` (one module per dataset, listed in
its ``__init__``), ``partition`` (splitting a dataset over clients).
"""

from afd_cli.data.cache import DataDamaged, DataError, DataMissing
from afd_cli.data.catalog import fetch, is_fetched, load, status, verify
from afd_cli.data.datasets import NAMES
from afd_cli.data.partition import partition, partition_table
from afd_cli.data.samples import FederatedDataset, Samples, TensorSamples, WindowSamples

__all__ = [
    "NAMES",
    "DataDamaged",
    "DataError",
    "DataMissing",
    "FederatedDataset",
    "Samples",
    "TensorSamples",
    "WindowSamples",
    "fetch",
    "is_fetched",
    "load",
    "partition",
    "partition_table",
    "status",
    "verify",
]
