"""The configuration reference (``docs/reference/configuration.md``), generated from the schema.

Every key comes from where it is declared -- a plug-in's options dataclass, or the fixed groups
and top-level keys of :mod:`afd_cli.config` -- with its type, default, accepted values and help
line, so the page cannot drift from the code (a test compares the committed page with this).
``afd config reference`` prints it.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from . import registry
from .config import FIXED_GROUPS, RootConfig, network_names
from .options import Rule, base_type, hints

HEADER = """# Configuration reference

Generated from the schema by `afd config reference` (do not edit by hand). Every key is set on
the command line as `group.key=value` (top-level keys as `key=value`); a plug-in group's keys
are those of the chosen option (`strategy=multi` reads `strategy.rate`, `strategy.explore`,
...), and keys the chosen option does not read are ignored, as in a sweep over several
options. `afd config show [OVERRIDES...]` prints the values a run will use.
"""


def _plain(text: str) -> str:
    """A docstring line as Markdown: Sphinx roles and double backticks to plain code."""
    return re.sub(r":\w+:`([^`]*)`", r"`\1`", text).replace("``", "`")


def _type(cls: type, name: str) -> str:
    kind, nullable = base_type(hints(cls)[name])
    text = getattr(kind, "__name__", str(kind))
    return f"{text} or null" if nullable else text


def _default(f: Any) -> str:
    if f.default is not MISSING:
        v = f.default
    elif f.default_factory is not MISSING:
        v = f.default_factory()
    else:
        return "(required)"
    if v is None:
        return "null"
    return str(v).lower() if isinstance(v, bool) else str(v)


def _accepts(cls: type, f: Any) -> str:
    rule: Rule | None = f.metadata.get("rule")
    kind, nullable = base_type(hints(cls)[f.name])
    if kind is bool:
        return "true, false"
    if rule is None or rule == Rule():
        return ""
    if rule.choices is not None:
        return ", ".join(rule.choices)
    return rule.describe(kind, nullable)


def _table(cls: type, prefix: str) -> list[str]:
    rows = ["| key | type | default | accepts | meaning |", "|---|---|---|---|---|"]
    for f in fields(cls):
        if f.name == "name" or is_dataclass(f.type) or f.name in FIXED_GROUPS:
            continue
        if f.name in registry.GROUPS:
            continue
        help_text = f.metadata.get("help", "").replace("|", "\\|")
        rows.append(
            f"| `{prefix}{f.name}` | {_type(cls, f.name)} | `{_default(f)}` | "
            f"{_accepts(cls, f)} | {help_text} |"
        )
    return rows if len(rows) > 2 else ["(no keys besides its name)"]


def markdown() -> str:
    """The whole page."""
    out = [HEADER]
    for group in registry.GROUPS:
        out += [f"## `{group}=`", ""]
        for name, p in registry.plugins(group).items():
            origin = "" if p.origin == registry.BUILTIN else f" (from {p.origin})"
            out += [f"### `{group}={name}`{origin}", "", f"Defined in `{p.module}`.", ""]
            out += [*_table(p.options, f"{group}."), ""]
    for group, cls in FIXED_GROUPS.items():
        out += [f"## `{group}`", "", _plain((cls.__doc__ or "").split("\n")[0]), ""]
        name = next(f for f in fields(cls) if f.name == "name") if "name" in hints(cls) else None
        rule = name.metadata.get("rule") if name is not None else None
        if rule is not None and rule.choices:
            out += [f"Options (`{group}=`): {', '.join(rule.choices)}.", ""]
        if group == "network":
            out += [
                f"Profiles (`network=`, one yaml each under `conf/network/`): "
                f"{', '.join(network_names())}; `none` turns the clock off.",
                "",
            ]
        out += [*_table(cls, f"{group}."), ""]
    out += ["## Top level", "", *_table(RootConfig, ""), ""]
    return "\n".join(out).rstrip() + "\n"
