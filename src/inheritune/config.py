"""Configs are dataclasses: field docs in ``metadata["help"]``, loadable from YAML, overridable from flags.

A config class only declares fields and validates them in ``__post_init__``; this module turns any such class
into argparse flags (``--field-name``), reads YAML files into it, and names the nearest valid key when a
key is unknown.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs) -> Any:
    """A dataclass field with a help text (shown by ``--help`` and in generated YAML)."""
    if isinstance(default, (list, dict)):
        value = default
        kwargs["default_factory"] = lambda: type(value)(value)
        default = dataclasses.MISSING
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _base_type(tp):
    """The concrete type behind Optional[...] / X | None, and whether it is a list."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1] or (str,)
        return inner, True
    return tp, False


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field; defaults stay None so that only given flags override YAML."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        inner, is_list = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        help_text = f"{field.metadata.get('help', '')} (default: {default})"
        kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": help_text}
        if inner is bool:
            kwargs.update(type=_parse_bool, metavar="BOOL", nargs="?", const=True)
        elif is_list:
            kwargs.update(type=inner if inner in (int, float) else str, nargs="+")
        elif inner in (int, float):
            kwargs.update(type=inner)
        parser.add_argument(flag, **kwargs)


def load_config(cls: type[C], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Build ``cls`` from defaults, then a YAML file, then explicit overrides (``None`` values are ignored)."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(loaded, dict):
            raise UserError(f"config file {path} must hold a mapping of keys to values")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(cls, values)


def from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build ``cls`` from a mapping, refusing unknown keys with the nearest valid one named."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        normal = key.replace("-", "_")
        if normal not in names:
            near = difflib.get_close_matches(normal, names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(names)}"
            raise UserError(f"unknown config key '{key}' for {cls.__name__}{hint}")
    try:
        return cls(**{k.replace("-", "_"): v for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


def to_dict(config) -> dict[str, Any]:
    """A plain, YAML/JSON-ready dict of a config (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}
