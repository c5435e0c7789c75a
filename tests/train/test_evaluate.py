"""Evaluation: the step-0 eval of the warm start (its own row, RL steps bit-identical with and without it,
once across resumes), `entropy-rl eval` on a run directory, and maj@k next to pass@k."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from entropy_rl.cli import main
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.models import load_pretrained
from entropy_rl.tasks import make_task
from entropy_rl.tasks.base import Problem, RewardResult
from entropy_rl.train.checkpoint import latest_checkpoint, list_checkpoints
from entropy_rl.train import evaluate as ev
from entropy_rl.train.evaluate import evaluate, find_model
from entropy_rl.train.loop import rollout_sampling, train

GOLDEN_CFG = ("optim.mini_batches=2", "optim.lr=0.001")  # tests/train/test_golden.py's run
EVAL = ("train.eval_every=2", "train.eval_problems=6", "train.eval_samples=4")


def rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl rows without wall-clock timings."""
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in read_jsonl(run_dir / "metrics.jsonl")]


def without_eval(rs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in rs if r["step"] >= 1]


def test_step_0_eval_is_its_own_row_and_leaves_the_rl_steps_bit_identical(tiny_config, tmp_path: Path) -> None:
    train(tiny_config(*GOLDEN_CFG), tmp_path / "plain", progress=False)
    train(tiny_config(*GOLDEN_CFG, *EVAL), tmp_path / "eval", progress=False)
    plain, evald = rows(tmp_path / "plain"), rows(tmp_path / "eval")
    assert [r["step"] for r in evald] == [0, 1, 2, 3]
    assert set(read_jsonl(tmp_path / "eval" / "metrics.jsonl")[0]) == {
        "step", "eval/accuracy", "eval/pass@1", "eval/pass@2", "eval/pass@4", "eval/maj@2", "eval/maj@4", "timing/eval_s"}
    assert "eval/pass@4" in evald[2] and "eval/pass@4" in evald[3] and "eval/pass@4" not in evald[1]
    assert without_eval(evald) == plain  # exact: the evals drew from their own RNG and restored it


def test_step_0_eval_scores_the_model_rl_starts_from(tiny_config, warm_model_dir: Path, run_dir: Path) -> None:
    cfg = tiny_config(*EVAL)
    train(cfg, run_dir, progress=False)
    model, tok = load_pretrained(warm_model_dir)
    task = make_task(cfg.task.name, **cfg.task.params)
    problems = task.prompts("eval", cfg.train.eval_problems, seed=cfg.train.seed)
    expected = evaluate(model, tok, task, problems, cfg.train.eval_samples, rollout_sampling(cfg), seed=cfg.train.seed)
    assert rows(run_dir)[0] == {"step": 0, **expected}


@pytest.mark.parametrize("cut", ["after_step_1", "before_any_checkpoint"])
def test_resume_logs_the_step_0_eval_once(tiny_config, tmp_path: Path, cut: str) -> None:
    cfg = tiny_config("train.steps=2", "train.save_every=1", *EVAL)
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg, full, progress=False)
    train(cfg, part, progress=False)
    keep = 1 if cut == "after_step_1" else 0
    for c in list_checkpoints(part)[keep:]:
        shutil.rmtree(c)
    train(cfg, part, resume=True, progress=False)
    assert [r["step"] for r in rows(part)] == [0, 1, 2]
    assert rows(part) == rows(full)


