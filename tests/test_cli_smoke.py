"""Smoke test of the real entry points in subprocesses, with a tiny budget (cleanrl style)."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_rl.cli import DEBUG_ENV, main


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entropy_rl", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_demo_runs_end_to_end_with_a_tiny_budget(tmp_path: Path) -> None:
    proc = run(
        "demo", "--steps", "2", "--run-dir", str(tmp_path / "demo"), "--no-progress",
        "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1",
        "model.intermediate_size=64", "sft.max_steps=2", "sft.eval_every=1", "sft.eval_problems=8",
        "rollout.prompts_per_step=2", "rollout.group_size=2", "train.eval_every=2", "train.eval_problems=4",
        "train.eval_samples=2", "train.threads=1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 2/2 | reward" in proc.stdout and "entropy" in proc.stdout
    run_dir = tmp_path / "demo"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 0: the warm start's eval, before any RL update
    assert "eval/pass@2" in rows[0] and "eval/pass@2" in rows[-1] and "entropy/token_mean" not in rows[0]
    assert "step 0/2 | pass@1 " in proc.stdout and "eval/pass@2 " in proc.stdout and "(warm start)" in proc.stdout
    assert (run_dir / "completions.jsonl").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "sft" / "model" / "model.safetensors").is_file()
    assert (run_dir / "checkpoints" / "step_000002" / "COMPLETE").is_file()
    proc = run("eval", str(run_dir / "sft" / "model"), "--problems", "4", "--samples", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(json.loads(proc.stdout)) == {"eval/accuracy", "eval/pass@1", "eval/pass@2", "eval/maj@2"}
    proc = run("eval", str(run_dir), "--problems", "4", "--samples", "2", cwd=tmp_path)  # the run's final model
    assert proc.returncode == 0 and "step_000002" in proc.stderr, proc.stderr[-2000:]
    proc = run("report", str(run_dir), cwd=tmp_path)
    assert proc.returncode == 0 and (run_dir / "report" / "report.html").is_file(), proc.stderr[-2000:]


def test_methods_lists_the_catalogue(tmp_path: Path) -> None:
    proc = run("methods", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("ppo_clip", "entropy_bonus", "grpo", "dr_grpo", "rloo", "countdown", "arithmetic"):
        assert name in proc.stdout
    assert "Rollout strategies (rollout.strategy):" in proc.stdout
    for name in ("plain", "top_h", "adaptive_temperature", "cure", "arbitrary_entropy", "aepo_branching"):
        assert f"\n  {name} " in proc.stdout


def test_config_errors_exit_2_with_one_clear_line(tmp_path: Path) -> None:
    proc = run("demo", "--run-dir", str(tmp_path / "x"), "rollout.temprature=0.5", cwd=tmp_path)
    assert proc.returncode == 2
    assert "did you mean 'rollout.temperature'" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_dataset_rows_are_named_before_training_and_skippable(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    good = [json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) for a in range(6) for b in range(6)]
    data.write_text("\n".join(good[:10] + ['{"prompt": "1+1=", "answer": '] + good[10:]) + "\n")  # line 11 is broken
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"task: {{name: jsonl, params: {{path: '{data}', eval_fraction: 0.3}}}}\n"
        "model: {hidden_size: 16, num_layers: 1, num_heads: 2, num_kv_heads: 1, intermediate_size: 32}\n"
        "sft: {enabled: false}\ntrain: {steps: 1, eval_every: 0, threads: 1}\n"
        "rollout: {prompts_per_step: 2, group_size: 2, max_new_tokens: 4}\n"
    )
    proc = run("train", str(cfg), "--run-dir", str(tmp_path / "r1"), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and "data.jsonl:11" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "r1").exists()  # rejected before anything was built or written
    proc = run("train", str(cfg), "--run-dir", str(tmp_path / "r2"), "--no-progress", "--skip-bad-rows", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "r2" / "metrics.jsonl").read_text().count("\n") == 1


def test_overrides_may_follow_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim: {lr: 0.001}\n")
    proc = run("validate", str(cfg), "rollout.top_k=5", cwd=tmp_path)
    assert proc.returncode == 0 and "top_k: 5" in proc.stdout
    proc = run("demo", "--no-progress", "rollout.temprature=1", cwd=tmp_path)  # override after a flag is parsed
    assert proc.returncode == 2 and "did you mean 'rollout.temperature'" in proc.stderr
    proc = run("demo", "--no-such-flag", cwd=tmp_path)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


# ---- bad input through `main` in-process: one line on stderr, exit 2 (input) or 1 (a failed run), no traceback


def raise_from_validate(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    import entropy_rl.cli as cli

    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_validate", fail)


@pytest.mark.parametrize(
    "error, code, text",
    [
        (OSError(errno.ENOSPC, "could not write checkpoint (disk full)", "/runs/x/checkpoints"), 1, "/runs/x/checkpoints"),
        (OSError(errno.EIO, "Input/output error", "/runs/x/metrics.jsonl"), 1, "/runs/x/metrics.jsonl"),
        (PermissionError(errno.EACCES, "Permission denied", "/runs/ro"), 2, "/runs/ro"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/tmp/afile/sub"), 2, "/tmp/afile/sub"),
        (ValueError("jsonl: /data/d.jsonl:7: bad line: empty prompt"), 2, "/data/d.jsonl:7"),
        (RuntimeError("stopped at step 5: 3 consecutive steps had non-finite losses"), 1, "stopped at step 5"),
        (ImportError("rollout.engine=vllm needs vLLM >= 0.32 (in-place weight reload), found 0.31.2: install "
                     "entropy-rl[vllm]"), 2, "found 0.31.2: install entropy-rl[vllm]"),
    ],
    ids=["disk-full", "io-error", "permission", "not-a-directory", "task-value-error", "run-stopped", "old-extra"],
)
def test_runtime_and_input_errors_print_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                 error: BaseException, code: int, text: str) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    raise_from_validate(monkeypatch, error)
    assert main(["validate", "c.yaml"]) == code
    err = capsys.readouterr().err
    assert err.startswith("entropy-rl validate: ") and text in err and err.count("\n") == 1, err
    assert f"{DEBUG_ENV}=1" in err  # says how to get the traceback


def test_debug_env_keeps_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEBUG_ENV, "1")
    raise_from_validate(monkeypatch, OSError(errno.ENOSPC, "No space left on device", "/runs/x"))
    with pytest.raises(OSError, match="No space left"):
        main(["validate", "c.yaml"])


def test_a_bug_still_shows_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    raise_from_validate(monkeypatch, KeyError("a real bug"))
    with pytest.raises(KeyError):
        main(["validate", "c.yaml"])


def test_bad_task_params_of_eval_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path), "--task", "arithmetic", "--task-params", "max_digits=abc"]) == 2
    err = capsys.readouterr().err
    assert "max_digits: expected an integer, got 'abc'" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, text",
    [
        (["compare", "--methods", "ppo_clip", "--jobs", "0"], "argument --jobs: must be >= 1, got 0"),
        (["compare", "--methods", "ppo_clip", "--seeds", "-1"], "argument --seeds: must be >= 1, got -1"),
        (["demo", "--steps", "-1"], "argument --steps: must be >= 0, got -1"),
        (["eval", "m", "--samples", "0"], "argument --samples: must be >= 1, got 0"),
        (["eval", "m", "--problems", "x"], "argument --problems: expected an integer, got 'x'"),
        (["eval", "m", "--seed", "1" + "0" * 29], "argument --seed: must be <= 9223372036854775807"),
    ],
    ids=["jobs-0", "seeds-negative", "steps-negative", "samples-0", "problems-not-int", "seed-too-large"],
)
def test_bad_numeric_flags_are_usage_errors(argv: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and text in capsys.readouterr().err


def test_a_bad_config_file_through_the_real_cli_has_no_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"optim:\n  lr: 0.001 # caf\xe9\n")
    proc = run("train", str(cfg), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 2 and "not UTF-8 text" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()
