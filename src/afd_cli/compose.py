"""Overrides -> a validated config, as Hydra would compose it, before anything is written.

``afd run`` checks every job of a sweep here *before* Hydra creates a run directory, so a bad
override costs one line on stderr, exit code 2, and no output folder. Hydra's own messages are
turned into one line that names the key and the valid choices.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import MISSING, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import (
    CONF_DIR,
    ConfigError,
    RootConfig,
    register_schema,
    unknown_key_message,
    validate,
)
from .run import rundir

register_schema()
# A fresh random tag per resolution: the default run directory name stays unique even for
# runs started in the same second (conf/config.yaml, hydra.run.dir).
OmegaConf.register_new_resolver("afd_uid", lambda: secrets.token_hex(3), replace=True)
SCALAR_KEYS = {f.name for f in fields(RootConfig) if f.default_factory is MISSING}


def override_key(o: str) -> str:
    """``+a.b=1`` -> ``a.b``."""
    return o.split("=", 1)[0].lstrip("+~")


def quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def compose(overrides: list[str], hydra_config: bool = False) -> DictConfig:
    """Compose the config as Hydra would for a single run (no run directory is made)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    check_syntax(overrides)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return hydra_compose("config", overrides=overrides, return_hydra_config=hydra_config)
    except HydraException as e:
        raise ConfigError(hydra_message(e)) from None
    except Exception as e:  # OmegaConf interpolation and type errors
        raise ConfigError(" ".join(str(e).split())) from None


def check_syntax(overrides: list[str]) -> None:
    """What Hydra's override grammar reports badly: an option among the overrides (``afd run
    --foo`` gave ``LexerNoViableAltException: --foo ^``), an empty key (``=3`` gave "Config
    group override must be a string or a list. Got int", naming nothing), and a character the
    grammar does not take unquoted (non-ASCII, ``~`` inside a value)."""
    for o in overrides:
        if o.startswith("-"):
            raise ConfigError(
                f"No such option: {o}; options go before the overrides (see --help), "
                "overrides are key=value"
            )
        if "=" in o and not override_key(o):
            raise ConfigError(f"override {o!r} has no key; expected key=value")
        key = override_key(o)
        if o.startswith("~") and ("." in key or key in SCALAR_KEYS):
            # the schema puts the key back with its default, so the deletion did nothing
            # (and the default hydra.run.dir, which interpolates ${seed}, failed to resolve)
            raise ConfigError(f"override {o!r} cannot delete a config key; set it: {key}=VALUE")
        _check_characters(o)


def _check_characters(o: str) -> None:
    """One line naming the character Hydra's lexer stops at, and the quoted form that works
    (Hydra raised ``LexerNoViableAltException`` naming neither)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_override(o)
    except Exception as e:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not key=value") from None
        key, value = o.split("=", 1)
        bad = next((c for c in value if not c.isascii() or c in "~\\"), None)
        if bad is None or value.startswith(("'", '"')):
            why = " ".join(str(e).split())
            raise ConfigError(f"override {o!r} cannot be parsed: {why}") from None
        quoted = value.replace("'", "\\'")
        raise ConfigError(
            f"override {o!r}: Hydra's override syntax does not take the character {bad!r} "
            f"unquoted; quote the value: {key}='{quoted}'"
        ) from None


def hydra_message(e: Exception) -> str:
    """One line out of Hydra's multi-line messages, keeping the valid choices."""
    text = str(e) or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Could not find '" in lines[0] and "Available options" in text:
        group, _, bad = lines[0].split("Could not find '")[1].split("'")[0].partition("/")
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Available options"))
        options = [ln for ln in lines[start + 1 :] if ln and "=" not in ln and ":" not in ln]
        return f"{group}={bad!r} is not valid; choose one of: {', '.join(options)}"
    cause = str(e.__cause__ or "")
    if "is not in struct" in cause or (cause.startswith("Key '") and " not in '" in cause):
        key = cause.split("full_key: ")[1].split()[0] if "full_key: " in cause else "?"
        return unknown_key_message(key)
    if cause:
        return " ".join(cause.split("full_key:")[0].split()) + f" ({lines[0]})"
    return " ".join(lines)


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Every job of a multirun sweep as a plain override list (to validate each up front)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    check_syntax(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise ConfigError(" ".join(str(e).split())) from None
    axes = []
    for o in parsed:
        key = o.get_key_element()
        values = (
            list(o.sweep_string_iterator())
            if o.is_sweep_override()
            else [o.get_value_element_as_str()]
        )
        prefix = "~" if o.is_delete() else ("++" if o.is_force_add() else "+" if o.is_add() else "")
        axes.append([f"{prefix}{key}={v}" for v in values])
    return [list(job) for job in itertools.product(*axes)]


def check(overrides: list[str], verified: set[tuple[str, Path]] | None = None) -> RootConfig:
    """Validate a config, verify its cached dataset and check that the run can be made here
    (:mod:`afd_cli.run.feasible`); return it, raise ConfigError otherwise.

    Runs before Hydra makes a run directory, so a missing or damaged dataset or an impossible
    run leaves nothing behind. ``verified`` remembers the (dataset, data_dir) pairs already
    checked, so a sweep hashes each dataset once, not once per job.
    """
    cfg = validate(compose(overrides))
    from . import data
    from .run import feasible

    key = (cfg.dataset.name, Path(cfg.data_dir).expanduser())
    if verified is None or key not in verified:
        try:
            data.verify(*key)
        except data.DataError as e:
            raise ConfigError(str(e)) from None
        if verified is not None:
            verified.add(key)
    feasible.check(cfg)
    return cfg


def claim_run_dir(overrides: list[str]) -> list[str]:
    """Resolve and create the run directory before Hydra does, so no two runs share one
    (:func:`afd_cli.run.rundir.claim`). Returns the overrides with ``hydra.run.dir`` pinned
    to the directory made here."""
    explicit = any(override_key(o) == "hydra.run.dir" for o in overrides)
    rest = [o for o in overrides if override_key(o) != "hydra.run.dir"]
    for _ in range(10):
        try:
            resolved = str(compose(overrides, hydra_config=True).hydra.run.dir)
        except Exception as e:  # e.g. ~seed: hydra.run.dir interpolates ${seed}
            message = " ".join(str(e).split("full_key:")[0].split())
            raise ConfigError(f"cannot resolve hydra.run.dir: {message}") from None
        if not resolved.strip():  # `hydra.run.dir=$UNSET`: the run would fill the current dir
            raise ConfigError("hydra.run.dir is empty (an unset variable?); give a directory")
        run_dir = Path(resolved)
        if rundir.claim(run_dir, explicit):
            return [*rest, f"hydra.run.dir={quote(str(run_dir))}"]
    raise ConfigError(f"could not find a free run directory name like {run_dir}")


def pin_sweep_dir(overrides: list[str], job: list[str]) -> tuple[list[str], Path]:
    """Resolve ``hydra.sweep.dir`` (its ``${now:...}`` too) before launching and pass it on.

    Launchers that run jobs in other processes (joblib, submitit, ray) leave no HydraConfig
    behind in this one, so the sweep directory must be known here to report failed jobs.
    """
    sweep_dir = str(compose(job, hydra_config=True).hydra.sweep.dir)
    if any(override_key(o) == "hydra.sweep.dir" for o in overrides):
        return overrides, Path(sweep_dir)
    return [*overrides, f"hydra.sweep.dir={quote(sweep_dir)}"], Path(sweep_dir)
