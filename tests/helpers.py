"""What the tests that drive the real ``afd`` command share: the command and a small run."""

import sys

AFD = [sys.executable, "-m", "afd_cli.cli"]
# digits + mlp with 10 clients: a few seconds a run, every code path of a real one
SMALL = [
    "dataset=digits",
    "model=mlp",
    "schedule.num_clients=10",
    "schedule.clients_per_round=3",
    "progress=plain",
]
