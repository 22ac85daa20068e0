"""The data cache: a missing dataset names the command that fetches it (with the data_dir
used); `afd data fetch` says where the data is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from afd_cli import data

AFD = [sys.executable, "-m", "afd_cli.cli"]


def _error(data_dir: Path) -> str:
    with pytest.raises(RuntimeError) as e:
        data.load("mnist5k", data_dir)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_data_hint_names_a_custom_data_dir(tmp_path: Path, monkeypatch) -> None:
    custom = tmp_path / "my data"
    assert _error(custom) == (
        f"dataset 'mnist5k' is not in {custom}; fetch it with: "
        f"afd data fetch mnist5k --data-dir '{custom}'"
    )
    # the default data dir (where `afd data fetch` caches without --data-dir) needs no flag
    monkeypatch.setenv("AFD_DATA_DIR", str(custom))
    assert _error(custom).endswith("fetch it with: afd data fetch mnist5k")


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
