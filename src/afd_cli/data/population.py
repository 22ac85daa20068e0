"""Generated clients: a dataset whose clients are made one at a time, when they are sampled.

A federation of 10^5-10^6 clients holds far more samples than memory (Synthetic(1, 1) at
100,000 clients: ~45 M samples of 60 floats, 11 GB), yet a round trains only the ~100 it
samples. So a :class:`Population` generates a client's data as a pure function of (its seed,
the client id) and nothing is made for a client until it is asked for:

- :class:`ClientSamples` is the training set: a sample's index is ``client << 32 | local``, so
  indices need no table of offsets over all clients, and a batch is read from the client's
  generated tensors, kept in a small least-recently-used cache (bounded in bytes);
- :class:`ClientParts` is the partition: ``parts[k]`` is client ``k``'s train indices, made
  when asked for from the one array of every client's sample count (8 bytes a client);
- the test set is the held-out part of the first ``test_clients`` clients (all of them in a
  smaller federation): clients are exchangeable draws, so the first ones are a uniform sample
  of the federation, and every one of them is also a training client.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from .samples import Samples, TensorSamples, cap_test

TRAIN, TEST = 0, 1  # a client's two streams of samples
SHIFT = 32  # a sample's index: client << SHIFT | its position within the client
LOCAL = (1 << SHIFT) - 1


class Population:
    """Clients made on demand. A subclass says how many samples its clients have
    (:meth:`draw_sizes`) and what they are (:meth:`generate`): pure functions of its seed
    and the client id."""

    num_classes: int
    input_shape: tuple[int, ...]
    test_fraction: float = 0.1
    test_clients: int = 100
    max_test_samples: int | None = None
    seed: int = 0

    _sizes: np.ndarray | None = None

    def draw_sizes(self, n: int) -> np.ndarray:
        """Samples (train and test) of clients ``0 .. n-1``, drawn at once; entry ``k`` must
        not depend on ``n``, so a bigger federation keeps the smaller one's clients as they
        were (and :meth:`sizes` may extend what it drew)."""
        raise NotImplementedError

    def sizes(self, n: int) -> np.ndarray:
        """:meth:`draw_sizes`, kept: one client's size is then a look-up, not ``k`` draws."""
        if self._sizes is None or len(self._sizes) < n:
            have = 0 if self._sizes is None else len(self._sizes)
            self._sizes = self.draw_sizes(max(n, 2 * have))
        return self._sizes[:n]

    def generate(self, client: int, n: int, split: int = TRAIN) -> tuple[np.ndarray, np.ndarray]:
        """``n`` samples of ``client``'s ``split`` (TRAIN or TEST): features float [n, ...] and
        labels int [n]. The splits are separate streams of one client distribution, so the
        test set is made without making the clients' training samples."""
        raise NotImplementedError

    def num_train(self, sizes: np.ndarray) -> np.ndarray:
        """Training samples of clients of ``sizes`` samples: ``1 - test_fraction`` of them
        (FedProx's ``int(0.9 * n)``), the rest held out."""
        return (sizes * (1 - self.test_fraction)).astype(np.int64)

    def train(self, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``client``'s training samples as tensors (host)."""
        n = int(self.num_train(self.sizes(client + 1)[client : client + 1])[0])
        x, y = self.generate(client, n, TRAIN)
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(y)

    def parts(self, num_clients: int) -> ClientParts:
        return ClientParts(self.num_train(self.sizes(num_clients)))

    def test(self, num_clients: int) -> TensorSamples:
        """The held-out samples of the first ``min(test_clients, num_clients)`` clients, then
        at most ``max_test_samples`` of them (a seeded subset)."""
        return self._held_out(min(self.test_clients, num_clients))

    @lru_cache(maxsize=2)  # noqa: B019 (a population lives as long as the run's dataset)
    def _held_out(self, k: int) -> TensorSamples:
        sizes = self.sizes(k)
        train = self.num_train(sizes)
        xs, ys = [], []
        for c in range(k):
            x, y = self.generate(c, int(sizes[c] - train[c]), TEST)
            xs.append(x)
            ys.append(y)
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs), np.float32))
        test = TensorSamples(x, torch.from_numpy(np.concatenate(ys)))
        return cap_test(test, self.max_test_samples, self.seed)  # type: ignore[return-value]


