"""How ``params.yaml`` values are checked, and how a failed check becomes one line.

The field types and rule helpers used by the sections in :mod:`reprotrain.config`, and
:func:`one_line`, which turns pydantic's multi-line report into the line users want
(``params.yaml: finetune.learning_rate = -1.0: must be > 0.0``). Kept apart from the
sections so that ``config.py`` reads as the list of what can be set.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import pydantic
from pydantic import BeforeValidator, ConfigDict, Field, Strict, StringConstraints
from pydantic_core import PydanticCustomError


def _no_bool(value: Any) -> Any:
    """YAML ``yes``/``true`` must not pass as the number 1."""
    if isinstance(value, bool):
        raise ValueError("must be a number")
    return value


#: Strict where YAML would otherwise coerce surprisingly (``true`` → 1, ``"yes"`` → True);
#: lax for floats, because YAML 1.1 reads ``1e-5`` (no dot) as a string.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, BeforeValidator(_no_bool)]
Str = Annotated[str, StringConstraints(min_length=1)]


def rule_error(rule: str, *, suffix: str | None = None, value: Any = None) -> PydanticCustomError:
    """A failed custom rule; :func:`one_line` reports it as ``KEY[suffix] = VALUE: rule``."""
    ctx: dict[str, Any] = {"rule": rule}
    if suffix is not None:
        ctx |= {"suffix": suffix, "value": value}
    return PydanticCustomError("reprotrain", "{rule}", ctx)


def field(default: Any, help: str, *, min: Any = None, max: Any = None, **rules: Any) -> Any:
    """A field with its help text and range rules (``min``/``max`` inclusive, ``gt``/``lt``)."""
    return Field(default=default, description=help, ge=min, le=max, **rules)


def section(cls: type) -> type:
    """A frozen pydantic dataclass that rejects unknown keys (so ``dataclasses.replace`` and
    ``asdict`` keep working on config sections)."""
    return pydantic.dataclasses.dataclass(cls, frozen=True, config=ConfigDict(extra="forbid"))


def _class_weight(value: Any) -> str | dict[str, float]:
    """``'none'``, ``'balanced'`` or ``{class_name: weight > 0}`` (a union pydantic would
    report as several errors; one rule, one message)."""
    if isinstance(value, str) and value in ("none", "balanced"):
        return value
    if isinstance(value, dict):
        out = {}
        for name, w in value.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or w <= 0:
                raise rule_error("must be > 0", suffix=f".{name}", value=w)
            out[str(name)] = float(w)
        return out
    raise rule_error("must be 'none', 'balanced' or a map")


ClassWeight = Annotated[str | dict[str, float], BeforeValidator(_class_weight)]

_CUSTOM_REF = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


def builtin_or_ref(names: Iterable[str]) -> Callable[[Any], str]:
    """A validator accepting one of ``names`` or ``package.module:function`` (a user's own
    builder, imported by the stage)."""
    names = tuple(names)

    def check(value: Any) -> str:
        if isinstance(value, str) and (value in names or re.match(_CUSTOM_REF, value)):
            return value
        raise rule_error(f"must be one of {', '.join(names)} or 'package.module:function'")

    return check


# --------------------------------------------------------------------- errors → one line

_RULES = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}
_TYPES = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "int_parsing": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a non-empty string",
    "string_too_short": "must be a non-empty string",
    "dataclass_type": "must be a mapping (a section)",
    "dataclass_exact_type": "must be a mapping (a section)",
    "dict_type": "must be a mapping",
}


def _key_path(loc: tuple[Any, ...], raw: Any) -> list[str]:
    """The part of pydantic's ``loc`` that names keys of the input (drops union-branch tags
    such as ``'int'`` or ``'function-before[...]'``)."""
    keys, node = [], raw
    for part in loc:
        if not (isinstance(node, dict) and part in node):
            break
        keys.append(str(part))
        node = node[part]
    return keys


def _allowed_keys(root: type, keys: list[str]) -> list[str]:
    """The field names of the section at ``keys`` under ``root`` (for the unknown-key line)."""
    cls: Any = root
    for k in keys:
        cls = typing.get_type_hints(cls).get(k)
        if not dataclasses.is_dataclass(cls):
            return []
    return sorted(f.name for f in dataclasses.fields(cls))


def one_line(err: dict[str, Any], raw: dict[str, Any], root: type) -> str:
    """One pydantic error on ``raw`` (validated as ``root``) → ``params.yaml: KEY = VALUE:
    RULE``, or the unknown-key line listing what is allowed there."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    keys = _key_path(tuple(err["loc"]), raw)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        where = ".".join(keys[:-1]) or "the top level"
        allowed = ", ".join(_allowed_keys(root, keys[:-1]))
        return f"params.yaml: unknown key '{'.'.join(keys)}'; allowed in {where}: {allowed}"
    key = ".".join(keys)
    if kind == "reprotrain":
        key += ctx.get("suffix", "")
        value = ctx.get("value", value)
        rule = ctx["rule"]
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
    elif kind in _RULES:
        bound = next(iter(ctx.values()))
        if isinstance(bound, float) and isinstance(value, int | str):
            value = float(value)
        rule = f"must be {_RULES[kind]} {bound}"
    elif kind == "literal_error":
        rule = f"must be one of {ctx.get('expected', '')}"
    else:
        rule = _TYPES.get(kind) or err["msg"].removeprefix("Value error, ")
    return f"params.yaml: {key} = {value!r}: {rule}"