def test_zero_steps_evaluates_the_start_only(tiny_config, run_dir: Path) -> None:
    result = train(tiny_config("train.steps=0", *EVAL), run_dir, progress=False)
    assert [r["step"] for r in rows(run_dir)] == [0]
    assert result.final_metrics["eval/pass@4"] == rows(run_dir)[0]["eval/pass@4"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evals_leave_the_rl_steps_unchanged_on_cuda(tiny_config, tmp_path: Path) -> None:
    """On CUDA sampling draws from the device generator: evaluate must fork and restore it too."""
    train(tiny_config(*GOLDEN_CFG, "train.device=cuda"), tmp_path / "plain", progress=False)
    train(tiny_config(*GOLDEN_CFG, "train.device=cuda", *EVAL), tmp_path / "eval", progress=False)
    assert without_eval(rows(tmp_path / "eval")) == rows(tmp_path / "plain")


def test_find_model_resolves_model_and_run_directories(tiny_config, warm_model_dir: Path, tmp_path: Path) -> None:
    assert find_model(warm_model_dir) == (warm_model_dir, None)
    run = tmp_path / "run"
    train(tiny_config("train.steps=2", "train.save_every=1"), run, progress=False)
    assert find_model(run) == (latest_checkpoint(run) / "model", run)
    assert latest_checkpoint(run).name == "step_000002"
    sft_only = tmp_path / "sft_only"  # a run killed before its first checkpoint: the SFT warm start
    shutil.copytree(warm_model_dir, sft_only / "sft" / "model")
    (sft_only / "sft" / "COMPLETE").write_text("ok")
    assert find_model(sft_only) == (sft_only / "sft" / "model", sft_only)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model"):
        find_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        find_model(tmp_path / "missing")


def test_cli_eval_of_a_run_dir_uses_its_final_model_and_task(tiny_config, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    cfg = tiny_config("train.steps=2", "rollout.max_new_tokens=5")
    train(cfg, run, progress=False)
    assert main(["eval", str(run), "--problems", "6", "--samples", "2", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    model, tok = load_pretrained(latest_checkpoint(run) / "model")
    task = make_task(cfg.task.name, **cfg.task.params)  # arithmetic, not the countdown default
    expected = evaluate(model, tok, task, task.prompts("eval", 6, seed=3), 2, rollout_sampling(cfg), seed=3)
    assert out == expected
    (tmp_path / "notes").mkdir()
    assert main(["eval", str(tmp_path / "notes")]) == 2
    err = capsys.readouterr().err
    assert "holds no model" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("answers, correct, expected", [
    (["7", "3", "7"], [True, False, True], True),
    (["3", "7", "3", "7"], [False, True, False, True], False),  # a tie goes to the answer seen first
    ([None, None, "7"], [False, False, True], True),  # unparseable samples do not vote
    (["0.5", "1/2", "3", "3"], [True, True, False, False], False),  # equivalent forms split their votes
    ([None, None], [False, False], False),
])  # fmt: skip
def test_majority_correct(answers, correct, expected) -> None:
    assert ev.majority_correct(answers, correct) is expected


class Batch:
    def __init__(self, texts: list[str]) -> None:
        self.texts = texts


class ExactTask:
    def reward(self, problem: Problem, completion: str) -> RewardResult:
        if not completion:
            return RewardResult(0.0, "empty", None)
        return RewardResult(float(completion == problem.answer), "ok" if completion == problem.answer else "wrong_value", completion)


def test_evaluate_reports_maj_at_k_next_to_pass_at_k(monkeypatch: pytest.MonkeyPatch) -> None:
    # problem a: 1 correct of 4 but "9" is the majority; problem b: the majority "2" is correct from k = 2 on
    texts = ["1", "9", "9", "", "5", "2", "2", "2"]
    monkeypatch.setattr(ev, "generate", lambda model, tok, prompts, sampling, batch_size: Batch(texts))
    problems = [Problem("a", "1", {}), Problem("b", "2", {})]
    out = ev.evaluate(torch.nn.Linear(1, 1), None, ExactTask(), problems, 4, None, seed=0)
    assert out["eval/accuracy"] == 4 / 8
    assert out["eval/maj@2"] == 0.5  # a: "1" (tie, first seen) correct; b: "5" vs "2", "5" first -> wrong
    assert out["eval/maj@4"] == 0.5  # a: "9" wrong; b: "2" correct
    assert "eval/maj@1" not in out and "eval/pass@4" in out


def test_eval_with_top_h(warm_model_dir: Path, capsys) -> None:
    """`--top-h 1` keeps every candidate (top_n >= V): the same numbers as plain sampling; a small alpha samples
    through Top-H (fewer candidates) and a bad alpha is a one-line error."""
    args = ["eval", str(warm_model_dir), "--task", "arithmetic", "--task-params", "ops=+", "max_digits=1",
            "--problems", "8", "--samples", "4", "--max-new-tokens", "6", "--seed", "2"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*args, "--top-h", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == plain
    calls = []

    def sample_fn(model, tok, prompts, sampling):
        from entropy_rl.rollout.strategies.top_h import Params, top_h_generate

        calls.append(len(prompts))
        return top_h_generate(model, tok, prompts, sampling, Params(alpha=0.05))

    model, tok = load_pretrained(warm_model_dir)
    task = make_task("arithmetic", ops="+", max_digits=1)
    from entropy_rl.rollout import SamplingParams

    out = evaluate(model, tok, task, task.prompts("eval", 8, seed=2), 4, SamplingParams(max_new_tokens=6), seed=2,
                   sample_fn=sample_fn)
    assert calls == [32] and set(out) == set(plain)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        main([*args, "--top-h", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --top-h: must be in (0, 1], got 0.0" in err and "Traceback" not in err
