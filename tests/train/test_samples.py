"""Sampled completions: completions.jsonl holds what the policy generated with the verifier's verdict, the
advantage and per-token entropy; it never changes training, survives a resume exactly, and reaches W&B as a table."""

from __future__ import annotations

import json
import shutil
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from entropy_rl.metrics.names import COMPLETION_FIELDS
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.models.char_tokenizer import EOS, PAD, UNK
from entropy_rl.tasks import make_task
from entropy_rl.train.checkpoint import latest_checkpoint
from entropy_rl.train.loop import train
from entropy_rl.train.samples import FILE, TABLE_COLUMNS, CompletionLog, table_rows


def completions(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / FILE, decode_nonfinite=False)


def untimed(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in read_jsonl(run_dir / "metrics.jsonl")]


def test_records_are_the_batch_the_trainer_saw(tiny_config, run_dir: Path) -> None:
    cfg = tiny_config("train.log_completions_every=2", "train.log_completions_n=5")
    train(cfg, run_dir, progress=False)
    recs = completions(run_dir)
    assert [r["step"] for r in recs] == [1] * 5 + [2] * 5 + [3] * 5  # step 1, every 2nd step, the last step
    task, G = make_task(cfg.task.name, **cfg.task.params), cfg.rollout.group_size
    for r in recs:
        assert list(r) == list(COMPLETION_FIELDS)
        problems = task.prompts("train", cfg.rollout.prompts_per_step, seed=cfg.train.seed * 1_000_003 + r["step"])
        problem = problems[r["index"] // G]
        assert r["group"] == r["index"] // G and r["prompt"] == problem.prompt
        verdict = task.reward(problem, r["completion"])
        assert (r["reward"], r["reason"], r["answer"]) == (verdict.score, verdict.reason, verdict.answer)
        assert len(r["tokens"]) == len(r["entropy"]) >= 1
        # the tokens show what was sampled, special ones too; the completion is the text without them
        assert "".join(t for t in r["tokens"] if t not in (PAD, EOS, UNK)).strip() == r["completion"]
    # group 0 is whole: its advantages are GRPO's (r - mean) / (std + eps) of the logged rewards
    for step in (1, 2, 3):
        group = [r for r in recs if r["step"] == step and r["group"] == 0]
        rewards = torch.tensor([r["reward"] for r in group])
        expected = torch.zeros(G) if rewards.std() == 0 else (rewards - rewards.mean()) / (rewards.std() + 1e-6)
        assert [r["advantage"] for r in group] == pytest.approx(expected.tolist(), abs=1e-5)
    # per-token entropies: the first responses' values in the step's full token-entropy dump, in order
    dumped = json.loads((run_dir / "token_entropy" / "step_000001.json").read_text())["entropy"]
    logged = [h for r in recs if r["step"] == 1 for h in r["entropy"]]
    assert logged == pytest.approx(dumped[: len(logged)], abs=1e-4)


def test_logging_does_not_change_training(tiny_config, tmp_path: Path) -> None:
    train(tiny_config("train.log_completions_every=0"), tmp_path / "off", progress=False)
    train(tiny_config("train.log_completions_every=1"), tmp_path / "on", progress=False)
    assert not (tmp_path / "off" / FILE).exists() and len(completions(tmp_path / "on")) == 3 * 8
    assert untimed(tmp_path / "off") == untimed(tmp_path / "on")


def test_resume_rewinds_completions_to_the_checkpoint(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("train.steps=4", "train.save_every=2", "train.log_completions_every=1", "train.log_completions_n=3")
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(cfg, full, progress=False)
    train(cfg, cut, progress=False)
    shutil.rmtree(latest_checkpoint(cut))  # killed after step 4 was logged but before its checkpoint
    with open(cut / FILE, "a") as f:
        f.write('{"step": 5, "prompt": "half a li')  # and mid-write
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(cfg, cut, resume=True, progress=False)
    assert (cut / FILE).read_bytes() == (full / FILE).read_bytes()


def test_logged_steps_are_the_first_every_nth_and_the_last(tmp_path: Path) -> None:
    log = CompletionLog(tmp_path, every=10, n=8, total_steps=25, start_step=0)
    assert [s for s in range(1, 26) if log.due(s)] == [1, 10, 20, 25]
    never = CompletionLog(tmp_path, every=0, n=8, total_steps=25, start_step=0)
    assert not any(never.due(s) for s in range(1, 26))


class FakeWandbRun:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log(self, data: dict, step: int) -> None:
        self.logged.append((step, data))

    def finish(self) -> None:
        pass


class FakeTable:
    def __init__(self, columns: list, data: list) -> None:
        self.columns, self.data = columns, data


def test_wandb_sink_gets_a_completions_table(tiny_config, run_dir: Path, monkeypatch) -> None:
    run = FakeWandbRun()
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: run, Table=FakeTable))
    train(tiny_config("train.sinks=[jsonl, wandb]", "train.log_completions_every=2", "train.log_completions_n=4"),
          run_dir, progress=False)
    tables = [(step, d["completions"]) for step, d in run.logged if "completions" in d]
    assert [step for step, _ in tables] == [1, 2, 3]
    recs = completions(run_dir)
    for step, table in tables:
        assert table.columns == list(TABLE_COLUMNS)
        assert table.data == table_rows([r for r in recs if r["step"] == step])
    assert [step for step, d in run.logged if "reward/mean" in d] == [1, 2, 3]  # the metrics still go there too
