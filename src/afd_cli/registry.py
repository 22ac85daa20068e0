"""Plug-ins: how a strategy, compressor, model, dataset or partition becomes a config option.

A plug-in registers itself where it is defined, with one decorator (or one call)::

    @registry.strategy("fd")
    class FederatedDropout(Strategy):
        options = FDOptions
        ...

and ships one yaml, ``conf/<group>/<name>.yaml``. Nothing else lists it: the built-in ones are
found by importing every module of their family's package (``afd_cli.strategies``, ...), and a
researcher's own package registers its plug-ins through Python entry points, one group per
family (``[project.entry-points."afd_cli.strategies"] my_fd = "my_pkg.my_fd:MyFD"``); its yaml
goes in ``conf/<group>/<name>.yaml`` inside its top-level package (optional: without one the
option is just its name and its options' defaults).

Every plug-in carries an options dataclass (:mod:`afd_cli.options`): the keys it reads, their
defaults and ranges. :func:`schema` unites a family's options into the typed config node Hydra
composes with, so ``compression.sparsity=0.99`` works with any ``compression=``;
:func:`afd_cli.config.validate` then keeps the chosen plug-in's keys. The contract each family
fulfils is in its base module: ``strategies/base.py``, ``compression/base.py``,
``models/base.py``, ``data/spec.py``, ``data/partitions/base.py``.

This module imports nothing heavy until a family is first asked for (``afd --help`` lists the
names without importing any plug-in).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, make_dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import NoOptions, Options, base_type, hints

if TYPE_CHECKING:
    import torch

    from .flops import TrainingCost
    from .models.base import FLModel
    from .network import Clock
    from .state import StateStore


@dataclass(frozen=True)
class Family:
    """One kind of plug-in: its config group, where built-ins live, its entry-point group."""

    group: str  # the config group: strategy=...
    package: str  # built-ins: every module of this package is imported
    entry_points: str  # plug-ins from other packages


FAMILIES: dict[str, Family] = {
    f.group: f
    for f in (
        Family("strategy", "afd_cli.strategies", "afd_cli.strategies"),
        Family("compression", "afd_cli.compression", "afd_cli.compressors"),
        Family("model", "afd_cli.models", "afd_cli.models"),
        Family("dataset", "afd_cli.data.datasets", "afd_cli.datasets"),
        Family("partition", "afd_cli.data.partitions", "afd_cli.partitions"),
    )
}
GROUPS = tuple(FAMILIES)
BUILTIN = "afd-cli"
UNSET = "???"  # OmegaConf's missing value: a key no yaml or override has set


@dataclass(frozen=True)
class Plugin:
    """A registered option: what implements it, its options and where it came from."""

    group: str
    name: str
    obj: Any  # the class, factory function or dataset spec
    options: type[Options]
    # a dataset's input: image | text | vector; a model's: the one it takes, or a tuple of them
    input: str | tuple[str, ...] = "image"
    origin: str = BUILTIN  # the distribution that registered it
    module: str = ""  # where it is defined

    @property
    def reads(self) -> tuple[str, ...]:
        """The keys of its group it reads (besides ``name``); the others cannot change it."""
        return tuple(f.name for f in fields(self.options) if f.name != "name")


@dataclass(frozen=True)
class Setup:
    """What a run hands every strategy and compressor it builds (the same for all of them)."""

    model: FLModel  # the full global model: its units per droppable layer and layout
    shapes: dict[str, tuple[int, ...]]  # full-model parameter shapes, in parameter order
    seed: int
    device: torch.device
    store: StateStore  # where per-client state lives: bounded in memory, checkpointed
    # What a width assignment from the clock needs (``strategy.assign=device``); a run fills
    # them in, hand-built setups (tests, a checkpoint's throwaway owners) may leave them out.
    samples: tuple[int, ...] | None = None  # each client's training samples, by client id
    clock: Clock | None = None  # the simulated clock (None: network=none)
    cost: TrainingCost | None = None  # local training FLOPs per sub-model shape


_table: dict[str, dict[str, Plugin]] = {g: {} for g in GROUPS}
_broken: dict[str, dict[str, str]] = {g: {} for g in GROUPS}  # entry points that failed
_origin: list[str] = [BUILTIN]  # the distribution whose plug-ins are being imported
_loaded: set[str] = set()


def register(
    group: str,
    *names: str,
    options: type | None = None,
    input: str | tuple[str, ...] = "image",
    module: str | None = None,
):
    """Decorator (or call on an object) registering ``obj`` as ``group=<name>`` for each name.

    ``options`` defaults to the object's ``options`` attribute (:class:`NoOptions` without);
    ``module``, where it is defined, to the object's ``__module__``.
    """
    if group not in FAMILIES:
        raise ValueError(f"unknown plug-in family {group!r}; one of: {', '.join(GROUPS)}")

    def add(obj: Any) -> Any:
        opts = options or getattr(obj, "options", None) or NoOptions
        for name in names or (getattr(obj, "name", None),):
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"{group} plug-in name {name!r} must be a Python identifier")
            old = _table[group].get(name)
            if old is not None and old.obj is not obj:
                raise ValueError(
                    f"{group}={name} is registered twice: by {old.origin} and by {_origin[-1]}"
                )
            where = module or getattr(obj, "__module__", "")
            _table[group][name] = Plugin(group, name, obj, opts, input, _origin[-1], where)
        return obj

    return add


def strategy(*names: str, options: type | None = None) -> Callable[[Any], Any]:
    return register("strategy", *names, options=options)


def compressor(*names: str, options: type | None = None) -> Callable[[Any], Any]:
    return register("compression", *names, options=options)


def model(*names: str, options: type | None = None, input: str | tuple[str, ...] = "image"):
    return register("model", *names, options=options, input=input)


def takes(model: Plugin, input: Any) -> bool:
    """Whether a ``model=`` option takes a dataset's ``input`` (image, text, vector)."""
    return input == model.input if isinstance(model.input, str) else input in model.input


