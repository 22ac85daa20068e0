"""The federated simulation: round loop, local client training, aggregation."""
