"""The marker lists of conftest.py name tests that exist, and the markers are registered.

A renamed test would otherwise silently lose its marker (a slow test would creep into
``make test-fast``, a CUDA one out of ``make gpu-check``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import conftest
import pytest

ROOT = Path(__file__).resolve().parents[1]


# One collection of the whole suite in a child pytest under `-m cuda`: every item's markers,
# and which items `-m` kept (what `make gpu-check` runs).
COLLECT = """
import json, sys, pytest

class Record:
    items, kept = {}, []

    def pytest_deselected(self, items):
        for i in items:
            self.items[i.nodeid] = sorted({m.name for m in i.iter_markers()})

    def pytest_collection_finish(self, session):
        for i in session.items:
            self.items[i.nodeid] = sorted({m.name for m in i.iter_markers()})
        self.kept = [i.nodeid for i in session.items]

r = Record()
code = pytest.main(["--collect-only", "-qq", "-p", "no:cacheprovider", "-m", "cuda", "tests"], [r])
print("JSON" + json.dumps({"code": int(code), "items": r.items, "kept": r.kept}))
"""


@pytest.fixture(scope="module")
def collected() -> dict:
    p = subprocess.run(
        [sys.executable, "-c", COLLECT], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    out = [ln for ln in p.stdout.splitlines() if ln.startswith("JSON")]
    assert out, p.stdout[-3000:] + p.stderr[-3000:]
    got = json.loads(out[-1][4:])
    assert got["code"] == 0, p.stdout[-3000:]
    return got


def _listed() -> list[tuple[str, str]]:
    return sorted({(m, n) for m, names in conftest.LISTS.items() for n in names})


@pytest.mark.parametrize("marker,name", _listed(), ids=lambda v: v.split("::")[-1])
def test_every_listed_test_exists_and_carries_its_marker(collected, marker, name):
    file, _, func = name.partition("::")
    prefix = f"tests/{file}::{func}"
    hits = {
        n: ms
        for n, ms in collected["items"].items()
        if n == prefix or n.startswith(prefix + ("[" if func and "[" not in func else ""))
    }
    assert hits, f"{marker}: no test {name}"
    assert all(marker in ms for ms in hits.values()), hits


def test_the_markers_are_registered():
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    registered = {m.split(":")[0] for m in ini["markers"]}
    assert set(conftest.LISTS) <= registered
    assert {"slow", "cuda", "distributed", "data", "network"} <= registered
    assert "--strict-markers" in ini["addopts"]


def test_gpu_check_selects_every_cuda_test_and_test_fast_none_of_them(collected):
    """`-m cuda` keeps the CUDA tests of every file (`-k cuda` on test_pipeline.py missed the
    other files'); the daily subset leaves out CUDA, torchrun and slow tests."""
    kept = set(collected["kept"])
    files = {n.split("::")[0] for n in kept}
    assert files == {
        "tests/test_pipeline.py",
        "tests/test_device_compression.py",
        "tests/test_distributed.py",
        "tests/test_hadamard.py",
    }, files
    assert "tests/test_pipeline.py::test_precision_auto_on_cuda_follows_the_gpu" in kept
    items = collected["items"]
    assert kept == {n for n, ms in items.items() if "cuda" in ms}
    # every test that skips without CUDA is kept (the 9 outside test_pipeline.py among them)
    outside = {n for n in kept if not n.startswith("tests/test_pipeline.py")}
    assert len(outside) >= 9, outside
    launched = {n for n, ms in items.items() if "distributed" in ms}
    assert len(launched) >= 5
    fast = {n for n, ms in items.items() if not {"slow", "distributed", "cuda"} & set(ms)}
    assert len(fast) > len(items) // 2


@pytest.mark.parametrize(
    "env",
    [{"AFD_TEST_OFFLINE": "1"}, {"AFD_TEST_OFFLINE": "", "PIP_INDEX_URL": "http://127.0.0.1:9/s"}],
)
def test_network_tests_skip_when_the_index_cannot_be_reached(monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    conftest.network_reachable.cache_clear()
    try:
        assert conftest.network_reachable(timeout=2.0) is False
    finally:
        conftest.network_reachable.cache_clear()
