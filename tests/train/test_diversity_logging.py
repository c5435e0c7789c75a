"""The trainer logs diversity/vendi and diversity/answer_entropy every step, computed from exactly the batch's
responses: recomputed here from completions.jsonl, which holds the whole batch of step 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from entropy_rl.metrics.diversity import group_diversity
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.train.loop import train


def test_diversity_is_logged_from_the_rollout_batch(tiny_config, run_dir: Path) -> None:
    train(tiny_config("train.log_completions_n=16", "train.steps=2"), run_dir, progress=False)  # 4 prompts x 4
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert all("diversity/vendi" in r for r in rows)
    step1 = [c for c in read_jsonl(run_dir / "completions.jsonl", decode_nonfinite=False) if c["step"] == 1]
    assert len(step1) == 16
    expected = group_diversity([c["completion"] for c in step1], [c["answer"] for c in step1], [c["group"] for c in step1])
    assert {k: rows[0][k] for k in expected} == pytest.approx(expected, rel=1e-12)
    assert 1.0 <= rows[0]["diversity/vendi"] <= 4.0
