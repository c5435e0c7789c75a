"""The README's two commands stay true: the test command is the one CI runs, verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_first_two_commands_are_demo_then_tests() -> None:
    demo, tests = readme_commands()[:2]
    assert demo.endswith("entropy-rl demo") and "torch==2.13.0" in demo
    assert tests.endswith("python -m pytest -q") and "torch==2.13.0" in tests


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    assert readme_commands()[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_layout_tree_matches_the_package() -> None:
    """Every subpackage and top-level module of entropy_rl, and every top-level folder of the repository, is in the
    README's layout tree, and every entry the tree names exists."""
    text = (ROOT / "README.md").read_text()
    tree = text[text.index("## Layout"):]
    tree = tree[tree.index("```") + 3 : tree.index("```", tree.index("```") + 3)]
    named = set(re.findall(r"^\s{0,2}([\w.]+/?)\s", tree, flags=re.M)) - {"entropy_rl/"}
    package = ROOT / "entropy_rl"
    actual = {p.name + "/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    actual |= {p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    top = {p.name + "/" for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in
           ("entropy_rl", "build", "runs", "out") and not p.name.endswith(".egg-info")}
    assert actual | top <= named, f"missing from the README layout: {sorted((actual | top) - named)}"
    assert named <= actual | top, f"named in the README layout but absent: {sorted(named - actual - top)}"
