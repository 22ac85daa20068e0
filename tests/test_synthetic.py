"""dataset=synthetic: FedProx's Synthetic(alpha, beta) generator, replayed on FedProx's own
draws; clients made lazily as a pure function of (seed, client); an honest test set; runs that
resume exactly and cost what they sample."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import AFD

from afd_cli import compose, data
from afd_cli.config import ConfigError, validate
from afd_cli.data.datasets.synthetic import (
    CLASSES,
    DIM,
    Synthetic,
    SyntheticOptions,
    client_from_normals,
)
from afd_cli.data.population import SHIFT, TEST, ClientParts, ClientSamples
from afd_cli.metrics import COLUMNS, TIMING_COLUMNS


def opts(**values) -> SyntheticOptions:
    return SyntheticOptions(name="synthetic", **values)


def fedprox_generate_synthetic(alpha: float, beta: float, num_user: int, seed: int):
    """FedProx's generator, as written in litian96/FedProx (commit d2a4501),
    data/synthetic_1_1/generate_synthetic.py lines 14-67 (``generate_synthetic``, with its
    ``softmax``), only NUM_USER made an argument, the prints dropped and the seed set (their
    ``main`` leaves numpy's global seed unset)."""
    np.random.seed(seed)
    NUM_USER = num_user  # noqa: N806

    def softmax(x):
        ex = np.exp(x)
        sum_ex = np.sum(np.exp(x))
        return ex / sum_ex

    dimension = 60
    NUM_CLASS = 10  # noqa: N806
    samples_per_user = np.random.lognormal(4, 2, (NUM_USER)).astype(int) + 50
    X_split = [[] for _ in range(NUM_USER)]  # noqa: N806
    y_split = [[] for _ in range(NUM_USER)]
    mean_W = np.random.normal(0, alpha, NUM_USER)  # noqa: N806
    mean_b = mean_W
    B = np.random.normal(0, beta, NUM_USER)  # noqa: N806
    mean_x = np.zeros((NUM_USER, dimension))
    diagonal = np.zeros(dimension)
    for j in range(dimension):
        diagonal[j] = np.power((j + 1), -1.2)
    cov_x = np.diag(diagonal)
    for i in range(NUM_USER):
        mean_x[i] = np.random.normal(B[i], 1, dimension)
    for i in range(NUM_USER):
        W = np.random.normal(mean_W[i], 1, (dimension, NUM_CLASS))  # noqa: N806
        b = np.random.normal(mean_b[i], 1, NUM_CLASS)
        xx = np.random.multivariate_normal(mean_x[i], cov_x, samples_per_user[i])
        yy = np.zeros(samples_per_user[i])
        for j in range(samples_per_user[i]):
            tmp = np.dot(xx[j], W) + b
            yy[j] = np.argmax(softmax(tmp))
        X_split[i] = xx
        y_split[i] = yy
    return samples_per_user, X_split, y_split


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 0.5), (0.0, 0.0)])
def test_the_generator_is_fedproxs_on_fedproxs_draws(alpha: float, beta: float) -> None:
    """The same standard normals, drawn in FedProx's order (numpy's ``normal(m, s)`` is
    ``m + s * z``, ``lognormal`` is ``exp`` of it, and ``multivariate_normal`` of a diagonal
    covariance is ``mean + z * sqrt(diag)``), give the same sizes and features bit for bit,
    and the same labels."""
    users, seed = 6, 931231
    sizes, xs, ys = fedprox_generate_synthetic(alpha, beta, users, seed)
    rs = np.random.RandomState(seed)
    my_sizes = np.exp(4 + 2 * rs.standard_normal(users)).astype(int) + 50
    z_u, z_b = rs.standard_normal(users), rs.standard_normal(users)
    z_v = [rs.standard_normal(DIM) for _ in range(users)]
    np.testing.assert_array_equal(my_sizes, sizes)
    for i in range(users):
        z_w = rs.standard_normal((DIM, CLASSES))
        z_bias = rs.standard_normal(CLASSES)
        z_x = rs.standard_normal((sizes[i], DIM))
        x, y = client_from_normals(alpha, beta, z_u[i], z_b[i], z_v[i], z_w, z_bias, z_x)
        np.testing.assert_array_equal(x, xs[i])
        np.testing.assert_array_equal(y, ys[i])


