"""Registry mechanics: duplicates, lookup errors with hints, params validation and type checks."""

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

import pytest

from entropy_rl.core.registry import ParamsError, Registry, RegistryError, brief, coerce


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


@dataclass(frozen=True)
class Typed:
    rate: float = 0.1
    steps: int = 3
    flag: bool = False
    mode: str = "a"
    cap: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0, got {self.rate}")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rate": "abc"}, "algo.rate: expected a number, got 'abc'"),
        ({"rate": float("nan")}, "algo.rate: expected a finite number, got nan"),
        ({"rate": True}, "algo.rate: expected a number, got True"),
        ({"steps": 1.5}, "algo.steps: expected an integer, got 1.5"),
        ({"steps": 10**29}, "algo.steps: expected an integer that fits in int64"),
        ({"flag": "yes"}, "algo.flag: expected true/false"),
        ({"mode": ["a"]}, "algo.mode: expected a string, got \\['a'\\]"),
        ({"cap": "x"}, "algo.cap: expected a number"),
        ({"extra": [1]}, "algo.extra: expected a mapping"),
        ({"extra": {1: 2}}, "algo.extra \\(key 1\\): expected a string"),
        ({"sizes": [1, "b"]}, "algo.sizes\\[1\\]: expected an integer, got 'b'"),
        ({"rate": -1.0}, "algo: rate must be >= 0, got -1.0"),
        ({"rtae": 1.0}, "algo: unknown parameter 'rtae' of t; did you mean 'rate'"),
    ],
)
def test_params_are_type_checked_with_the_key_path(values: dict, message: str) -> None:
    reg: Registry = Registry("thing")
    reg.register("t", Typed)(lambda: None)
    with pytest.raises(ParamsError, match=message) as info:
        reg.get("t").parse_params(values, "algo")
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)  # old callers catch either


def test_params_are_converted() -> None:
    reg: Registry = Registry("thing")
    reg.register("t", Typed)(lambda: None)
    p = reg.get("t").make_params(rate="3e-4", cap=1, extra={"k": [1]})  # YAML 1.1 reads 3e-4 as a string
    assert p.rate == 3e-4 and isinstance(p.cap, float) and p.cap == 1.0 and p.extra == {"k": [1]}
    with pytest.raises(TypeError, match="^t.steps: expected an integer"):  # make_params names the entry
        reg.get("t").make_params(steps="3")


def test_every_registered_params_class_has_checkable_annotations() -> None:
    import entropy_rl.advantages  # noqa: F401
    import entropy_rl.methods  # noqa: F401
    from entropy_rl.core.advantage import ADVANTAGES
    from entropy_rl.core.policy_loss import POLICY_LOSSES
    from entropy_rl.tasks import TASKS

    for reg in (POLICY_LOSSES, ADVANTAGES, TASKS):
        for name in reg.names():
            entry = reg.get(name)
            for f in dataclasses.fields(entry.params_cls):
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                hint = typing.get_type_hints(entry.params_cls)[f.name]
                assert coerce(hint, default, f"{name}.{f.name}") == default, f"{name}.{f.name}: {hint}"


def test_brief_bounds_any_value() -> None:
    assert brief("x" * 10_000).endswith("... (10,000 chars)") and len(brief("x" * 10_000)) < 100
    assert brief(10**5000) == "<a 16610-bit integer>"  # repr() itself raises past 4,300 digits
    nested: list = []
    for _ in range(10_000):
        nested = [nested] * 9
    assert len(brief(nested)) < 200  # shared (aliased) structure is never expanded