def partition(*names: str, options: type | None = None) -> Callable[[Any], Any]:
    return register("partition", *names, options=options)


def dataset(spec: Any) -> Any:
    """Register a :class:`~afd_cli.data.spec.DatasetSpec` (``dataset=<spec.name>``)."""
    module = sys._getframe(1).f_globals.get("__name__", "")  # the dataset's own module
    register("dataset", spec.name, options=spec.options, input=spec.input, module=module)(spec)
    return spec


# --- finding plug-ins ----------------------------------------------------------------------


def _load(group: str) -> None:
    """Import the family's built-in modules and its entry points (once)."""
    if group in _loaded:
        return
    _loaded.add(group)
    fam = FAMILIES[group]
    package = importlib.import_module(fam.package)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{fam.package}.{info.name}")
    for ep in external(group):
        _origin.append(ep.dist.name if ep.dist is not None else ep.value.split(":")[0])
        try:
            obj = ep.load()
            if ep.name not in _table[group]:  # an object that did not register itself
                register(group, ep.name)(obj)
            _config_store(group, ep.name, ep.value.split(":")[0])
        except Exception as e:
            _broken[group][ep.name] = f"{type(e).__name__}: {' '.join(str(e).split())}"
            _table[group].pop(ep.name, None)
        finally:
            _origin.pop()


def external(group: str) -> list[metadata.EntryPoint]:
    """The installed entry points of a family (other packages' plug-ins), by name."""
    found = metadata.entry_points(group=FAMILIES[group].entry_points)
    return sorted(found, key=lambda ep: ep.name)


def _config_store(group: str, name: str, module: str) -> None:
    """Make ``group=name`` a Hydra option: the package's ``conf/<group>/<name>.yaml`` if it
    ships one, else just ``name: <name>``. Stored in Hydra's ConfigStore, which Hydra searches
    beside ``conf/``."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    top = sys.modules[module.split(".")[0]]
    roots = [Path(p) for p in getattr(top, "__path__", [])] or [Path(top.__file__).parent]
    node: Any = {"name": name}
    package = None
    for root in roots:
        path = root / "conf" / group / f"{name}.yaml"
        if path.is_file():
            text = path.read_text()
            if text.lstrip().startswith("# @package _global_"):
                package = "_global_"
            node = OmegaConf.create(text)
            break
    ConfigStore.instance().store(group=group, name=name, node=node, package=package)


def plugins(group: str) -> dict[str, Plugin]:
    """Every registered option of ``group``, by name."""
    if group not in FAMILIES:
        raise ValueError(f"unknown plug-in family {group!r}; one of: {', '.join(GROUPS)}")
    _load(group)
    return dict(sorted(_table[group].items()))


def names(group: str) -> tuple[str, ...]:
    """The valid options of a config group."""
    return tuple(plugins(group))


def get(group: str, name: Any) -> Plugin:
    """The plug-in behind ``group=name``; ``ValueError`` naming the valid choices otherwise
    (and why, for an installed plug-in that failed to load)."""
    table = plugins(group)
    if name in table:
        return table[name]
    if name in _broken[group]:
        raise ValueError(
            f"{group}={name!r} is installed but failed to load: {_broken[group][name]}"
        )
    raise ValueError(f"{group}={name!r} is not valid; choose one of: {', '.join(table)}")


def load(group: str, name: str) -> Any:
    """The implementation behind ``group=name`` (a class, function or spec object)."""
    return get(group, name).obj


def broken(group: str) -> dict[str, str]:
    """Installed plug-ins of ``group`` that failed to import, with the reason."""
    plugins(group)
    return dict(_broken[group])


def external_names(group: str) -> list[str]:
    """Names of other packages' plug-ins of ``group``, from their metadata (imports nothing)."""
    return [ep.name for ep in external(group)]


