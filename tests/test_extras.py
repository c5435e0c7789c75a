"""CI must run the extras' tests it installs: `import_extra` skips only when the extra is not required."""

from __future__ import annotations

import pytest

from tiny_setup import REQUIRE_EXTRAS_ENV, import_extra  # noqa: E402  (tests/ is on sys.path via conftest)

ABSENT = "entropy_rl_no_such_extra"


def test_an_absent_extra_skips_when_not_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_EXTRAS_ENV, "verl,trl")
    with pytest.raises(pytest.skip.Exception):
        import_extra(ABSENT)


def test_an_absent_required_extra_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_EXTRAS_ENV, f"verl,{ABSENT}")
    with pytest.raises(ModuleNotFoundError, match=ABSENT):
        import_extra(ABSENT)


def test_a_present_extra_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_EXTRAS_ENV, "json")
    assert import_extra("json").dumps([1]) == "[1]"
