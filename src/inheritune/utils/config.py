"""Configs are dataclasses: field docs in ``metadata["help"]``, loadable from YAML, overridable from flags.

A config class only declares fields and validates them in ``__post_init__``; this module turns any such class
into argparse flags (``--field-name``), reads YAML files into it, and names the nearest valid key when a
key is unknown. A field whose type is itself a config class is a section (``train:`` in YAML); its fields keep
their plain flag names (``--lr``) and may also be given flat in YAML, as long as no name is taken twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from inheritune.utils.errors import UserError

C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, help: str = "", low: float | None = None, high: float | None = None,
           **kwargs) -> Any:
    """A dataclass field with a help text (shown by ``--help`` and in generated YAML) and, for numbers, the
    closed range ``[low, high]`` its value (each item of a list) must lie in, checked where configs are built."""
    if isinstance(default, (list, dict)):
        value = default
        kwargs["default_factory"] = lambda: type(value)(value)
        default = dataclasses.MISSING
    return dataclasses.field(default=default, metadata={"help": help, "low": low, "high": high}, **kwargs)


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


def sections(cls: type) -> dict[str, type]:
    """The fields of ``cls`` that are config classes themselves: name -> class."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                         section: str = "") -> None:
    """One ``--flag`` per dataclass field (a section's fields by their own names, stored as ``section.name``);
    defaults stay None so that only given flags override YAML."""
    hints = typing.get_type_hints(cls)
    nested = sections(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        if field.name in nested:
            add_config_arguments(parser, nested[field.name], skip=tuple(skip) + tuple(f.name for f in dataclasses.fields(cls)),
                                 section=field.name)
            continue
        inner, is_list = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        help_text = f"{field.metadata.get('help', '')} (default: {default})"
        dest = f"{section}.{field.name}" if section else field.name
        kwargs: dict[str, Any] = {"dest": dest, "default": None, "help": help_text}
        if inner is bool:
            kwargs.update(type=_parse_bool, metavar="BOOL", nargs="?", const=True)
        elif is_list:
            kwargs.update(nargs="+")  # items are coerced to the field's type where the config is built
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
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, dot, name = key.partition(".")
        if dot:
            values.setdefault(section, {})
            if not isinstance(values[section], dict):
                raise UserError(f"config key '{section}' must be a section (a mapping), not {values[section]!r}")
            values[section][name] = value
        else:
            values[key] = value
    return from_dict(cls, values)


def from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build ``cls`` from a mapping, refusing unknown keys with the nearest valid one named. Keys of a section
    may also come flat; a section given as a mapping is built the same way."""
    names = [f.name for f in dataclasses.fields(cls)]
    nested = sections(cls)
    owner = {f.name: section for section, sub in nested.items() for f in dataclasses.fields(sub)}
    own: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {section: {} for section in nested}
    for key, value in values.items():
        normal = key.replace("-", "_")
        if normal in nested:
            if isinstance(value, dict):
                parts[normal].update(value)
                continue
            if not dataclasses.is_dataclass(value):
                raise UserError(f"config key '{key}' must be a section (a mapping), not {value!r}")
            own[normal] = value
        elif normal in names:
            own[normal] = value
        elif normal in owner:
            parts[owner[normal]][normal] = value
        else:
            candidates = names + list(owner)
            near = difflib.get_close_matches(normal, candidates, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(candidates)}"
            raise UserError(f"unknown config key '{key}' for {cls.__name__}{hint}")
    for section, part in parts.items():
        if section not in own:
            own[section] = from_dict(nested[section], part)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in own.items():
        if name not in nested:
            own[name] = coerce(name, value, hints[name])
            _check_range(name, own[name], fields[name].metadata)
    try:
        return cls(**own)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce(key: str, value: Any, tp) -> Any:
    """``value`` as the field's type, once, where configs are built (YAML and flags alike): quoted booleans and
    numbers ("false", "3e-4": YAML 1.1 reads the latter as a string) become what they say; anything that is not
    the type (a fraction for a count, a list for a number, a non-finite float) is refused with the key named."""
    inner, is_list = _base_type(tp)
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    if value is None and optional:
        return None
    if is_list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_scalar(key, item, inner) for item in items]
    return _scalar(key, value, inner)


def _check_range(key: str, value: Any, metadata) -> None:
    low, high = metadata.get("low"), metadata.get("high")
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        if (low is not None and item < low) or (high is not None and item > high):
            bounds = f"between {_plain(low)} and {_plain(high)}" if low is not None and high is not None else \
                (f">= {_plain(low)}" if low is not None else f"<= {_plain(high)}")
            raise UserError(f"'{key}' (--{key.replace('_', '-')}) must be {bounds}, got {item!r}")


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _refuse(key: str, value: Any, expected: str):
    raise UserError(f"'{key}' (--{key.replace('_', '-')}) must be {expected}, got {value!r}")


def _scalar(key: str, value: Any, tp) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        _refuse(key, value, "true or false")
    if tp is int:
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip()) if any(c in value.lower() for c in ".en") else int(value.strip())
            except ValueError:
                _refuse(key, value, "a whole number")
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            _refuse(key, value, "a whole number")
        if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
            _refuse(key, value, "a whole number")
        return int(number)
    if tp is float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                _refuse(key, value, "a number")
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            _refuse(key, value, "a number")
        if not math.isfinite(number):
            _refuse(key, value, "a finite number")
        return float(number)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            _refuse(key, value, "a string")
        return value if isinstance(value, str) else str(value)
    return value


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}: sections' keys with their section's name."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_dict(config) -> dict[str, Any]:
    """A plain, YAML/JSON-ready dict of a config (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}
