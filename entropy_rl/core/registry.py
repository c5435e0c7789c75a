"""A tiny typed registry: register(name, params_cls), get(name), names(). Duplicate names are errors.

Parameters are checked against the annotations of the registered `Params` dataclass (`coerce`), so a wrong
type fails at config time with its key path (`algorithm.advantage_params.eps: expected a number, got 'abc'`)
instead of mid-run. Floats must be finite and integers must fit in int64; ranges are each Params' own
`__post_init__` checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Generic, Mapping, TypeVar

T = TypeVar("T")

INT64_MAX = 2**63 - 1  # integers reach torch (seeds, sizes) as int64
BRIEF_CHARS = 60  # longest string shown in an error message
BRIEF_ITEMS = 4  # container items shown in an error message
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_UNION_TYPES = (typing.Union, type(int | None))  # Optional[X] / Union[...] and X | None


class RegistryError(KeyError):
    """Unknown or duplicate registry name; the message lists what is valid."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class ParamsError(TypeError, ValueError):
    """An unknown, mistyped or out-of-range parameter; the message starts with its key path.

    A TypeError (what unknown keyword arguments always raised) and a ValueError (so callers that report
    input errors as one line, like the CLI, catch it).
    """


def brief(value: Any, depth: int = 1) -> str:
    """A bounded repr for error messages: long strings cut, at most BRIEF_ITEMS items per container,
    `depth` levels of nesting, huge integers by bit length (a 312 MB message came from a plain repr)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= BRIEF_CHARS else f"{value[:BRIEF_CHARS]!r}... ({len(value):,} chars)"
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**30 else f"<a {value.bit_length()}-bit integer>"
    if isinstance(value, (list, tuple, dict)):
        if depth <= 0:
            return f"<{type(value).__name__} of {len(value):,} items>"
        items = list(value.items())[:BRIEF_ITEMS] if isinstance(value, dict) else list(value[:BRIEF_ITEMS])
        parts = (
            [f"{brief(k, 0)}: {brief(v, depth - 1)}" for k, v in items]
            if isinstance(value, dict)
            else [brief(v, depth - 1) for v in items]
        )
        more = f", ... ({len(value):,} items)" if len(value) > BRIEF_ITEMS else ""
        brackets = {dict: "{}", tuple: "()"}.get(type(value), "[]")
        return f"{brackets[0]}{', '.join(parts)}{more}{brackets[1]}"
    text = repr(value)
    return text if len(text) <= BRIEF_CHARS else text[:BRIEF_CHARS] + "..."


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` and return it converted.

    Supports Optional/Union, list[X], tuple[X, ...] (fixed length), dict[K, V], bare list/dict, bool, int,
    float, str and Any. An int becomes a float where a float is expected; a string that is clearly a
    number (`"3e-4"`, which YAML 1.1 reads as a string) becomes a float. Floats must be finite, integers
    must fit in int64, bools are not numbers.

    Args:
        tp: the type annotation (already resolved, not a string).
        value: plain data from YAML or keyword arguments.
        where: key path for messages, e.g. "algorithm.advantage_params.eps".

    Returns:
        The value, converted where described above (containers are copied).

    Raises:
        ParamsError: `where: expected ..., got <brief value>`.
    """
    origin = typing.get_origin(tp)
    if origin in _UNION_TYPES:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is not type(None):
                try:
                    return coerce(arg, value, where)
                except ParamsError as e:
                    errors.append(str(e))
        raise ParamsError(errors[0] if errors else f"{where}: invalid value {brief(value)}")
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {brief(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value) if isinstance(value, (list, tuple)) else args[:1]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ParamsError(f"{where}: expected a list of {len(args)} values, got {brief(value)}")
        return tuple(coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is dict or origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {brief(value)}")
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return {
            coerce(key_tp, k, f"{where} (key {brief(k)})"): coerce(value_tp, v, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true/false, got {brief(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {brief(value)}")
        if abs(value) > INT64_MAX:
            raise ParamsError(f"{where}: expected an integer that fits in int64, got {brief(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and value.strip() and set(value.strip()) <= _NUMBER_CHARS:
            try:
                value = float(value)  # PyYAML (YAML 1.1) reads `3e-4` as a string; accept what is clearly a number
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {brief(value)}")
        if isinstance(value, int) and abs(value) > 1e308 or isinstance(value, float) and not math.isfinite(value):
            raise ParamsError(f"{where}: expected a finite number, got {brief(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {brief(value)}")
        return value
    if tp is Any:
        return value
    raise ParamsError(f"{where}: unsupported schema type {tp}")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component.

    Attributes:
        name: registry key, also the config value.
        params_cls: frozen dataclass of hyper-parameters with defaults (the config schema).
        obj: the registered component (function or spec object).
        doc: one-line summary (first line of the module or function docstring).
    """

    name: str
    params_cls: type
    obj: T
    doc: str

    def make_params(self, **overrides: Any) -> Any:
        """Build `params_cls` from keyword overrides (see `parse_params`; messages start with the name)."""
        return self.parse_params(overrides, self.name)

    def parse_params(self, values: Mapping[str, Any], where: str) -> Any:
        """Build `params_cls` from a mapping, checking every value against its field's annotation.

        Args:
            values: field name -> plain value (from YAML, overrides or keyword arguments).
            where: key path that prefixes every message, e.g. "algorithm.method_params".

        Returns:
            The `params_cls` instance (values converted, e.g. "3e-4" -> 3e-4 for a float field).

        Raises:
            ParamsError: an unknown name (with a did-you-mean hint), a wrong type (`where.field: expected
                ...`), or a value the Params class itself rejects (its message, prefixed with `where`).
        """
        if not isinstance(values, Mapping):
            raise ParamsError(f"{where}: expected a mapping of parameters, got {brief(values)}")
        hints = typing.get_type_hints(self.params_cls)
        fields = {f.name for f in dataclasses.fields(self.params_cls) if f.init}
        kwargs = {}
        for key, value in values.items():
            if key not in fields:
                hint = difflib.get_close_matches(str(key), sorted(fields), n=1)
                suffix = f"; did you mean '{hint[0]}'?" if hint else f"; valid: {', '.join(sorted(fields)) or 'none'}"
                raise ParamsError(f"{where}: unknown parameter {brief(key)} of {self.name}{suffix}")
            kwargs[key] = coerce(hints[key], value, f"{where}.{key}")
        try:
            return self.params_cls(**kwargs)
        except (TypeError, ValueError, RegistryError) as e:  # the class's own range checks
            message = str(e).removeprefix(f"{self.name}: ")  # some checks already name the entry
            raise ParamsError(f"{where}: {message}") from None


class Registry(Generic[T]):
    """Name -> Entry map for one kind of component (policy losses, advantage estimators, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, params_cls: type, doc: str | None = None) -> Callable[[T], T]:
        """Decorator registering `obj` under `name`; registering a name twice raises."""
        if not dataclasses.is_dataclass(params_cls):
            raise TypeError(f"{self.kind} '{name}': params_cls must be a dataclass")

        def deco(obj: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing.obj is not obj:
                raise RegistryError(f"{self.kind} '{name}' is already registered")
            text = doc if doc is not None else (getattr(obj, "__doc__", None) or "")
            summary = text.strip().splitlines()[0] if text.strip() else ""
            self._entries[name] = Entry(name, params_cls, obj, summary)
            return obj

        return deco

    def get(self, name: str) -> Entry[T]:
        """Return the entry for `name`, or raise listing valid names and the closest match."""
        try:
            return self._entries[name]
        except KeyError:
            hint = difflib.get_close_matches(name, self.names(), n=1)
            suffix = f" Did you mean '{hint[0]}'?" if hint else ""
            raise RegistryError(f"unknown {self.kind} '{name}'. Valid: {', '.join(self.names())}.{suffix}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