def test_statistics_match_the_definition() -> None:
    """Over many clients: log(n - 50) ~ N(4, 2); within one big client, features have mean
    v_k and variance j^-1.2 per dimension; labels cover the classes but each client favours
    a few (its own model), which is what makes the federation non-iid."""
    pop = Synthetic(opts(), seed=0)
    z = np.log(pop.sizes(20000) - 50 + 0.5)  # int() floors: +0.5 recentres it
    assert abs(z.mean() - 4) < 0.05 and abs(z.std() - 2) < 0.05
    x, y = pop.generate(3, 20000)
    var = x.var(axis=0)
    np.testing.assert_allclose(var, np.arange(1, DIM + 1) ** -1.2, rtol=0.05)
    shares = np.sort(np.bincount(y, minlength=CLASSES))[::-1] / len(y)
    assert shares[:3].sum() > 0.6  # a client's own model makes a few labels dominant
    pooled = np.concatenate([pop.generate(c, 200)[1] for c in range(300)])
    assert (np.bincount(pooled, minlength=CLASSES) > 0).all()


def test_a_client_is_a_pure_function_of_seed_and_id() -> None:
    a = Synthetic(opts(), seed=0)
    b = Synthetic(opts(), seed=0)
    b.sizes(1_000_000)  # a far bigger federation first: client 123 is the same client
    np.testing.assert_array_equal(a.sizes(200), b.sizes(200))
    for ta, tb in zip(a.train(123), b.train(123), strict=True):
        assert torch.equal(ta, tb)
    assert not torch.equal(a.train(123)[0], Synthetic(opts(), seed=1).train(123)[0])
    # train: int(0.9 n) samples of the client's model; held out: the same model, another stream
    n = int(a.sizes(124)[123])
    x_tr, y_tr = a.train(123)
    x_te, y_te = a.generate(123, n - len(y_tr), TEST)
    assert len(y_tr) == int(0.9 * n) and len(y_te) == n - int(0.9 * n)
    np.testing.assert_array_equal(x_tr.numpy(), a.generate(123, len(y_tr))[0].astype(np.float32))
    assert not np.isin(x_te[:, 0], x_tr[:, 0].double().numpy()).any()


def test_test_set_is_the_held_out_part_of_the_first_clients() -> None:
    pop = Synthetic(opts(test_clients=5), seed=0)
    sizes = pop.sizes(5)
    held = [pop.generate(c, int(sizes[c]) - int(0.9 * sizes[c]), TEST)[1] for c in range(5)]
    assert torch.equal(pop.test(100).labels, torch.from_numpy(np.concatenate(held)))
    assert len(pop.test(3)) < len(pop.test(5)) == len(pop.test(100))  # fewer clients: theirs
    capped = Synthetic(opts(test_clients=5, max_test_samples=7), seed=0).test(100)
    assert len(capped) == 7


def test_parts_and_samples_are_made_only_for_the_clients_asked_for() -> None:
    pop = Synthetic(opts(), seed=0)
    parts = pop.parts(1_000_000)
    assert isinstance(parts, ClientParts) and len(parts) == 1_000_000
    assert parts.num_train.nbytes == 8_000_000  # the one per-client array
    train = ClientSamples(pop, cache_mb=1)
    assert train.cached() == []
    idx = parts[999_999]
    assert int(idx[0]) >> SHIFT == 999_999 and len(idx) == parts.num_train[999_999]
    local, pos = train.local(idx)
    assert train.cached() == [999_999]
    # a batch across clients (the batched trainer's) reads each one's own samples
    mixed = torch.cat([parts[5][:3], parts[7][:2], parts[5][3:4]])
    x, y = train.batch(mixed)
    x5, x7 = train.client(5), train.client(7)
    assert torch.equal(x[:3], x5.x[:3]) and torch.equal(x[3:5], x7.x[:2])
    assert torch.equal(y[5], x5.labels[3])
    # the cache stays within its budget (the most recent client always kept)
    for c in range(20):
        train.client(c)
    assert (
        sum(s.x.numel() * 4 + s.labels.numel() * 8 for s in map(train.client, train.cached()))
        < 2**20 + 10**6
    )


def test_synthetic_takes_only_its_own_clients_and_vector_models() -> None:
    def check(*overrides: str) -> None:
        validate(compose.compose(list(overrides)))

    check("dataset=synthetic")
    check("dataset=synthetic", "model=mlp")
    with pytest.raises(ConfigError, match="partition=generated"):
        check("dataset=synthetic", "partition=iid")
    with pytest.raises(ConfigError, match="generates them"):
        check("dataset=digits", "partition=generated")
    with pytest.raises(ConfigError, match="does not fit"):
        check("dataset=synthetic", "model=cnn_mnist")


