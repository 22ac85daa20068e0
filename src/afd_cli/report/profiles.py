"""``afd report --network NAME network.KEY=VALUE``: the network configs runs are re-timed with,
composed and validated exactly like ``afd run``'s."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .common import ReportError


def split_arguments(args: list[Path]) -> tuple[list[Path], list[str]]:
    """``afd report`` arguments -> (paths, ``network.*`` overrides). An argument that exists
    is a path (sweep subdirectories are named ``key=value``); other ``key=value`` arguments
    must set ``network.*`` keys, the only ones a report can change."""
    paths, overrides = [], []
    for a in args:
        text = str(a)
        if a.exists() or "=" not in text:
            paths.append(a)
        elif text.startswith("network."):
            overrides.append(text)
        else:
            raise ReportError(
                f"{text}: afd report can only change network.* keys (e.g. network.up_mbps=1), "
                "and no such path exists"
            )
    if not paths:
        raise ReportError("no run or sweep directory given (only overrides)")
    return paths, overrides


def network_for(name: str | None, overrides: list[str]) -> Callable[[dict[str, Any]], Any]:
    """The network config to re-time one run with: ``--network NAME`` (else the run's own
    profile, as it ran) plus ``network.*`` overrides, composed and validated like `afd run`."""
    from ..compose import compose
    from ..config import validate

    cache: dict[tuple[str, ...], object] = {}
    # a bad name or value fails before any run is read (without a name: on the default profile)
    first = (f"network={name or 'lte'}", *overrides)
    cache[first] = validate(compose(list(first))).network

    def resolve(run_config: dict) -> object:
        if name is not None:
            key = (f"network={name}", *overrides)
        else:
            own = run_config.get("network.name")
            if own is None:
                raise ConfigError(
                    "a run has no network config (older than the clock); name a profile: "
                    "--network NAME"
                )
            kept = [
                f"{k}={'null' if v is None else v}"
                for k, v in sorted(run_config.items())
                if k.startswith("network.") and k != "network.name"
            ]
            key = (f"network={own}", *kept, *overrides)
        if key not in cache:
            cache[key] = validate(compose(list(key))).network
        return cache[key]

    return resolve


def retime_note(name: str | None, overrides: list[str]) -> str:
    if name is None and not overrides:
        return ""
    what = " ".join([*([f"--network {name}"] if name else []), *overrides])
    return f"re-timed from clients.csv ({what})"
