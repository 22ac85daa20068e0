"""Data layer: offline dataset sources, in-memory samples and federated partitioners."""

from afd_cli.data.partition import partition, partition_table
from afd_cli.data.sources import (
    NAMES,
    DataMissing,
    FederatedDataset,
    Samples,
    TensorSamples,
    WindowSamples,
    fetch,
    is_fetched,
    load,
    status,
)

__all__ = [
    "NAMES",
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
]
