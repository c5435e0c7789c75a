"""Low disk space: a full disk mid-write and a failed pre-flight free-space check both raise a clear OSError
naming the path, leave no temporary directory behind, and keep the previous checkpoint loadable."""

from __future__ import annotations

import errno
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model, load_pretrained
from entropy_rl.train import checkpoint as ckpt

hf_logging.disable_progress_bar()
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def tiny():
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(TinyModelSpec(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                                           intermediate_size=32), tok, seed=0)
    return model, tok


def state(step: int) -> dict:
    return {"step": step, "rng": ckpt.rng_state(), "weights": torch.ones(1000)}


def assert_only_step_1_left(run_dir: Path) -> None:
    root = ckpt.checkpoint_dir(run_dir)
    assert [p.name for p in root.iterdir()] == ["step_000001"]  # no .tmp_ directory, no step 2
    load_pretrained(ckpt.latest_checkpoint(run_dir) / "model")
    assert ckpt.load_trainer_state(ckpt.latest_checkpoint(run_dir))["step"] == 1


@pytest.mark.parametrize("where", ["save_file", "save_pretrained"])
def test_disk_full_mid_write_keeps_the_previous_checkpoint(tiny, tmp_path: Path, monkeypatch, where: str) -> None:
    model, tok = tiny
    ckpt.save_checkpoint(tmp_path, 1, model, tok, state(1))

    def full(obj, path, *a, **k):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"partial")  # a write that got part-way, as a real ENOSPC does
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "save_file":  # the trainer state's tensors (safetensors)
        monkeypatch.setattr(ckpt, "save_file", full)
    else:
        monkeypatch.setattr(ckpt, "save_pretrained", lambda m, t, path: full(None, Path(path) / "model.safetensors"))
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(tmp_path, 2, model, tok, state(2))
    msg = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert "step_000002" in msg and "disk full" in msg and "No space left on device" in msg
    assert "previous checkpoint is kept" in msg
    assert_only_step_1_left(tmp_path)


def test_non_oserror_mid_write_also_removes_the_tmp_dir(tiny, tmp_path: Path, monkeypatch) -> None:
    model, tok = tiny
    ckpt.save_checkpoint(tmp_path, 1, model, tok, state(1))
    monkeypatch.setattr(ckpt, "save_file", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("serializer bug")))
    with pytest.raises(RuntimeError, match="serializer bug"):
        ckpt.save_checkpoint(tmp_path, 2, model, tok, state(2))
    assert_only_step_1_left(tmp_path)


def test_preflight_free_space_check(tiny, tmp_path: Path, monkeypatch) -> None:
    model, tok = tiny
    first = ckpt.save_checkpoint(tmp_path, 1, model, tok, state(1))
    size = ckpt.dir_size(first)
    assert size > 0
    # 1.5x the previous checkpoint free: below the default 2x margin -> refused before anything is written
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: Usage(10**12, 0, int(1.5 * size)))
    with pytest.raises(OSError, match="not enough free disk space") as info:
        ckpt.save_checkpoint(tmp_path, 2, model, tok, state(2))
    assert info.value.errno == errno.ENOSPC and str(ckpt.checkpoint_dir(tmp_path)) in str(info.value)
    assert "KiB free" in str(info.value) and "previous checkpoint is kept" in str(info.value)
    assert_only_step_1_left(tmp_path)
    # the margin and an absolute minimum are configurable
    ckpt.save_checkpoint(tmp_path, 2, model, tok, state(2), free_space_margin=1.2)
    with pytest.raises(OSError, match="required"):
        ckpt.save_checkpoint(tmp_path, 3, model, tok, state(3), free_space_margin=0.0, min_free_bytes=2 * size)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: Usage(10**12, 0, 10 * size))
    assert ckpt.save_checkpoint(tmp_path, 3, model, tok, state(3)).name == "step_000003"


def test_first_checkpoint_is_checked_against_an_estimate(tiny, tmp_path: Path, monkeypatch) -> None:
    """No previous checkpoint: the estimate is parameter bytes + trainer-state tensor bytes."""
    model, tok = tiny
    n_bytes = sum(p.numel() * 4 for p in model.parameters()) + 4000  # fp32 weights + the 1000-float tensor
    no_rng = {"step": 1, "weights": torch.ones(1000)}
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: Usage(10**12, 0, 2 * n_bytes - 1))
    with pytest.raises(OSError, match="not enough free disk space"):
        ckpt.save_checkpoint(tmp_path, 1, model, tok, no_rng)
    assert list(ckpt.checkpoint_dir(tmp_path).iterdir()) == []
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: Usage(10**12, 0, 2 * n_bytes))
    ckpt.save_checkpoint(tmp_path, 1, model, tok, no_rng)
