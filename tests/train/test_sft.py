"""The SFT warm start resumes like RL: after an interruption it continues from its newest checkpoint, logs
every evaluation once and ends where an uninterrupted warm start ends (in `train` and in `entropy-rl sft`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from entropy_rl import cli
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train import sft
from entropy_rl.train.config import load_config
from entropy_rl.train.loop import train
from entropy_rl.train.rundir import MARKER

from tiny_setup import TINY

# A fresh tiny model, SFT for 6 steps with an evaluation (and an SFT checkpoint) every 2; the target is out of
# reach, so all 6 steps run.
SFT = ["sft.enabled=true", "sft.max_steps=6", "sft.eval_every=2", "sft.eval_problems=8", "sft.batch_size=16",
       "sft.target_accuracy=1.0"]


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing on the way catches it."""


def kill_at_sft_save(monkeypatch, n: int) -> None:
    """Make the n-th SFT checkpoint write die before it starts (the evaluation before it is already logged)."""
    real, calls = ckpt.save_checkpoint, []

    def save(run_dir, step, *args, **kwargs):
        if Path(run_dir).name in ("sft", "out"):
            calls.append(step)
            if len(calls) == n:
                raise Killed
        return real(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)


def count_sft_steps(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = sft.sft_batch
    monkeypatch.setattr(sft, "sft_batch", lambda *a: calls.append(1) or real(*a))
    return calls


def untimed(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in read_jsonl(path)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_interrupted_sft_resumes_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """The old code restarted SFT at step 0 on --resume and appended its rows again (2, 4, 2, 4, 6)."""
    cfg = load_config(None, TINY + SFT + ["train.steps=1"])
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(cfg, full, progress=False)
    with monkeypatch.context() as m:
        kill_at_sft_save(m, 2)  # after step 4 is logged, before its checkpoint: rows 2, 4 on disk, checkpoint 2
        with pytest.raises(Killed):
            train(cfg, cut, progress=False)
    assert [r["step"] for r in read_jsonl(cut / "sft_metrics.jsonl")] == [2, 4]
    steps = count_sft_steps(monkeypatch)
    train(cfg, cut, resume=True, progress=False)
    assert len(steps) == 4  # steps 3-6 only
    assert untimed(cut / "sft_metrics.jsonl") == untimed(full / "sft_metrics.jsonl")
    assert [r["step"] for r in read_jsonl(cut / "sft_metrics.jsonl")] == [2, 4, 6]
    a, b = weights(full / "sft" / "model"), weights(cut / "sft" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert untimed(cut / "metrics.jsonl") == untimed(full / "metrics.jsonl")
    assert not (cut / "sft" / "checkpoints").exists() and not (full / "sft" / "checkpoints").exists()


def test_sft_command_resumes_reports_done_and_overwrites_only_its_files(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    args = ["sft", "--out", str(out), *TINY, *SFT]
    with monkeypatch.context() as m:
        kill_at_sft_save(m, 3)  # rows 2, 4, 6 logged, checkpoints 2 and 4 written
        with pytest.raises(Killed):
            cli.main(args)
    steps = count_sft_steps(monkeypatch)
    assert cli.main(args) == 0  # the same command continues
    assert len(steps) == 2 and [r["step"] for r in read_jsonl(out / "sft_metrics.jsonl")] == [2, 4, 6]
    assert (out / ckpt.COMPLETE).is_file() and not (out / "checkpoints").exists()
    owned = json.loads((out / MARKER).read_text())["files"]
    assert "model.safetensors" in owned and "config.json" in owned
    first = weights(out)
    capsys.readouterr()
    assert cli.main(args) == 0 and "already holds this SFT, finished" in capsys.readouterr().out and len(steps) == 2
    assert cli.main([*args, "sft.lr=0.01"]) == 2 and "config differs" in capsys.readouterr().err
    (out / "notes.md").write_text("mine\n")
    assert cli.main([*args, "--overwrite"]) == 0 and len(steps) == 8
    assert (out / "notes.md").read_text() == "mine\n"
    second = weights(out)
    assert all(torch.equal(first[k], second[k]) for k in first)  # same config, same result
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"not yours")
    assert cli.main(["sft", "--out", str(mine), "--overwrite", *TINY, *SFT]) == 2
    assert "not an entropy-rl SFT output directory" in capsys.readouterr().err
    assert (mine / "model.safetensors").read_bytes() == b"not yours"
