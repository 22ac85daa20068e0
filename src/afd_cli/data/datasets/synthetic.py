"""Synthetic(alpha, beta) of Li et al. (FedProx, MLSys 2020): any number of clients, each with
its own model and its own feature distribution, generated when sampled.

Client ``k`` (FedProx's ``data/synthetic_1_1/generate_synthetic.py``, whose draws
``tests/test_synthetic.py`` replays):

- ``u_k ~ N(0, alpha)``, ``B_k ~ N(0, beta)`` (numpy's scale: standard deviations);
- its model ``W_k ~ N(u_k, 1)`` [60 x 10], ``b_k ~ N(u_k, 1)`` [10];
- its features ``x ~ N(v_k, Sigma)``, ``v_k ~ N(B_k, 1)`` [60], ``Sigma = diag(j^-1.2)``;
- its labels ``y = argmax(softmax(x W_k + b_k))``;
- its size ``n_k = int(lognormal(4, 2)) + 50`` (at most ``max_samples``), of which
  ``int(0.9 n_k)`` train and the rest are held out (FedProx shuffles each client's iid
  samples and keeps the first 90% for training; here the held-out ones come from a second
  stream of the same client, so the test set is made without the training samples).

alpha sets how much the clients' models differ, beta how much their features do. Every draw
of client ``k`` comes from generators seeded with ``(seed, k)``, in the order above, and the
sizes from one stream whose ``k``-th draw is client ``k``'s: so a client is the same in a
federation of any size, and nothing is generated until a round samples it
(:mod:`afd_cli.data.population`). LEAF's ``data/synthetic`` is a different generator (shared
clusters of models); this is FedProx's, the one the FL literature calls Synthetic(alpha, beta).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import registry
from ...options import Options, option, require
from ..population import TRAIN, ClientSamples, Population
from ..samples import FederatedDataset
from ..spec import DatasetSpec, Source

NAME = "synthetic"
SOURCE = Source("bundled", "afd-cli", "", "afd_cli/data/datasets/synthetic.py")
DIM, CLASSES = 60, 10
_SIZES = 0x51_2E5  # the stream of client sizes, apart from every client's own stream
_CLIENT = 0xC11E_47  # a client's own stream


@dataclass
class SyntheticOptions(Options):
    """The ``dataset.*`` keys of Synthetic(alpha, beta); FedProx's values by default."""

    alpha: float = option(1.0, "spread of the clients' models: u_k ~ N(0, alpha)", ge=0)
    beta: float = option(1.0, "spread of the clients' features: B_k ~ N(0, beta)", ge=0)
    size_mean: float = option(4.0, "client sizes: int(lognormal(size_mean, size_sigma)) + ...")
    size_sigma: float = option(2.0, "... the log-normal's sigma (0 = all one size)", ge=0)
    min_samples: int = option(50, "... + min_samples, each client's least (FedProx: 50)", ge=2)
    max_samples: int | None = option(
        None, "cap on a client's samples (LEAF's generator: 1000); null = none", ge=2
    )
    test_fraction: float = option(
        0.1, "each client's held-out share (FedProx: the last 10%)", gt=0, lt=1
    )
    test_clients: int = option(
        1000, "the test set: the held-out samples of the first this many clients", ge=1
    )
    max_test_samples: int | None = option(
        None, "evaluate on a fixed seeded subset of this many test samples; null = all", ge=1
    )
    cache_mb: float = option(256, "generated clients kept in memory, MiB (speed only)", gt=0)

    def check(self, prefix: str) -> None:
        if self.max_samples is not None:
            require(
                self.max_samples >= self.min_samples,
                f"{prefix}max_samples",
                self.max_samples,
                f">= {prefix}min_samples ({self.min_samples})",
            )


def sigma_diagonal(dim: int = DIM) -> np.ndarray:
    """Sigma's diagonal, ``j^-1.2`` for ``j = 1 .. dim``."""
    return np.arange(1, dim + 1, dtype=np.float64) ** -1.2


def client_from_normals(
    alpha: float,
    beta: float,
    z_u: float,
    z_b: float,
    z_v: np.ndarray,
    z_w: np.ndarray,
    z_bias: np.ndarray,
    z_x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One client's (x, y) from its standard normal draws: FedProx's arithmetic, so the same
    draws give the same numbers (``numpy.random.normal(m, s) = m + s * z``)."""
    u = alpha * z_u
    v = beta * z_b + z_v
    w = u + z_w
    b = u + z_bias
    x = v + z_x * np.sqrt(sigma_diagonal(z_x.shape[1]))
    return x, np.argmax(x @ w + b, axis=1)


class Synthetic(Population):
    """The clients of Synthetic(alpha, beta) (seeded; see the module docstring)."""

    num_classes = CLASSES
    input_shape = (DIM,)

    def __init__(self, opts: SyntheticOptions, seed: int = 0) -> None:
        self.opts, self.seed = opts, seed
        self.test_fraction, self.test_clients = opts.test_fraction, opts.test_clients
        self.max_test_samples = opts.max_test_samples

    def draw_sizes(self, n: int) -> np.ndarray:
        o = self.opts
        z = np.random.default_rng([self.seed, _SIZES]).standard_normal(n)
        sizes = np.exp(o.size_mean + o.size_sigma * z).astype(np.int64) + o.min_samples
        return sizes if o.max_samples is None else np.minimum(sizes, o.max_samples)

    def generate(self, client: int, n: int, split: int = TRAIN) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, client, _CLIENT])
        z_u, z_b = rng.standard_normal(2)
        z_v = rng.standard_normal(DIM)
        z_w = rng.standard_normal((DIM, CLASSES))
        z_bias = rng.standard_normal(CLASSES)
        if split != TRAIN:  # the held-out samples: the client's second stream
            rng = np.random.default_rng([self.seed, client, _CLIENT, split])
        z_x = rng.standard_normal((n, DIM))
        a, b = self.opts.alpha, self.opts.beta
        return client_from_normals(a, b, z_u, z_b, z_v, z_w, z_bias, z_x)


def bundled_path() -> Path:
    return Path(__file__)


def load(data_dir: Path, opts: SyntheticOptions, seed: int = 0) -> FederatedDataset:
    """The population; its training set is generated per client when sampled. The test set
    here is the first ``test_clients`` clients'; a run of fewer clients uses theirs only
    (``run.build``)."""
    clients = Synthetic(opts, seed)
    return FederatedDataset(
        name=NAME,
        train=ClientSamples(clients, opts.cache_mb),
        test=clients.test(opts.test_clients),
        num_classes=CLASSES,
        input_shape=(DIM,),
        clients=clients,
    )


DATASET = registry.dataset(
    DatasetSpec(
        NAME,
        SOURCE,
        load,
        bundled_path=bundled_path,
        options=SyntheticOptions,
        input="vector",
        generated=True,
    )
)