# --- what a plug-in reads ------------------------------------------------------------------


def unread(group: str, name: Any, keys: Iterable[str]) -> list[str]:
    """Those of ``keys`` (a group's keys, without the ``group.`` prefix) that option
    ``group=name`` does not read; none when the option is unknown."""
    plugin = plugins(group).get(str(name))
    if plugin is None:
        return []
    reads = set(plugin.reads)
    return [k for k in keys if k != "name" and k not in reads]


def unread_keys(config: Mapping[str, Any]) -> list[str]:
    """Dotted keys of a (nested) config dict that its chosen plug-ins do not read, e.g.
    ``strategy.rate`` under ``strategy=fedavg``: they cannot change its results."""
    out = []
    for group in GROUPS:
        node = config.get(group)
        if isinstance(node, Mapping):
            out += [f"{group}.{k}" for k in unread(group, node.get("name"), node)]
    return out


def read_values(group: str, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Those of ``values`` (``group.*`` keys) that ``group=name`` reads; the rest are ignored
    as in a config, but a key no plug-in of the group declares is a TypeError (a typo)."""
    for key in values:
        if declaring(group, key) is None:
            raise TypeError(f"no {group} plug-in has an option {key!r}")
    reads = get(group, name).reads
    return {k: v for k, v in values.items() if k in reads}


def readers(group: str, key: str) -> list[str]:
    """The options of ``group`` that read ``key``."""
    return [n for n, p in plugins(group).items() if key in p.reads]


def declaring(group: str, key: str) -> tuple[type[Options], Any] | None:
    """An options class of ``group`` that declares ``key``, with that field (for its rule)."""
    for p in plugins(group).values():
        for f in fields(p.options):
            if f.name == key:
                return p.options, f
    return None


@cache
def schema(group: str) -> type:
    """The typed config node of ``group`` at compose time: every key any of its plug-ins
    reads, typed, all unset (``???``) until an option's yaml or an override sets one; the
    chosen plug-in's defaults fill the rest in :func:`afd_cli.config.validate`.

    Two plug-ins may share a key only with the same type (raises ``ValueError`` otherwise).
    """
    types: dict[str, tuple[Any, str]] = {"name": (str, "")}
    for p in plugins(group).values():
        for key, hint in hints(p.options).items():
            if key in types and _norm(types[key][0]) != _norm(hint):
                raise ValueError(
                    f"{group}.{key} is {types[key][0]} in {types[key][1]} but {hint} in "
                    f"{group}={p.name}: plug-ins of one group must agree on a key's type"
                )
            types.setdefault(key, (hint, p.name))
    cls = make_dataclass(
        _schema_name(group), [(k, t, field(default=UNSET)) for k, (t, _) in types.items()]
    )
    cls.__module__ = __name__  # pickled configs (joblib sweeps) find it again by name
    return cls


def _schema_name(group: str) -> str:
    return f"{group.capitalize()}Schema"


def __getattr__(name: str) -> Any:
    """``registry.StrategySchema`` & co.: the generated schemas, by name (for unpickling)."""
    for group in GROUPS:
        if name == _schema_name(group):
            return schema(group)
    raise AttributeError(name)


def _norm(hint: Any) -> tuple[Any, bool]:
    return base_type(hint)
