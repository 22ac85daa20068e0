"""Options: how a plug-in declares its config keys -- type, default, help and range -- once.

A plug-in (strategy, compressor, model, dataset, partition) owns a small dataclass of options,
a subclass of :class:`Options`. Each field is declared with :func:`option`::

    @dataclass
    class FDOptions(Options):
        rate: float = option(0.25, "fraction of units dropped per droppable layer", ge=0, lt=1)

From that one declaration come: the config keys of ``strategy=fd`` (``strategy.rate``) and
their defaults, the one-line range message (``strategy.rate=1.5 is out of range; expected a
number in [0, 1)``), the registry's "which keys does this plug-in read" (for resume checks and
report grouping), ``afd config show`` and the configuration reference in the docs. Checks that
involve several keys go in the dataclass's :meth:`Options.check`.

This module imports nothing heavy: it is read while a config is checked.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from functools import cache
from typing import Any


class ConfigError(ValueError):
    """A user-facing configuration mistake; its message is one line, printed as is."""


@dataclass(frozen=True)
class Rule:
    """What values a key accepts: a range, a set of choices, or a predicate."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    test: Callable[[Any], bool] | None = None  # extra predicate (e.g. a power of two)
    expected: str | None = None  # the words of the message, when the range says too little

    def accepts(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        bounds = (
            (self.ge, lambda v, b: v >= b),
            (self.gt, lambda v, b: v > b),
            (self.le, lambda v, b: v <= b),
            (self.lt, lambda v, b: v < b),
        )
        if any(b is not None and not op(value, b) for b, op in bounds):
            return False
        return self.test is None or bool(self.test(value))

    def describe(self, kind: type, nullable: bool) -> str:
        """``a number in [0, 1)``, ``null or an integer >= 1``, ... (for the message)."""
        text = self.expected or _range_text(self, "an integer" if kind is int else "a number")
        return f"null or {text}" if nullable else text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _range_text(r: Rule, noun: str) -> str:
    lo = (r.ge, "[") if r.ge is not None else (r.gt, "(") if r.gt is not None else None
    hi = (r.le, "]") if r.le is not None else (r.lt, ")") if r.lt is not None else None
    if lo and hi:
        return f"{noun} in {lo[1]}{_num(lo[0])}, {_num(hi[0])}{hi[1]}"
    if lo:
        return f"{noun} {'>=' if lo[1] == '[' else '>'} {_num(lo[0])}"
    if hi:
        return f"{noun} {'<=' if hi[1] == ']' else '<'} {_num(hi[0])}"
    return noun


def option(
    default: Any,
    help: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[str] | None = None,
    test: Callable[[Any], bool] | None = None,
    expected: str | None = None,
    strict: bool = False,
) -> Any:
    """A dataclass field that is a config key: its default, one line of help and its rule.

    ``strict``: setting the key to anything but its default while the chosen plug-in does not
    read it is an error (``compression.downlink=true`` with a dense compressor), not silently
    ignored like other unread keys (which experiment presets set for every plug-in).
    """
    rule = Rule(ge, gt, le, lt, tuple(choices) if choices is not None else None, test, expected)
    return field(default=default, metadata={"help": help, "rule": rule, "strict": strict})


@dataclass
class Options:
    """Base of every plug-in's options: the option's ``name`` (``strategy=fd`` -> ``fd``)."""

    name: str = MISSING  # type: ignore[assignment]

    def check(self, prefix: str) -> None:
        """Checks across keys (``prefix``: ``"compression."``); raise :class:`ConfigError`."""


@dataclass
class NoOptions(Options):
    """A plug-in that reads no key but its name (fedavg, iid, cnn_mnist)."""


@cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved type annotations of a dataclass (``from __future__`` makes them strings)."""
    return typing.get_type_hints(cls)


def base_type(annotation: Any) -> tuple[type, bool]:
    """``int | None`` -> ``(int, True)``; ``float`` -> ``(float, False)``."""
    args = typing.get_args(annotation)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else object), True
    return annotation, False


def keys(cls: type) -> tuple[str, ...]:
    """The keys an options class declares, without ``name``."""
    return tuple(f.name for f in fields(cls) if f.name != "name")


def check_value(key: str, value: Any, f: Any, owner: type) -> None:
    """Raise :class:`ConfigError` if ``value`` breaks the rule of field ``f`` of ``owner``."""
    rule: Rule | None = f.metadata.get("rule")
    kind, nullable = base_type(hints(owner)[f.name])
    if value is None:
        if nullable:
            return
        raise ConfigError(f"{key}=None is out of range; expected a value")
    if isinstance(value, float) and not math.isfinite(value):
        # nan / inf pass most range checks (inf > 0) and would only surface as a diverged run
        raise ConfigError(f"{key}={value!r} is out of range; expected a finite number")
    if rule is None or rule.accepts(value):
        return
    if rule.choices is not None:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(rule.choices)}")
    raise ConfigError(f"{key}={value!r} is out of range; expected {rule.describe(kind, nullable)}")


def check(obj: Any, prefix: str) -> None:
    """Every field's rule, then the object's own cross-key :meth:`Options.check`."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            check(value, f"{prefix}{f.name}.")
        elif f.name != "name":
            check_value(f"{prefix}{f.name}", value, f, type(obj))
        elif f.metadata.get("rule") is not None:  # a group's option (trainer=); plug-ins': registry
            check_value(prefix.rstrip("."), value, f, type(obj))
    own = getattr(obj, "check", None)
    if callable(own):
        own(prefix)


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """A cross-key check: raise the standard range message unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range; expected {expected}")


def help_of(cls: type, key: str) -> str:
    """The help line of ``cls.key`` (empty if none)."""
    return next((f.metadata.get("help", "") for f in fields(cls) if f.name == key), "")


def default_of(cls: type, key: str) -> Any:
    f = next(f for f in fields(cls) if f.name == key)
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING
