"""Plug-ins from outside the project: examples/plugin installed into a directory of its own
(as a researcher's package would be) registers a strategy and a compressor by entry point, and
``afd`` runs them, checks their options, and lists them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import AFD, SMALL

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin"
pytestmark = pytest.mark.slow  # a pip install, then runs in subprocesses


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The environment of a process that has the example package on its path."""
    target = tmp_path_factory.mktemp("site")
    # built from a copy: setuptools writes build/ and *.egg-info/ beside the sources
    source = tmp_path_factory.mktemp("source") / "plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    # setuptools from this environment: no download, so the test runs offline too
    cmd += ["--no-build-isolation", str(source)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path_factory.mktemp("build"))
    assert p.returncode == 0, p.stderr[-2000:]
    path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def afd(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AFD, *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_outside_strategy_and_compressor_run_with_their_options(installed, tmp_path):
    run = tmp_path / "run"
    args = [*SMALL, "schedule.rounds=2", "strategy=prefix", "strategy.rate=0.5"]
    p = afd(installed, tmp_path, "run", *args, "compression=sign", f"hydra.run.dir={run}")
    assert p.returncode == 0, p.stderr
    m = pd.read_csv(run / "metrics.csv")
    assert list(m["strategy"]) == ["prefix"] * 2 and list(m["compression"]) == ["sign"] * 2
    # half the units of each hidden layer: fewer parameters sent than the full model
    assert (m["keep_fraction"] < 0.6).all()
    clients = pd.read_csv(run / "clients.csv")
    # its own wire format, counted as it is: per tensor 1 + 4 * ndim bytes of shape, a kind
    # byte, then a float scale and one bit per entry (fp32 under dense_below = 1024 entries)
    signs = {(100, 64): 4 + 800, (100, 100): 4 + 1250}  # mlp 200 -> 100 units kept
    dense = {(100,): 400, (10, 100): 4000, (10,): 40}
    shapes = [(100, 64), (100,), (100, 100), (100,), (10, 100), (10,)]
    want = sum(2 + 4 * len(s) + {**signs, **dense}[s] for s in shapes)
    assert want == 6946 and (clients["bytes_up"] == want).all()
    config = json.loads((run / "summary.json").read_text())["config"]
    assert config["strategy"] == {"name": "prefix", "rate": 0.5}
    assert config["compression"]["dense_below"] == 1024  # its own option, at its default


def test_outside_options_are_checked_like_built_in_ones(installed, tmp_path):
    p = afd(installed, tmp_path, "run", "strategy=prefix", "strategy.rate=1.5")
    assert p.returncode == 2
    assert "strategy.rate=1.5 is out of range; expected a number in [0, 1)" in p.stderr
    p = afd(installed, tmp_path, "config", "show", "strategy=prefix", "strategy.explore=0.1")
    assert p.returncode == 0  # a key another strategy reads: ignored, as in a sweep
    assert "explore" not in p.stdout.split("strategy:")[1].split("compression:")[0]
    assert list(tmp_path.iterdir()) == []


def test_outside_plugins_are_listed(installed, tmp_path):
    p = afd(installed, tmp_path, "run", "--help")
    words = " ".join(p.stdout.split())  # the help wraps at the terminal's width
    assert "prefix (plug-in)" in words and "sign (plug-in)" in words
    p = afd(installed, tmp_path, "config", "plugins")
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if "prefix" in ln)
    assert "afd-example-plugin" in line and "rate" in line


def test_without_the_package_the_options_are_unknown(tmp_path):
    from afd_cli import registry

    if "prefix" in registry.external_names("strategy"):
        pytest.skip("the example plug-in is installed in this environment")
    p = afd(dict(os.environ), tmp_path, "run", "strategy=prefix")
    assert p.returncode == 2 and "strategy='prefix' is not valid; choose one of" in p.stderr
