"""Fashion-MNIST (60k train / 10k test) from the Debian ``dataset-fashion-mnist`` package's
idx files."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ... import registry
from ..cache import save_torch
from ..images import cached_images, images_payload, read_idx
from ..spec import DatasetSpec, Source

NAME = "fashion_mnist"
CACHE_FILE = "fashion_mnist.pt"
SOURCE = Source(
    "apt",
    "dataset-fashion-mnist",
    "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
    "usr/share/datasets/fashion-mnist",
)


def convert(deb: Path, ds_dir: Path, tmp: Path) -> list[str]:
    root = tmp / "deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True)
    src = root / SOURCE.member
    parts = {
        key: read_idx(src / f"{stem}-ubyte.gz")
        for key, stem in [
            ("x_train", "train-images-idx3"),
            ("y_train", "train-labels-idx1"),
            ("x_test", "t10k-images-idx3"),
            ("y_test", "t10k-labels-idx1"),
        ]
    }
    payload = images_payload(parts["x_train"], parts["y_train"], parts["x_test"], parts["y_test"])
    save_torch(ds_dir / CACHE_FILE, payload)
    return [CACHE_FILE]


DATASET = registry.dataset(
    DatasetSpec(NAME, SOURCE, cached_images(NAME, CACHE_FILE), CACHE_FILE, convert)
)
