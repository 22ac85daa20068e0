"""The data cache is verified at load: damage is one line naming the dataset and the command
that fetches it again (with the data_dir used), before any run directory exists."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import AFD

from afd_cli import compose, data
from afd_cli.config import ConfigError

RUN = [
    "dataset=mnist5k",
    "model=mlp",
    "partition=iid",
    "schedule.num_clients=10",
    "schedule.clients_per_round=3",
    "schedule.rounds=1",
    "progress=none",
]


def _fake_cache(data_dir: Path, sizes: bool = True) -> Path:
    """A small mnist5k cache in the fetched format (payload + manifest), no download needed.

    Every pixel is 7, so a flipped byte in the image data is found (and not in a header).
    ``sizes=False`` writes a manifest as fetches before sizes were recorded did.
    """
    ds_dir = data_dir / "mnist5k"
    ds_dir.mkdir(parents=True)
    f = ds_dir / "mnist5k.pt"
    x = torch.full((200, 28, 28), 7, dtype=torch.uint8)
    torch.save({"x_train": x, "y_train": torch.arange(200) % 10}, f)
    raw = f.read_bytes()
    manifest = {
        "name": "mnist5k",
        "source": "test",
        "source_sha256": "",
        "files": {f.name: hashlib.sha256(raw).hexdigest()},
    }
    if sizes:
        manifest["sizes"] = {f.name: len(raw)}
    (ds_dir / "manifest.json").write_text(json.dumps(manifest))
    return f


def _flip_pixel(f: Path) -> None:
    raw = bytearray(f.read_bytes())
    raw[raw.index(b"\x07" * 1000) + 500] ^= 0xFF
    f.write_bytes(bytes(raw))


def _error(data_dir: Path) -> str:
    with pytest.raises(RuntimeError) as e:
        data.load("mnist5k", data_dir)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_the_fake_cache_loads(tmp_path: Path) -> None:
    _fake_cache(tmp_path)
    ds = data.load("mnist5k", tmp_path)
    assert len(ds.train) == 180 and len(ds.test) == 20
    data.verify("mnist5k", tmp_path)


def test_damaged_cache_file_is_refused_at_load(tmp_path: Path) -> None:
    _flip_pixel(_fake_cache(tmp_path))
    msg = _error(tmp_path)
    assert msg == (
        f"dataset 'mnist5k' in {tmp_path} is damaged: mnist5k.pt differs from the fetched file "
        f"(sha256 mismatch); fetch it again with: afd data fetch mnist5k --data-dir {tmp_path}"
    )
    with pytest.raises(data.DataDamaged):
        data.verify("mnist5k", tmp_path)


def test_truncated_cache_file_is_refused_at_load_not_called_a_checkpoint(tmp_path: Path) -> None:
    f = _fake_cache(tmp_path)
    size = f.stat().st_size
    os.truncate(f, size - 40)
    msg = _error(tmp_path)
    assert "checkpoint" not in msg
    assert msg == (
        f"dataset 'mnist5k' in {tmp_path} is damaged: mnist5k.pt has {size - 40:,} bytes, "
        f"{size:,} when fetched (truncated); fetch it again with: "
        f"afd data fetch mnist5k --data-dir {tmp_path}"
    )


def test_truncated_file_with_a_manifest_from_before_sizes(tmp_path: Path) -> None:
    f = _fake_cache(tmp_path, sizes=False)
    os.truncate(f, f.stat().st_size - 40)
    msg = _error(tmp_path)
    assert "checkpoint" not in msg and "mnist5k.pt differs from the fetched file" in msg
    assert msg.endswith(f"afd data fetch mnist5k --data-dir {tmp_path}")


@pytest.mark.parametrize(
    "damage,problem",
    [
        (lambda d: (d / "mnist5k.pt").unlink(), "mnist5k.pt is missing"),
        (lambda d: (d / "manifest.json").write_text("{"), "manifest.json cannot be read"),
        (
            lambda d: (d / "manifest.json").write_text('{"files": {}}'),
            "manifest.json lists no files",
        ),
    ],
)
def test_other_damage_is_one_line_too(tmp_path: Path, damage, problem) -> None:
    _fake_cache(tmp_path)
    damage(tmp_path / "mnist5k")
    msg = _error(tmp_path)
    assert f"dataset 'mnist5k' in {tmp_path} is damaged: {problem}" in msg
    assert msg.endswith(f"fetch it again with: afd data fetch mnist5k --data-dir {tmp_path}")


def test_missing_data_hint_names_a_custom_data_dir(tmp_path: Path, monkeypatch) -> None:
    custom = tmp_path / "my data"
    assert _error(custom) == (
        f"dataset 'mnist5k' is not in {custom}; fetch it with: "
        f"afd data fetch mnist5k --data-dir '{custom}'"
    )
    # the default data dir (where `afd data fetch` caches without --data-dir) needs no flag
    monkeypatch.setenv("AFD_DATA_DIR", str(custom))
    assert _error(custom).endswith("fetch it with: afd data fetch mnist5k")


def test_check_refuses_damaged_data_before_a_run_and_names_the_data_dir(tmp_path: Path) -> None:
    _flip_pixel(_fake_cache(tmp_path))
    with pytest.raises(ConfigError, match=f"afd data fetch mnist5k --data-dir {tmp_path}$"):
        compose.check([*RUN, f"data_dir={tmp_path}"])


def test_a_sweep_verifies_each_dataset_once(tmp_path: Path, monkeypatch) -> None:
    _fake_cache(tmp_path)
    calls = []
    real = data.verify
    monkeypatch.setattr(data, "verify", lambda *a: calls.append(a) or real(*a))
    seen: set = set()
    for job in compose.expand_sweep([*RUN, f"data_dir={tmp_path}", "seed=0,1,2"]):
        compose.check(job, seen)
    assert calls == [("mnist5k", tmp_path)]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_run_on_a_damaged_cache_exits_with_one_line_and_leaves_no_run_dir(
    tmp_path: Path, damage: str
) -> None:
    f = _fake_cache(tmp_path / "data")
    _flip_pixel(f) if damage == "flip" else os.truncate(f, f.stat().st_size // 2)
    p = subprocess.run(
        [*AFD, "run", *RUN, f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'r'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint" not in lines[0], p.stderr
    assert lines[0].startswith(f"error: dataset 'mnist5k' in {tmp_path / 'data'} is damaged")
    assert lines[0].endswith(f"afd data fetch mnist5k --data-dir {tmp_path / 'data'}")
    assert not (tmp_path / "r").exists()
    assert not (tmp_path / "outputs").exists()


def test_fetch_digits_prints_a_path_that_exists(tmp_path: Path) -> None:
    assert data.fetch("digits", tmp_path, log=lambda m: None).is_file()
    p = subprocess.run(
        [*AFD, "data", "fetch", "digits", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    line = p.stdout.strip().splitlines()[-1]
    assert line.startswith("digits: ok (") and line.endswith(")")
    assert Path(line[len("digits: ok (") : -1]).is_file()
