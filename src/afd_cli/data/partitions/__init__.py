"""Splitting a training set over federated clients: one module per ``partition=`` option.

The contract and the dispatcher are in :mod:`.base`.
"""

from .base import partition, partition_table

__all__ = ["partition", "partition_table"]
