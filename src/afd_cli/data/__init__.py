"""Data layer: offline dataset sources, in-memory samples and federated partitioners.

Where things live: ``samples`` (in-memory tensors), ``cache`` (files, manifests, checksums),
``catalog`` (fetch / status / load by name), ``datasets/`` (one module per dataset),
``partitions/`` (one module per way of splitting a dataset over clients), ``population``
(datasets that generate their clients when sampled).
"""

from afd_cli.data.cache import DataDamaged, DataError, DataMissing
from afd_cli.data.catalog import fetch, is_fetched, load, status, verify
from afd_cli.data.partitions import partition, partition_table
from afd_cli.data.population import ClientParts, ClientSamples, Population
from afd_cli.data.samples import FederatedDataset, Samples, TensorSamples, WindowSamples


def names() -> tuple[str, ...]:
    """The registered datasets (``dataset=`` options)."""
    from afd_cli import registry

    return registry.names("dataset")


__all__ = [
    "names",
    "ClientParts",
    "ClientSamples",
    "Population",
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
