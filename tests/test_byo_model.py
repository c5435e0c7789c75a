"""README "Bring your own model and data": its commands, run verbatim, train a local tiny Qwen2 checkpoint on a
20-line JSONL math file with math-verify rewards (checkpoint, metrics and evals as with the built-in model)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.train.checkpoint import latest_checkpoint

from tiny_setup import import_extra  # noqa: E402  (tests/ is on sys.path via conftest)

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Bring your own model and data"


def byo_commands() -> tuple[str, list[str]]:
    """(install command, the run commands) from the README section's two bash blocks."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[: section.index("\n## ", len(SECTION))]
    install, run = re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)
    return install, run.splitlines()


def test_the_install_command_names_the_math_extra() -> None:
    install, _ = byo_commands()
    assert install == 'pip install -q -c constraints.txt -e ".[math]"'


@pytest.mark.slow  # three processes that each import torch (~20 s on 2 busy cores)
def test_readme_commands_train_a_local_checkpoint_on_a_jsonl_math_file(tmp_path: Path) -> None:
    import_extra("math_verify")
    _, commands = byo_commands()
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the commands run from a checkout's root
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert len((tmp_path / "math.jsonl").read_text().splitlines()) == 20
    assert json.loads((tmp_path / "tiny-qwen2" / "config.json").read_text())["model_type"] == "qwen2"
    run = tmp_path / "runs" / "byo"
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert {"reward/format_error_rate", "reward/mean", "entropy/token_mean"} <= set(rows[1])
    assert {"eval/pass@4", "eval/maj@4"} <= set(rows[0]) & set(rows[2])
    assert latest_checkpoint(run) is not None and (latest_checkpoint(run) / "model" / "tokenizer.json").is_file()
