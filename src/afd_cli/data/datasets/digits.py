"""scikit-learn's 8x8 digits (1,797 images): bundled with scikit-learn, so nothing is fetched
or cached; the loader splits it, stratified and seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ... import registry
from ..images import image_dataset
from ..samples import FederatedDataset
from ..spec import DatasetSpec, ImageOptions, Source

NAME = "digits"
SOURCE = Source("bundled", "scikit-learn", "", "sklearn/datasets/data/digits.csv.gz")


def bundled_path() -> Path:
    import sklearn

    return Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"


def load(data_dir: Path, opts: ImageOptions, seed: int = 0) -> FederatedDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    payload = {
        "x_train": torch.from_numpy(d.images.astype(np.uint8)),
        "y_train": torch.from_numpy(d.target.astype(np.int64)),
    }
    return image_dataset(NAME, payload, opts, seed)


DATASET = registry.dataset(DatasetSpec(NAME, SOURCE, load, bundled_path=bundled_path))
