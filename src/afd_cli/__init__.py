"""afd-cli: federated learning with sub-models and compressed updates, measured in bytes."""

__version__ = "0.1.0"
