"""Generated docs stay in sync with the code."""

from pathlib import Path

from entropy_rl.catalogue import render_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_methods_doc_is_generated_from_the_registry() -> None:
    assert (ROOT / "docs" / "methods.md").read_text() == render_markdown(), (
        "docs/methods.md is stale: run `entropy-rl methods --markdown > docs/methods.md`"
    )
