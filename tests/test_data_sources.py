"""Data sources: samples indexing, Shakespeare parsing/windows, digits, cache and fetch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from afd_cli import registry
from afd_cli.data import DataDamaged, DataMissing, fetch, load, names, status
from afd_cli.data.cache import MANIFEST
from afd_cli.data.datasets import shakespeare as shk
from afd_cli.data.datasets.shakespeare import ALL_LETTERS
from afd_cli.data.samples import TensorSamples, WindowSamples

CACHE = Path.home() / ".cache" / "afd-cli"


def _cached(name: str) -> bool:
    return (CACHE / name / MANIFEST).is_file()


def test_window_samples_batch_returns_right_chars() -> None:
    text = "abcdefghij"
    ids = torch.tensor([ALL_LETTERS.index(c) for c in text], dtype=torch.uint8)
    ws = WindowSamples(ids, torch.tensor([0, 2, 5]), seq_len=4)
    assert len(ws) == 3
    x, y = ws.batch(torch.tensor([2, 0]))
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert x.shape == (2, 4)
    decode = lambda row: "".join(ALL_LETTERS[int(i)] for i in row)  # noqa: E731
    assert [decode(r) for r in x] == ["fghi", "abcd"]
    assert decode(y) == "je"
    assert decode(ws.labels) == "egj"
    with pytest.raises(ValueError):
        WindowSamples(ids, torch.tensor([6]), seq_len=4)  # target would be past the end


def test_tensor_samples_batch_and_to() -> None:
    ts = TensorSamples(torch.arange(12.0).reshape(6, 1, 1, 2), torch.arange(6))
    x, y = ts.batch(torch.tensor([4, 1]))
    assert y.tolist() == [4, 1] and x[0, 0, 0].tolist() == [8.0, 9.0]
    assert len(ts.to("cpu")) == 6


# Trailing double spaces (markdown line breaks) are written as ~ to keep the source clean.
PLAY = """# A Tiny Play

## ACT I

### SCENE I. A room.

_Enter ALPHA and BETA_

**ALPHA**~
Good morrow, friend;~
_\\[Aside]_~
how fares the day?

**BETA**~
Well\u2014and well again. __\\[Sings]_~

_Exit ALPHA_

A stray line outside any speech.

