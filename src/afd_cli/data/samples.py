"""In-memory samples: every dataset lives in memory as tensors and batches are cut by
tensor indexing, never by a DataLoader (the federated loop draws many tiny client batches)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .population import Population


class Samples:
    """A set of samples held as tensors; ``labels`` is the target of every sample."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Samples:
        raise NotImplementedError

    def local(self, idx: torch.Tensor) -> tuple[Samples, torch.Tensor]:
        """Where one client's batches are read: (samples, indices into them). Here all in
        one set, as given; a generated dataset answers with the client's own samples."""
        return self, idx

    def subset(self, idx: torch.Tensor) -> Samples:
        """Samples restricted to ``idx`` (used to cap the test set)."""
        raise NotImplementedError


class TensorSamples(Samples):
    """Images (or any fixed-size inputs): x float32 [N, ...], y int64 [N]."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        self.x = x
        self.labels = y.long()

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.x.device)
        return self.x[idx], self.labels[idx]

    def to(self, device: torch.device | str) -> TensorSamples:
        return TensorSamples(self.x.to(device), self.labels.to(device))

    def subset(self, idx: torch.Tensor) -> TensorSamples:
        return TensorSamples(self.x[idx], self.labels[idx])


class WindowSamples(Samples):
    """Next-character samples over one shared text: x = text[s : s+L], y = text[s+L].

    Storing only start offsets keeps memory at 8 bytes a sample instead of L bytes.
    """

    def __init__(self, text: torch.Tensor, starts: torch.Tensor, seq_len: int) -> None:
        self.text = text
        self.starts = starts.long()
        self.seq_len = int(seq_len)
        if self.starts.numel() and int(self.starts.max()) + self.seq_len >= text.shape[0]:
            raise ValueError("a window runs past the end of the text")
        self._offsets = torch.arange(self.seq_len, device=text.device)
        self.labels = text[self.starts + self.seq_len].long()

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.starts[idx.to(self.starts.device)]
        x = self.text[s[:, None] + self._offsets].long()
        return x, self.labels[idx.to(self.labels.device)]

    def to(self, device: torch.device | str) -> WindowSamples:
        return WindowSamples(self.text.to(device), self.starts.to(device), self.seq_len)

    def subset(self, idx: torch.Tensor) -> WindowSamples:
        return WindowSamples(self.text, self.starts[idx], self.seq_len)


@dataclass
class FederatedDataset:
    """A dataset ready for federated training: train/test samples plus optional natural
    groups, or, for a dataset that generates its clients, the ``clients`` that make them
    (then ``train`` is made per client when sampled: :mod:`.population`)."""

    name: str
    train: Samples
    test: Samples
    num_classes: int
    input_shape: tuple[int, ...]
    groups: np.ndarray | None = None
    group_names: list[str] | None = None
    clients: Population | None = None


def cap_test(test: Samples, max_test_samples: int | None, seed: int) -> Samples:
    """A seeded random subset of at most ``max_test_samples`` test samples (order kept)."""
    if max_test_samples is None or len(test) <= max_test_samples:
        return test
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(test), size=max_test_samples, replace=False))
    return test.subset(torch.from_numpy(keep.astype(np.int64)))
