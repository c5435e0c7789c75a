"""Golden metrics: the first 3 steps of a tiny deterministic run, pinned (torchtune-style expected values).

If a change moves these numbers on purpose, re-pin them with `python tests/train/test_golden.py` (prints the
new GOLDEN dict) and say why in the commit message. CPU, 1 thread: the run is deterministic.
"""

from __future__ import annotations

import pytest

from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.train.loop import train

KEYS = ("entropy/token_mean", "reward/mean", "dynamics/cov_logp_adv", "policy/loss", "policy/grad_norm")
GOLDEN: dict[int, dict[str, float]] = {  # re-pinned 2026-11-30 (constraints.txt versions; see docs/LOG.md)
    1: {"entropy/token_mean": 0.5875290875633558, "reward/mean": 0.625, "dynamics/cov_logp_adv": 0.2792478364372115,
        "policy/loss": 0.10990382172167301, "policy/grad_norm": 6.888442516326904},
    2: {"entropy/token_mean": 0.48580343306064605, "reward/mean": 0.1875, "dynamics/cov_logp_adv": 0.2864272788243338,
        "policy/loss": 0.028840579092502594, "policy/grad_norm": 15.619887351989746},
    3: {"entropy/token_mean": 0.5053475607110529, "reward/mean": 0.5, "dynamics/cov_logp_adv": 0.34548000731034423,
        "policy/loss": 0.07652349770069122, "policy/grad_norm": 13.519109725952148},
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