class ClientParts(Sequence):
    """Each client's train sample indices, made when asked for (``client << 32`` + 0..n-1)."""

    def __init__(self, num_train: np.ndarray) -> None:
        self.num_train = np.asarray(num_train, dtype=np.int64)
        if len(self.num_train) and int(self.num_train.max()) > LOCAL:
            raise ValueError(f"a client has more than {LOCAL:,} samples")

    def __len__(self) -> int:
        return len(self.num_train)

    def __getitem__(self, client):  # type: ignore[override]
        if not isinstance(client, (int, np.integer)):
            raise TypeError("ClientParts are read one client at a time")
        client = int(client)
        if not 0 <= client < len(self):
            raise IndexError(client)
        return torch.arange(int(self.num_train[client]), dtype=torch.long) + (client << SHIFT)


def nbytes(s: TensorSamples) -> int:
    return s.x.numel() * s.x.element_size() + s.labels.numel() * s.labels.element_size()


class ClientSamples(Samples):
    """The training samples of a :class:`Population`, generated per client on first use.

    ``cache_mb`` bounds the generated clients kept (least recently used go first; the one just
    made always stays). Threads may ask at once (the CPU trainer trains clients side by side):
    the cache is locked, generation is not (two threads making one client make equal data).
    """

    def __init__(
        self,
        population: Population,
        cache_mb: float = 256,
        device: torch.device | str = "cpu",
    ) -> None:
        self.population, self.cache_mb = population, cache_mb
        self.device = torch.device(device)
        self._cache: OrderedDict[int, TensorSamples] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def labels(self) -> torch.Tensor:  # type: ignore[override]
        raise TypeError(
            "the clients of a generated dataset are made when sampled: there is no label "
            "array of all of them"
        )

    def __len__(self) -> int:
        raise TypeError("a generated dataset's size is its clients' (ClientParts)")

    def client(self, client: int) -> TensorSamples:
        """``client``'s training samples (on this set's device), from the cache or made now."""
        with self._lock:
            hit = self._cache.get(client)
            if hit is not None:
                self._cache.move_to_end(client)
                return hit
        x, y = self.population.train(client)
        made = TensorSamples(x.to(self.device), y.to(self.device))
        size = nbytes(made)
        with self._lock:
            if client not in self._cache:
                self._cache[client] = made
                self._bytes += size
            while self._bytes > self.cache_mb * 2**20 and len(self._cache) > 1:
                self._bytes -= nbytes(self._cache.popitem(last=False)[1])
        return made

    def cached(self) -> list[int]:
        """The clients held now, least recently used first."""
        with self._lock:
            return list(self._cache)

    def local(self, idx: torch.Tensor) -> tuple[Samples, torch.Tensor]:
        """One client's indices as (its samples, positions within them): a trainer reads
        every batch of a client from there, with no per-batch lookup."""
        clients = (idx >> SHIFT).unique()
        if len(clients) != 1:
            raise ValueError(f"local() takes one client's indices, got {len(clients)} clients")
        return self.client(int(clients[0])), idx & LOCAL

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.cpu()
        clients = idx >> SHIFT
        pos = idx & LOCAL
        ids = clients.unique()
        if len(ids) == 1:
            return self.client(int(ids[0])).batch(pos)
        x = y = None
        for c in ids.tolist():
            sel = (clients == c).nonzero().squeeze(1)
            xc, yc = self.client(c).batch(pos[sel])
            if x is None:
                x = xc.new_empty((len(idx), *xc.shape[1:]))
                y = yc.new_empty(len(idx))
            x[sel.to(x.device)], y[sel.to(y.device)] = xc, yc  # type: ignore[index]
        return x, y  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> ClientSamples:
        return ClientSamples(self.population, self.cache_mb, device)

    def subset(self, idx: torch.Tensor) -> Samples:
        raise TypeError("a generated training set is not subset; its test set is")
