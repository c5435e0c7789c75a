"""`entropy-rl report` on a verl run's file-logger JSONL (a hand-written file in verl 0.9.1's format)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from entropy_rl.report.cli import cmd_report
from entropy_rl.report.data import load_run
from entropy_rl.report.external_verl import NOT_MAPPED, VERL_KEYS, is_verl_log


def verl_record(step: int, h: float) -> dict:
    """One line as verl.utils.tracking.FileLogger writes it: {"step": N, "data": {...}}."""
    return {"step": step, "data": {
        "critic/score/mean": 0.2 + 0.1 * step, "response_length/mean": 310.5, "response_length/max": 1024.0,
        "actor/grad_norm": 0.4, "actor/lr": 1e-6, "timing_s/step": 95.0, "timing_s/gen": 60.0,
        "actor/entropy": h * 1.3, "actor/pg_clipfrac": 0.01, "actor/ppo_kl": 1e-4,
        "entropy/token_mean": h, "entropy/p90": 2 * h, "dynamics/cov_logp_adv": 0.02,
        "actor/policy/clipfrac": 0.02, "training/global_step": step}}


@pytest.fixture
def verl_log(tmp_path: Path) -> Path:
    lines = [json.dumps({"step": 0, "data": {"val-core/math/acc/mean@1": 0.3}})]  # validation before training
    lines += [json.dumps(verl_record(s, 0.8 - 0.1 * s)) for s in (3, 1, 2)]
    lines.append("{not json")
    path = tmp_path / "qwen_steer.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_verl_keys_map_onto_ours_where_the_definitions_match(verl_log: Path) -> None:
    run = load_run(verl_log, "verl")
    assert [r["step"] for r in run.rows] == [1, 2, 3]  # sorted; the validation-only step 0 has no mapped key
    first = run.rows[0]
    assert first == {"step": 1, "reward/mean": pytest.approx(0.3), "rollout/response_len_mean": 310.5,
                     "rollout/response_len_max": 1024.0, "policy/grad_norm": 0.4, "policy/lr": 1e-6,
                     "timing/step_s": 95.0, "entropy/token_mean": pytest.approx(0.7),
                     "entropy/p90": pytest.approx(1.4), "dynamics/cov_logp_adv": 0.02}
    notes = "\n".join(run.problems)
    for key in ("actor/entropy", "actor/pg_clipfrac", "actor/ppo_kl"):
        assert f"{key} not mapped: {NOT_MAPPED[key]}" in notes
    assert "critic/rewards/mean not mapped" not in notes  # only keys the log has are listed
    assert "1 malformed lines skipped" in notes
    assert set(VERL_KEYS.values()) <= set(first)


def test_a_plain_verl_log_says_how_to_get_our_entropy(tmp_path: Path) -> None:
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"step": 1, "data": {"actor/entropy": 0.5, "critic/score/mean": 0.1}}) + "\n")
    run = load_run(path, "plain")
    assert run.rows == [{"step": 1, "reward/mean": 0.1}]
    assert any("trainer.v1.trainer_mode=entropy_rl" in p for p in run.problems)


def test_only_verl_records_are_recognised(tmp_path: Path, verl_log: Path) -> None:
    ours = tmp_path / "metrics.jsonl"
    ours.write_text(json.dumps({"step": 1, "entropy/token_mean": 0.5}) + "\n")
    assert is_verl_log(verl_log) and not is_verl_log(ours) and not is_verl_log(tmp_path)


def test_report_command_renders_a_verl_log_beside_it(verl_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cmd_report(argparse.Namespace(run_dirs=[str(verl_log)], out=None, labels=None, summary=None))
    page = verl_log.parent / "qwen_steer_report" / "report.html"
    assert capsys.readouterr().out.strip() == str(page)
    html = page.read_text()
    assert "actor/entropy not mapped" in html and "qwen_steer.jsonl" in html
    with pytest.raises(FileNotFoundError, match="not a verl file-logger JSONL"):
        cmd_report(argparse.Namespace(run_dirs=[str(verl_log.parent / "missing.jsonl")], out=None, labels=None,
                                      summary=None))
