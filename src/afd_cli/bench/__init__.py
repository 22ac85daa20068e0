"""``make benchmark``: figures, not pass/fail (several minutes on 2 CPU cores).

(a) seconds per round of ``afd run`` (``experiment.run`` in a real run directory: local
    training, codecs, aggregation, test evaluation every round, CSV and checkpoint) next to
    the loop a researcher writes by hand for the same work -- standard NCHW fp32 tensors, one
    client module reused with ``load_state_dict`` per client, FedAvg over ``state_dict``s, the
    10k test images evaluated every round in batches of 1000 -- on the same clients, batches
    and initial weights, as a ratio measured in the same process;
(b) seconds per round and peak RSS of fedavg, single and single+dgc, each in a subprocess
    (no evaluation);
(c) codec sizes against the entropy bound (sparse at 99% / 99.9%, dense fp32 / fp16 / q8);
(d) CUDA only: client-samples/s of the sequential and the batched trainer at C = 10, 50, 100
    clients (cnn_femnist, B=10, 200 samples per client) next to one big batch of the same
    total size through one model, with peak GPU memory; then (b) on the GPU;
(e) the same trainers on CPU (cnn_mnist and mlp, 10 clients x 600 samples): the measurement
    behind ``trainer=auto`` choosing sequential on CPU;
(f) checkpoint cost in ``experiment=paper_mnist compression=dgc`` once all 100 clients hold
    DGC state (filled directly): seconds and MB of the incremental checkpoint after a round,
    next to the round itself (with evaluation) and to a full checkpoint with every client's
    state inline (what every checkpoint was before the client-state store);
(g) cross-device scale (:mod:`.scale`): Synthetic(1, 1) at 1,000, 10,000 and 100,000 clients,
    100 per round, DGC: seconds per round and peak RSS of a real run, each size in its own
    process (``make benchmark-scale``).

(h) torchrun (:mod:`.torchrun`, not in the default list): CPU seconds, seconds per round and
    checkpoint seconds of 2 processes against 1, DGC on MNIST (``--only h --model mlp``).

Setup of (a), (b): MNIST iid, 100 clients, 10 per round, E=1, B=10, lr 0.05. Times are
medians over ``--repeats`` rounds after one warm-up round. Results are printed and written to
``outputs/benchmarks/<time>.json``.

    python -m afd_cli.bench [--repeats 3] [--out outputs/benchmarks] [--only a,b,c,d,e,f,g,h]
"""

from __future__ import annotations

import os
import sys

import torch
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 120)
ROUND_CONFIGS = (("fedavg", "none"), ("single", "none"), ("single", "dgc"))
TRAINER_CLIENTS = (10, 50, 100)


def _config(strategy: str = "fedavg", compression: str = "none", device: str = "cpu"):
    """The benchmark's setting, composed and checked like ``afd run``'s (plug-in defaults)."""
    from ..compose import compose
    from ..config import validate

    return validate(
        compose(
            [
                "dataset=mnist",
                "partition=iid",
                "model=cnn_mnist",
                "schedule.num_clients=100",
                "schedule.clients_per_round=10",
                "schedule.local_epochs=1",
                "schedule.batch_size=10",
                "schedule.lr=0.05",
                f"strategy={strategy}",
                f"compression={compression}",
                f"device={device}",
                "progress=none",
                f"data_dir={os.environ.get('AFD_DATA_DIR', '~/.cache/afd-cli')}",
            ]
        )
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
