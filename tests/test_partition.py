"""Partitioners: determinism, disjoint coverage, skew behaviour and the natural-split rules."""

from __future__ import annotations

import numpy as np
import pytest

from afd_cli.data import partition, partition_table
from afd_cli.data.partitions.dirichlet import DirichletOptions, dirichlet


def _labels(n_per_class: int = 100, classes: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(classes), n_per_class)).astype(np.int64)


def _assert_disjoint_sorted(parts: list[np.ndarray]) -> np.ndarray:
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)
    return allidx


@pytest.mark.parametrize(
    "name,kwargs",
    [("iid", {}), ("dirichlet", {"alpha": 0.3}), ("shards", {"shards_per_client": 2})],
)
def test_label_partitioners_deterministic_and_cover(name: str, kwargs: dict) -> None:
    labels = _labels()
    a = partition(name, labels, 10, seed=3, **kwargs)
    b = partition(name, labels, 10, seed=3, **kwargs)
    c = partition(name, labels, 10, seed=4, **kwargs)
    assert len(a) == 10
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    allidx = _assert_disjoint_sorted(a)
    assert np.array_equal(np.sort(allidx), np.arange(len(labels)))


def test_iid_sizes_nearly_equal() -> None:
    parts = partition("iid", _labels(), 7, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def _mean_max_share(labels: np.ndarray, alpha: float, seed: int) -> float:
    parts = partition("dirichlet", labels, 20, seed=seed, alpha=alpha)
    table = partition_table(parts, labels, 10)
    counts = table[[f"label_{c}" for c in range(10)]].to_numpy()
    return float((counts.max(1) / np.maximum(counts.sum(1), 1)).mean())


def test_dirichlet_skew_decreases_with_alpha() -> None:
    labels = _labels(n_per_class=500)
    skew = [np.mean([_mean_max_share(labels, a, s) for s in range(3)]) for a in (0.05, 1.0, 100.0)]
    assert skew[0] > skew[1] > skew[2]
    assert skew[2] < 0.2  # near iid: the top label holds about 1/10 of a client


def test_dirichlet_min_client_size_and_error() -> None:
    labels = _labels()
    parts = dirichlet(labels, 10, 0, DirichletOptions("dirichlet", 0.1), None, min_client_size=20)
    assert min(len(p) for p in parts) >= 20
    # the message names the keys a user can change (issue 24: it once named a key that
    # does not exist)
    with pytest.raises(ValueError, match=r"partition\.alpha=0\.01.*schedule\.num_clients"):
        dirichlet(labels, 10, 0, DirichletOptions("dirichlet", 0.01), None, min_client_size=99)


def test_shards_limit_labels_per_client() -> None:
    labels = _labels(n_per_class=60)  # 600 samples, 40 shards of 15: no shard straddles
    parts = partition("shards", labels, 20, seed=1, shards_per_client=2)
    for p in parts:
        assert len(p) == 30
        assert len(np.unique(labels[p])) <= 2


def test_shards_too_few_samples() -> None:
    with pytest.raises(ValueError, match="fewer than"):
        partition("shards", np.zeros(5, dtype=np.int64), 3, seed=0, shards_per_client=2)


def _groups() -> np.ndarray:
    sizes = [5, 50, 120, 300, 80, 200, 10]  # group g has sizes[g] samples, interleaved
    g = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(0).permutation(g)


def test_natural_min_and_max_samples() -> None:
    groups = _groups()
    labels = np.zeros(len(groups), dtype=np.int64)
    parts = partition("natural", labels, 100, seed=0, groups=groups, min_samples=80)
    assert [len(p) for p in parts] == [120, 300, 80, 200]  # all eligible, group-id order
    for p, g in zip(parts, [2, 3, 4, 5], strict=True):
        assert np.all(groups[p] == g)
    capped = partition(
        "natural", labels, 100, seed=0, groups=groups, min_samples=80, max_samples=100
    )
    assert [len(p) for p in capped] == [100, 100, 80, 100]
    for full, cap in zip(parts, capped, strict=True):
        assert np.isin(cap, full).all()
    _assert_disjoint_sorted(capped)


def test_natural_chooses_seeded_subset() -> None:
    groups = _groups()
    labels = np.zeros(len(groups), dtype=np.int64)
    a = partition("natural", labels, 2, seed=5, groups=groups, min_samples=50)
    b = partition("natural", labels, 2, seed=5, groups=groups, min_samples=50)
    assert len(a) == 2
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    ids = [int(groups[p[0]]) for p in a]
    assert ids == sorted(ids) and all(groups[p].min() == groups[p].max() for p in a)
    picks = {
        tuple(
            int(groups[p[0]])
            for p in partition("natural", labels, 2, s, groups=groups, min_samples=50)
        )
        for s in range(20)
    }
    assert len(picks) > 1


def test_natural_needs_groups_and_unknown_name() -> None:
    with pytest.raises(ValueError, match="groups"):
        partition("natural", np.zeros(10), 2, seed=0)
    with pytest.raises(ValueError, match="is not valid; choose one of"):
        partition("bogus", np.zeros(10), 2, seed=0)


def test_partition_table_columns() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    df = partition_table([np.array([0, 1]), np.array([2, 3, 4, 5])], labels, 3)
    assert list(df.columns) == ["client", "n", "label_0", "label_1", "label_2"]
    assert df["n"].tolist() == [2, 4]
    assert df.loc[1, ["label_0", "label_1", "label_2"]].tolist() == [0, 1, 3]
