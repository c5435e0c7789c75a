"""compare: run planning (variants, seeds, validation before training) and the summary table, without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entropy_rl.train.compare import plan_runs, summarize_run, summary_table
from entropy_rl.train.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_plan_resolves_variant_files_registry_keys_and_seeds(tmp_path: Path) -> None:
    specs = plan_runs({"train": {"seed": 3}}, ["clip_higher", "steer"], 2, tmp_path, REPO / "configs" / "methods", None)
    assert [(s.method, s.seed) for s in specs] == [("clip_higher", 3), ("clip_higher", 4), ("steer", 3), ("steer", 4)]
    assert specs[0].cfg.algorithm.method_params == {"eps_high": 0.28}  # from configs/methods/clip_higher.yaml
    assert specs[2].cfg.algorithm.method == "steer" and specs[3].run_dir == tmp_path / "steer" / "seed4"


def test_plan_fails_fast_naming_the_method(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="method 'ppo_clipp'"):
        plan_runs({}, ["ppo_clip", "ppo_clipp"], 1, tmp_path, tmp_path, None)


def test_summary_of_runs(tmp_path: Path) -> None:
    # entropy 1.0 for 5 steps then 0.4 (<= half of the first-5 mean) from step 6; eval at step 20
    for seed, reward in ((0, 0.2), (1, 0.4)):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        rows = [{"step": s, "entropy/token_mean": 1.0 if s <= 5 else 0.4, "reward/mean": reward, "timing/step_s": 0.5}
                for s in range(1, 21)]
        rows[-1].update({"eval/pass@1": 0.3, "eval/pass@8": 0.6})
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = [summarize_run(tmp_path / "seed0"), summarize_run(tmp_path / "seed1"), summarize_run(tmp_path / "missing")]
    assert runs[0] == {"final_entropy": 0.4, "final_reward": 0.2, "pass@1": 0.3, "pass@8": 0.6,
                       "steps_to_half_entropy": 6, "wall_s": 10.0}
    assert runs[2]["final_reward"] is None  # a failed run does not break the table
    table = summary_table({"m": runs})
    # reward over the two finished seeds: mean 0.3, sample std 0.141
    assert "| m | 3 | 0.400 ± 0.000 | 0.300 ± 0.141 |" in table and "6 ± 0 (2/3)" in table


def test_summary_ignores_the_step_0_eval_row(tmp_path: Path) -> None:
    rows = [{"step": 0, "eval/pass@1": 0.5, "eval/pass@8": 0.9, "timing/eval_s": 1.0}]  # the warm start's eval
    rows += [{"step": s, "entropy/token_mean": 1.0, "reward/mean": 0.1, "timing/step_s": 0.5} for s in range(1, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert summarize_run(tmp_path)["final_entropy"] == 1.0
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")  # failed before its first RL step
    assert summarize_run(tmp_path)["final_reward"] is None
