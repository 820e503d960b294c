"""One config system: typed dataclasses, loaded from YAML, overridden by dotted ``key=value`` pairs.

Every module that needs settings defines its own ``@dataclass`` section (``ModelConfig`` in ``dgtr.model``, …);
commands compose sections into a top-level dataclass.  ``load(cls, path, overrides)`` builds one, checking every key
and converting every value to the declared type, so a typo in a YAML file or on the command line is an error, not a
silently ignored setting.  ``save(cfg, path)`` writes the resolved config next to checkpoints and results.

A key that moved keeps old files loadable: a top-level dataclass lists ``RENAMED = {"old.dotted": "new.dotted"}``
(a ClassVar) and every loader (YAML file, overrides, ``from_dict`` of a saved config) moves the old key to the new
place, refusing one source that sets both to different values.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import FileFormatError, InputError, MissingFileError
from .files import write_text

T = TypeVar("T")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"config {where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except InputError:
                pass
        raise InputError(f"config {where}: {value!r} is not a {tp}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config {where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        out = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise InputError(f"config {where}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise InputError(f"config {where}: expected {tp.__name__}, got {value!r}") from None
    return value


def _get_dotted(d: dict, key: str, default=None):
    for p in key.split("."):
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def renamed(cls, data: dict, where: str) -> dict:
    """``data`` (a raw nested mapping; a changed copy when needed) with ``cls.RENAMED`` old keys moved to their new
    place.  Raises InputError when ``data`` sets an old key and its new key to different values."""
    moves = getattr(cls, "RENAMED", {})
    if not any(_get_dotted(data, old, _MISSING) is not _MISSING for old in moves):
        return data
    data = copy.deepcopy(data)
    for old, new in moves.items():
        v = _get_dotted(data, old, _MISSING)
        if v is _MISSING:
            continue
        section, _, leaf = old.rpartition(".")
        del (_get_dotted(data, section) if section else data)[leaf]
        cur = _get_dotted(data, new, _MISSING)
        if cur is not _MISSING and cur != v:
            raise InputError(f"config {where}: {old} ({v!r}) and {new} ({cur!r}) differ; {old} is now {new}: "
                             f"set {new} only")
        _set_dotted(data, new, v)
    return data


_MISSING = object()


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly partial) nested dict; unknown keys are errors (old keys of
    ``cls.RENAMED`` are moved first)."""
    data = renamed(cls, data, where or cls.__name__)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise InputError(f"config {where or cls.__name__}: unknown key(s) {sorted(unknown)}; valid: {sorted(names)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    base = cls()
    for k, v in kwargs.items():
        setattr(base, k, v)
    return base


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise InputError(f"override {key}: {p} is not a section")
    d[parts[-1]] = value


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(cls: type[T], path: str | os.PathLike | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Defaults of ``cls``, updated by the YAML file at ``path`` (if given), then by ``key.sub=value`` overrides.

    Override values are parsed as YAML scalars (``lr=2e-4``, ``flag=true``, ``names=[a,b]``).
    """
    data = to_dict(cls())
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MissingFileError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise FileFormatError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise FileFormatError(f"config file {p}: expected a mapping at top level")
        data = _merge(data, renamed(cls, loaded, f"file {p}"))
    return from_dict(cls, apply_overrides(data, overrides, getattr(cls, "RENAMED", {})))


def apply_overrides(data: dict, overrides: typing.Iterable[str], moves: dict[str, str] | None = None) -> dict:
    """``data`` (a nested dict, changed in place and returned) with ``key.sub=value`` overrides applied (an old key
    of ``moves`` sets its new key)."""
    for ov in overrides:
        if "=" not in ov:
            raise InputError(f"override {ov!r}: expected key=value")
        k, v = ov.split("=", 1)
        k = k.strip()
        _set_dotted(data, (moves or {}).get(k, k), yaml.safe_load(v) if v.strip() else "")
    return data


def save(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
