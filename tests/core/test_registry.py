"""Registry mechanics: duplicates, lookup errors with hints, params validation."""

from dataclasses import dataclass

import pytest

from entropy_rl.core.registry import Registry, RegistryError


@dataclass(frozen=True)
class P:
    alpha: float = 1.0


def test_register_get_names_and_duplicates() -> None:
    reg: Registry = Registry("thing")

    @reg.register("one", P)
    def one() -> None:
        """First line is the doc."""

    assert reg.names() == ["one"] and reg.get("one").doc == "First line is the doc."
    reg.register("one", P)(one)  # re-registering the same object is harmless (re-import)

    def other() -> None: ...

    with pytest.raises(RegistryError, match="already registered"):
        reg.register("one", P)(other)
    with pytest.raises(RegistryError, match="Did you mean 'one'"):
        reg.get("onee")


def test_params_must_be_a_dataclass_and_unknown_params_fail() -> None:
    reg: Registry = Registry("thing")
    with pytest.raises(TypeError):
        reg.register("x", dict)
    reg.register("p", P)(lambda: None)
    with pytest.raises(TypeError, match="did you mean 'alpha'"):
        reg.get("p").make_params(alpah=2.0)
    assert reg.get("p").make_params(alpha=2.0).alpha == 2.0
