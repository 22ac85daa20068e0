"""What the image datasets share: uint8 payloads in the cache, a seeded stratified split when
the source has no test set, and one scalar mean/std normalisation taken from the train set."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import load_cache
from .samples import FederatedDataset, TensorSamples, cap_test
from .spec import ImageOptions, Loader


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped): big-endian magic, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path.name}: not a uint8 idx file")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).copy()
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path.name}: header says {dims}, found {data.size} bytes")
    return data.reshape(dims)


def images_payload(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray | None, y_test: np.ndarray | None
) -> dict[str, torch.Tensor]:
    """The cache file's content: uint8 images and int64 labels (test set only if the source
    has one)."""
    out = {
        "x_train": torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.uint8)),
        "y_train": torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
    }
    if x_test is not None and y_test is not None:
        out["x_test"] = torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.uint8))
        out["y_test"] = torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64))
    return out


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping class shares: round(n_c * test_fraction) of each class to test."""
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[: int(round(len(idx) * test_fraction))])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask).astype(np.int64), test_idx


def normalised(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [N,1,H,W] scaled by the train set's scalar mean/std (test uses the same)."""
    xt = x_train.to(torch.float32).unsqueeze(1)
    xs = x_test.to(torch.float32).unsqueeze(1)
    mean = xt.mean(dtype=torch.float64)
    std = xt.std().double()
    m, s = float(mean), float(std) if float(std) > 0 else 1.0
    xt.sub_(m).div_(s)
    xs.sub_(m).div_(s)
    return xt, xs


def image_dataset(
    name: str, payload: dict[str, Any], opts: ImageOptions, seed: int = 0
) -> FederatedDataset:
    """A ten-class image dataset from an ``images_payload``; split it if it has no test set."""
    x_all, y_all = payload["x_train"], payload["y_train"]
    if "x_test" in payload:
        x_tr, y_tr, x_te, y_te = x_all, y_all, payload["x_test"], payload["y_test"]
    else:
        tr_idx, te_idx = stratified_split(y_all.numpy(), opts.test_fraction, seed)
        tr, te = torch.from_numpy(tr_idx), torch.from_numpy(te_idx)
        x_tr, y_tr, x_te, y_te = x_all[tr], y_all[tr], x_all[te], y_all[te]
    xt, xs = normalised(x_tr, x_te)
    test = cap_test(TensorSamples(xs, y_te), opts.max_test_samples, seed)
    return FederatedDataset(
        name=name,
        train=TensorSamples(xt, y_tr),
        test=test,
        num_classes=10,
        input_shape=tuple(xt.shape[1:]),
    )


def cached_images(name: str, cache_file: str) -> Loader:
    """The loader of an image dataset whose payload is the cache file ``cache_file``."""

    def load(data_dir: Path, opts: ImageOptions, seed: int = 0) -> FederatedDataset:
        return image_dataset(name, load_cache(name, data_dir, cache_file), opts, seed)

    return load
