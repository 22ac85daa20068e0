"""The data cache: `afd data fetch` says where the data is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from afd_cli import data

AFD = [sys.executable, "-m", "afd_cli.cli"]


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