def test_a_million_client_round_generates_only_the_sampled_clients(tmp_path) -> None:
    from afd_cli.federated.round import sample_clients
    from afd_cli.run import feasible
    from afd_cli.run.build import build

    cfg = validate(
        compose.compose(
            [
                "dataset=synthetic",
                "schedule.num_clients=1000000",
                "schedule.clients_per_round=5",
                "dataset.test_clients=20",
                "dataset.max_samples=300",
                "compression=dgc",
                "threads=1",
            ]
        )
    )
    feasible.check(cfg)  # counts the clients' samples without making them
    sim = build(cfg)
    sim.round(0)
    sampled = set(sample_clients(cfg.seed, 0, 1_000_000, 5))
    assert set(sim.train.cached()) <= sampled | {0}  # 0: the example batch build reads
    holders = {c for ns in sim.store._spaces for c in sim.store.clients(ns)}
    assert holders and holders <= sampled  # client state: the sampled clients' only
    assert len(sim.test) == len(
        data.load("synthetic", tmp_path, test_clients=20, max_samples=300).test
    )


def test_clients_left_without_a_training_sample_are_refused() -> None:
    from afd_cli.run import feasible

    cfg = validate(
        compose.compose(
            [
                "dataset=synthetic",
                "dataset.min_samples=2",
                "dataset.size_sigma=0",
                "dataset.size_mean=-9",
                "dataset.test_fraction=0.6",
            ]
        )
    )
    with pytest.raises(ConfigError, match="without a training sample"):
        feasible.check(cfg)


SMALL = [
    "dataset=synthetic",
    "schedule.num_clients=100000",
    "schedule.clients_per_round=4",
    "dataset.test_clients=30",
    "dataset.max_samples=200",
    "compression=dgc",
    "compression.warmup_rounds=0",
    "progress=none",
    "threads=1",
]


def _afd(cwd, *args: str) -> None:
    p = subprocess.run([*AFD, *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert p.returncode == 0, p.stderr


@pytest.mark.slow  # three afd processes: ~20 s on 2 shared cores
def test_a_synthetic_run_resumes_exactly(tmp_path) -> None:
    _afd(tmp_path, "run", *SMALL, "schedule.rounds=4", f"hydra.run.dir={tmp_path / 's'}")
    _afd(tmp_path, "run", *SMALL, "schedule.rounds=2", f"hydra.run.dir={tmp_path / 'r'}")
    _afd(tmp_path, "resume", str(tmp_path / "r"), "schedule.rounds=4")
    keep = [c for c in COLUMNS if c not in TIMING_COLUMNS]
    straight = pd.read_csv(tmp_path / "s" / "metrics.csv")[keep]
    pd.testing.assert_frame_equal(straight, pd.read_csv(tmp_path / "r" / "metrics.csv")[keep])
    assert (tmp_path / "s" / "clients.csv").read_bytes() == (
        tmp_path / "r" / "clients.csv"
    ).read_bytes()
    part = pd.read_csv(tmp_path / "s" / "partition.csv")
    assert list(part.columns) == ["client", "n"] and len(part) == 100_000
    assert len(pd.read_csv(tmp_path / "s" / "clients.csv")) == 4 * 4  # rows: sampled clients only


def test_the_batched_trainer_reads_generated_clients_as_the_sequential_one() -> None:
    """The batched trainer (the GPU's) cuts every step across the chunk's clients: its batches
    span clients, which :meth:`ClientSamples.batch` serves from each client's own samples."""
    from afd_cli.run.build import build

    def weights(trainer: str) -> dict[str, torch.Tensor]:
        cfg = validate(
            compose.compose(
                [
                    "dataset=synthetic",
                    "model=mlp",
                    "model.hidden=16",
                    "dataset.max_samples=120",
                    "dataset.test_clients=5",
                    "schedule.clients_per_round=6",
                    f"trainer={trainer}",
                    "threads=1",
                ]
            )
        )
        sim = build(cfg)
        sim.round(0)
        return {k: w.clone() for k, w in sim.weights.items()}

    a, b = weights("sequential"), weights("batched")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