**ALPHA**~
[Aside to BETA]_~
Farewell.
""".replace("~\n", "  \n")  # markdown line breaks


def test_parse_play_handmade_snippet(tmp_path: Path) -> None:
    path = tmp_path / "tiny.md"
    assert "**ALPHA**  \n" in PLAY
    path.write_text(PLAY, encoding="utf-8")
    roles = shk.parse_play(path.read_text(encoding="utf-8"))
    assert roles == {
        "ALPHA": ["Good morrow, friend;", "how fares the day?", "Farewell."],
        "BETA": ["Well\u2014and well again."],
    }
    groups = shk.parse_plays({"tiny": PLAY})
    assert groups[0] == ("tiny/ALPHA", "Good morrow, friend;\nhow fares the day?\nFarewell.")
    codes = shk.encode_text(groups[1][1])
    assert "".join(ALL_LETTERS[i] for i in codes) == "Well-and well again."
    assert shk.encode_text("$").tolist() == [ALL_LETTERS.index(" ")]


def test_shakespeare_windows_split_per_role() -> None:
    roles = [("p/A", "a" * 30), ("p/B", "b" * 5), ("p/C", "c" * 15)]
    enc = shk.encode_roles(roles)
    ds = shk.shakespeare_dataset(
        enc["text"], enc["lengths"].numpy(), enc["names"], seq_len=4, stride=1, test_fraction=0.2
    )
    # role A: 26 windows -> 21 train + 5 test; B: 1 -> 1 + 0; C: 11 -> 9 + 2
    assert len(ds.train) == 31 and len(ds.test) == 7
    assert np.bincount(ds.groups).tolist() == [21, 1, 9]
    assert ds.num_classes == 80 and ds.input_shape == (4,)
    for s in (ds.train, ds.test):
        x, y = s.batch(torch.arange(len(s)))
        # a window never crosses a role: all its chars and its target are the same letter
        assert torch.all(x == y[:, None])
    # chronological: every test window starts after every train window of its role
    tr_a = ds.train.starts[torch.from_numpy(ds.groups == 0)]
    assert int(tr_a.max()) < int(ds.test.starts[:5].min())
    capped = shk.shakespeare_dataset(
        enc["text"], enc["lengths"].numpy(), enc["names"], seq_len=4, max_test_samples=3
    )
    assert len(capped.test) == 3


def test_data_missing_message(tmp_path: Path) -> None:
    with pytest.raises(DataMissing) as exc:
        load("mnist", tmp_path)
    msg = str(exc.value)
    assert msg == (
        f"dataset 'mnist' is not in {tmp_path}; "
        f"fetch it with: afd data fetch mnist --data-dir {tmp_path}"
    )
    assert "\n" not in msg
    with pytest.raises(ValueError, match="dataset='cifar' is not valid; choose one of"):
        load("cifar", tmp_path)


def test_digits_load_shapes_and_normalisation(tmp_path: Path) -> None:
    ds = load("digits", tmp_path, seed=1, test_fraction=0.2, max_test_samples=100)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.train) == 1797 - 359  # round(0.2 * n_c) per class sums to 359
    assert len(ds.test) == 100
    x = ds.train.x
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    assert ds.train.labels.dtype == torch.int64
    assert np.bincount(ds.train.labels.numpy()).min() > 130  # stratified
    again = load("digits", tmp_path, seed=1, test_fraction=0.2, max_test_samples=100)
    assert torch.equal(again.test.x, ds.test.x)


def test_status_lists_every_name(tmp_path: Path) -> None:
    rows = status(tmp_path)
    assert [r["name"] for r in rows] == list(names())
    by = {r["name"]: r for r in rows}
    assert by["digits"]["present"] is True
    assert by["mnist"]["present"] is False and by["mnist"]["checksum_ok"] is None
    assert set(rows[0]) == {"name", "present", "size_bytes", "checksum_ok", "path"}


def test_fetch_and_load_mnist5k(tmp_path: Path) -> None:
    logs: list[str] = []
    path = fetch("mnist5k", tmp_path, log=logs.append)
    assert path == tmp_path / "mnist5k"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # temp dirs cleaned
    fetch("mnist5k", tmp_path, log=logs.append)
    assert "already present" in logs[-1]
    row = {r["name"]: r for r in status(tmp_path)}["mnist5k"]
    assert row["present"] and row["checksum_ok"] is True and row["size_bytes"] > 0
    ds = load("mnist5k", tmp_path, seed=0, test_fraction=0.1)
    assert len(ds.train) == 4500 and len(ds.test) == 500
    assert ds.input_shape == (1, 28, 28)
    assert np.bincount(ds.test.labels.numpy()).tolist() == [50] * 10
    # a corrupted cache file is reported, not trusted
    cache_file = tmp_path / "mnist5k" / registry.load("dataset", "mnist5k").cache_file
    data = bytearray(cache_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cache_file.write_bytes(bytes(data))
    row = {r["name"]: r for r in status(tmp_path)}["mnist5k"]
    assert row["checksum_ok"] is False
    with pytest.raises(DataDamaged, match="mnist5k.pt differs from the fetched file"):
        load("mnist5k", tmp_path)
    # the command the error names repairs it
    fetch("mnist5k", tmp_path, log=logs.append)
    assert "downloading" in " ".join(logs[-3:])
    assert len(load("mnist5k", tmp_path, seed=0, test_fraction=0.1).train) == 4500


@pytest.mark.skipif(not _cached("mnist"), reason="mnist not fetched into ~/.cache/afd-cli")
def test_mnist_from_cache() -> None:
    ds = load("mnist", CACHE)
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    assert ds.train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # official MNIST order


@pytest.mark.skipif(not _cached("fashion_mnist"), reason="fashion_mnist not fetched")
def test_fashion_from_cache() -> None:
    ds = load("fashion_mnist", CACHE)
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    assert ds.train.labels[:5].tolist() == [9, 0, 0, 3, 0]


@pytest.mark.skipif(not _cached("shakespeare"), reason="shakespeare not fetched")
def test_shakespeare_from_cache() -> None:
    ds = load("shakespeare", CACHE, seq_len=80, stride=1)
    assert ds.groups is not None and ds.group_names is not None
    assert len(ds.group_names) == 1426
    assert len(ds.groups) == len(ds.train)
    assert int(ds.groups.min()) >= 0 and int(ds.groups.max()) < 1426
    assert len(ds.test) > 0 and int(ds.train.labels.max()) < 80
