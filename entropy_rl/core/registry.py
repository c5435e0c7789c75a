"""A tiny typed registry: register(name, params_cls), get(name), names(). Duplicate names are errors."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown or duplicate registry name; the message lists what is valid."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


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
        """Build `params_cls` from overrides; unknown names raise with a did-you-mean hint."""
        fields = {f.name for f in dataclasses.fields(self.params_cls)}
        for key in overrides:
            if key not in fields:
                hint = difflib.get_close_matches(key, sorted(fields), n=1)
                suffix = f"; did you mean '{hint[0]}'?" if hint else f"; valid: {sorted(fields)}"
                raise TypeError(f"{self.name}: unknown parameter '{key}'{suffix}")
        return self.params_cls(**overrides)


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
            raise RegistryError(
                f"unknown {self.kind} '{name}'. Valid: {', '.join(self.names())}.{suffix}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
