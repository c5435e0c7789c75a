"""Golden metrics: the first 3 steps of a tiny deterministic run, pinned (torchtune-style expected values).

If a change moves these numbers on purpose, re-pin them with `python tests/train/test_golden.py` (prints the
new GOLDEN dict) and say why in the commit message. CPU, 1 thread: the run is deterministic.
"""

from __future__ import annotations

import pytest

from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.train.loop import train

KEYS = ("entropy/token_mean", "reward/mean", "dynamics/cov_logp_adv", "policy/loss", "policy/grad_norm")
GOLDEN: dict[int, dict[str, float]] = {  # pinned 2026-11-23 with `python tests/train/test_golden.py`
    1: {"entropy/token_mean": 0.8236969216002359, "reward/mean": 0.4375, "dynamics/cov_logp_adv": 0.23133488573289213,
        "policy/loss": 0.02253945078700781, "policy/grad_norm": 4.18887186050415},
    2: {"entropy/token_mean": 0.5906181432762925, "reward/mean": 0.375, "dynamics/cov_logp_adv": 0.10803815287486244,
        "policy/loss": -0.009849097579717636, "policy/grad_norm": 1.7883437583222985},
    3: {"entropy/token_mean": 0.5901889694125756, "reward/mean": 0.1875, "dynamics/cov_logp_adv": 0.24127984695843518,
        "policy/loss": -0.013469912111759186, "policy/grad_norm": 0.6301507204771042},
}


def golden_rows(tiny_config, run_dir) -> list[dict[str, float]]:
    train(tiny_config("optim.mini_batches=2", "optim.lr=0.001"), run_dir, progress=False)
    return [{k: r[k] for k in KEYS} for r in read_jsonl(run_dir / "metrics.jsonl")]


def test_first_steps_match_the_pinned_values(tiny_config, run_dir) -> None:
    rows = golden_rows(tiny_config, run_dir)
    assert len(rows) == len(GOLDEN) == 3
    for step, row in enumerate(rows, 1):
        for key in KEYS:
            assert row[key] == pytest.approx(GOLDEN[step][key], rel=1e-5, abs=1e-7), (step, key)


def pin() -> None:
    """Print a fresh GOLDEN dict (run this file as a script)."""
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import conftest
    from entropy_rl.train.config import load_config

    class Factory:  # the one method of pytest's tmp_path_factory the fixture uses
        def mktemp(self, name: str) -> Path:
            path = Path(tempfile.mkdtemp()) / name
            path.mkdir()
            return path

    warm = conftest.warm_model_dir.__wrapped__(Factory())
    run_dir = Path(tempfile.mkdtemp()) / "run"
    rows = golden_rows(lambda *o: load_config(None, conftest.TINY + [f"model.path={warm}", *o]), run_dir)
    print({step: row for step, row in enumerate(rows, 1)})


if __name__ == "__main__":
    pin()
