"""Checks that run before any work: option values, types and ranges.

`check_number` is what every config's `__post_init__` uses for its numeric fields; `check_config_types`
checks every field of a method config (and its nested training config) against its annotation, so that
`-O ratio='"0.5"'` (a string) or `-O lam='{bad'` fails with the option's name instead of deep inside
training. The command-line preflight (everything a `prune` / `eval` / `report` needs before it loads a
model) is in `regprune.preflight`.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    """An int or float that is not a bool (finite or not: check_number says which)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_number(name: str, value, *, integer: bool = False, minimum=None, maximum=None, strict: bool = False,
                 strict_max: bool = False, optional: bool = False, hint: str = "") -> None:
    """Raise ValueError naming `name` unless `value` is a finite number (an int if `integer`) in range.

    `strict`: the minimum itself is excluded; `strict_max`: the maximum itself is excluded."""
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    if (integer and not is_int(value)) or (not integer and not is_number(value)):
        got = f"{value!r} (a string)" if isinstance(value, str) else repr(value)
        raise ValueError(f"{name} must be {kind}, got {got}{hint}")
    if not integer and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}{hint}")
    lo_bad = minimum is not None and (value <= minimum if strict else value < minimum)
    hi_bad = maximum is not None and (value >= maximum if strict_max else value > maximum)
    if lo_bad or hi_bad:
        if minimum is not None and maximum is not None:
            rng = f"in {'(' if strict else '['}{minimum:g}, {maximum:g}{')' if strict_max else ']'}"
        elif minimum is not None:
            rng = f"{'>' if strict else '>='} {minimum:g}"
        else:
            rng = f"{'<' if strict_max else '<='} {maximum:g}"
        raise ValueError(f"{name} must be {rng}, got {value!r}{hint}")


def _allowed(tp) -> tuple[set, bool] | None:
    """(base types, None allowed) of a simple annotation, or None when it is not a simple one."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        bases, optional = set(), False
        for a in typing.get_args(tp):
            if a is type(None):
                optional = True
            elif a in (int, float, str, bool):
                bases.add(a)
            else:
                return None
        return bases, optional
    if tp in (int, float, str, bool):
        return {tp}, False
    return None


def _type_ok(value, bases: set) -> bool:
    if isinstance(value, bool):
        return bool in bases
    if isinstance(value, int):
        return int in bases or float in bases
    if isinstance(value, float):
        return float in bases
    if isinstance(value, str):
        return str in bases
    return False


def check_value_type(name: str, value, annotation) -> None:
    """Raise ValueError naming `name` unless `value` fits a simple annotation (int / float / str / bool,
    optionally None); other annotations are not checked here."""
    spec = _allowed(annotation)
    if spec is None:
        return
    bases, optional = spec
    if (value is None and optional) or _type_ok(value, bases):
        return
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    want = " or ".join(names[b] for b in (int, float, str, bool) if b in bases)
    got = f"the string {value!r}" if isinstance(value, str) else repr(value)
    raise ValueError(f"option {name} must be {want}{' (or unset)' if optional else ''}, got {got}")


def field_types(cls) -> dict:
    """{field name: annotation} of a dataclass, with forward references resolved."""
    return typing.get_type_hints(cls)


def check_config_types(cfg, prefix: str = "") -> None:
    """Every field of the dataclass `cfg` (recursively) must match its annotation; raises ValueError naming
    the option otherwise."""
    hints = field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_config_types(value, prefix=f"{prefix}{f.name}.")
        else:
            check_value_type(prefix + f.name, value, hints.get(f.name))


__all__ = ["is_int", "is_number", "check_number", "check_value_type", "check_config_types", "field_types"]
