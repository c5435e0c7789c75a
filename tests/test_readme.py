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
