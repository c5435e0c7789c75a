"""Checkpoints: the trainer state never unpickles, round-trips exactly, is verified against sha256 checksums on
load (falling back past a corrupt newest checkpoint), and checkpoints sort by step number."""

from __future__ import annotations

import ast
import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from entropy_rl import cli
from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train.checkpoint import COMPLETE, STATE_JSON, STATE_TENSORS, CheckpointError
from entropy_rl.train.loop import train

hf_logging.disable_progress_bar()
PACKAGE = Path(__file__).resolve().parents[2] / "entropy_rl"


@pytest.fixture
def tiny():
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(TinyModelSpec(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                                           intermediate_size=32), tok, seed=0)
    return model, tok


def trainer_state(model: torch.nn.Module, step: int) -> dict:
    """A trainer state like the loop's: AdamW with state, LambdaLR, every RNG, a method state, odd floats."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.tensor([[3, 4, 5]])).logits.sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return {"step": step, "model_dtype": "float32", "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": ckpt.rng_state(), "skipped_total": 0,
            "method_state": {"coef": 0.1, "h_now": float("nan"), "last": None, "hist": [1.5, float("inf")]}}


def assert_same(a, b, where="state") -> None:
    """Equal values of equal types (tuples stay tuples, int dict keys stay ints, tensors keep dtype and bits)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def test_trainer_state_round_trips_exactly(tiny, tmp_path: Path) -> None:
    model, _ = tiny
    state = trainer_state(model, 7)
    state["extra"] = {"ints": torch.arange(5, dtype=torch.int64), "bf16": torch.randn(3, dtype=torch.bfloat16),
                      "scalar": torch.tensor(2.5), "view": torch.arange(10.0)[2:5], "tuple_key": {(1, "a"): 3},
                      "__tensor__": "a key that looks like a tag", "bools": [True, False]}
    ckpt.write_trainer_state(state, tmp_path)
    got = ckpt.load_trainer_state(tmp_path)
    assert_same(state, got)
    assert isinstance(got["rng"]["python"], tuple)
    random.setstate(got["rng"]["python"])  # accepted as python's own state
    with pytest.raises(TypeError, match="cannot store a set at 'state.bad'"):
        ckpt.write_trainer_state({"bad": {1, 2}}, tmp_path)


class Planted:
    """A pickle payload: unpickling it calls open(SENTINEL, "w"), i.e. runs code chosen by whoever wrote the file."""

    sentinel: Path

    def __reduce__(self):
        return open, (str(self.sentinel), "w")


def plant_pickle(c: Path, sentinel: Path) -> None:
    """Turn checkpoint `c` into the old format: a trainer_state.pt pickle (with a payload) and COMPLETE = step."""
    Planted.sentinel = sentinel
    for name in (STATE_JSON, STATE_TENSORS):
        (c / name).unlink()
    torch.save({"step": ckpt.step_of(c), "payload": Planted()}, c / ckpt.OLD_STATE)
    (c / COMPLETE).write_text(str(ckpt.step_of(c)))


def test_resume_never_unpickles_a_planted_trainer_state(tiny_config, tmp_path: Path, capsys) -> None:
    """A run directory from someone else (or an old version) with pickled trainer states: resume refuses in one
    line and the pickle never runs (the old code called torch.load(weights_only=False) on it)."""
    cfg = tiny_config("train.steps=2", "train.save_every=1")
    run, sentinel = tmp_path / "run", tmp_path / "pwned"
    train(cfg, run, progress=False)
    for c in ckpt.list_checkpoints(run):
        plant_pickle(c, sentinel)
    with pytest.raises(CheckpointError, match="pickle format") as info:
        train(cfg, run, resume=True, progress=False)
    assert "\n" not in str(info.value) and "step_000002" in str(info.value) and "step_000001" in str(info.value)
    assert not sentinel.exists()
    code = cli.main(["train", "--resume", str(run), "--no-progress"])  # the CLI: exit 1, one line, no traceback
    err = capsys.readouterr().err
    assert code == 1 and "never loaded" in err and "Traceback" not in err and not sentinel.exists()


def test_a_pickle_planted_next_to_a_valid_state_is_never_read(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    c1 = ckpt.save_checkpoint(tmp_path, 1, model, tok, trainer_state(model, 1))
    c2 = ckpt.save_checkpoint(tmp_path, 2, model, tok, trainer_state(model, 2))
    Planted.sentinel = tmp_path / "pwned"
    torch.save(Planted(), c2 / ckpt.OLD_STATE)
    warnings: list[str] = []
    found, state = ckpt.load_latest(tmp_path, warnings.append)
    assert found == c1 and state["step"] == 1
    assert warnings and "file not written by entropy-rl: trainer_state.pt" in warnings[0]
    assert not Planted.sentinel.exists()


def test_the_package_never_unpickles() -> None:
    """No torch.load / pickle.load(s) / weights_only=False anywhere in entropy_rl (AST scan)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("torch.load", "pickle.load", "pickle.loads", "dill.load", "joblib.load"):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
            if any(k.arg == "weights_only" and getattr(k.value, "value", None) is False for k in node.keywords):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} weights_only=False")
    assert not found, found


def flip_byte(path: Path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def _set_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


# corruption -> (what it does to the newest checkpoint, what the warning must say)
CORRUPTIONS = {
    "truncated weights": (lambda c: (c / "model/model.safetensors").write_bytes(
        (c / "model/model.safetensors").read_bytes()[:-100]), "checksum mismatch in model/model.safetensors"),
    "flipped byte in the weights": (lambda c: flip_byte(c / "model/model.safetensors"),
                                    "checksum mismatch in model/model.safetensors"),
    "flipped byte in the optimizer state": (lambda c: flip_byte(c / STATE_TENSORS), f"checksum mismatch in {STATE_TENSORS}"),
    "edited trainer_state.json": (lambda c: (c / STATE_JSON).write_text((c / STATE_JSON).read_text().replace('"step": 2', '"step": 3')),
                                  f"checksum mismatch in {STATE_JSON}"),
    "deleted model config": (lambda c: (c / "model/config.json").unlink(), "file missing: model/config.json"),
    "deleted trainer state": (lambda c: (c / STATE_TENSORS).unlink(), f"file missing: {STATE_TENSORS}"),
    "extra weights file": (lambda c: (c / "model/pytorch_model.bin").write_bytes(b"\x80\x04"),
                           "file not written by entropy-rl: model/pytorch_model.bin"),
    "garbage COMPLETE": (lambda c: (c / COMPLETE).write_bytes(bytes(range(256))), "COMPLETE marker unreadable"),
    "truncated COMPLETE": (lambda c: (c / COMPLETE).write_text((c / COMPLETE).read_text()[:40]), "not a checkpoint manifest"),
    "empty COMPLETE": (lambda c: (c / COMPLETE).write_text(""), "not a checkpoint manifest"),
    "COMPLETE of another step": (lambda c: _set_json(c / COMPLETE, step=1), "COMPLETE says step 1"),
    "COMPLETE of a newer format": (lambda c: _set_json(c / COMPLETE, version=99), "format version 99"),
    "deleted COMPLETE": (lambda c: (c / COMPLETE).unlink(), "no COMPLETE marker"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tiny, tmp_path: Path, corruption: str) -> None:
    model, tok = tiny
    ckpt.save_checkpoint(tmp_path, 1, model, tok, trainer_state(model, 1))
    newest = ckpt.save_checkpoint(tmp_path, 2, model, tok, trainer_state(model, 2))
    ckpt.verify_checkpoint(newest)
    corrupt, reason = CORRUPTIONS[corruption]
    corrupt(newest)
    warnings: list[str] = []
    found, state = ckpt.load_latest(tmp_path, warnings.append)
    assert found.name == "step_000001" and state["step"] == 1
    assert len(warnings) == 1 and "step_000002" in warnings[0] and reason in warnings[0], warnings
    for c in ckpt.list_checkpoints(tmp_path):  # the fallback is corrupted too: one line naming both
        flip_byte(c / "model" / "model.safetensors", 20)
    with pytest.raises(CheckpointError, match="no usable checkpoint") as info:
        ckpt.load_latest(tmp_path, lambda line: None)
    assert "\n" not in str(info.value) and "step_000001: checksum mismatch" in str(info.value)


def test_resume_skips_a_corrupt_newest_checkpoint(tiny_config, tmp_path: Path, capsys) -> None:
    """End to end: flipped weights in the newest checkpoint are not trained on (the old code loaded them);
    the run resumes from the one before and ends with the weights of an uninterrupted run."""
    cfg = tiny_config("train.steps=4", "train.save_every=2")
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(cfg, full, progress=False)
    train(cfg, cut, progress=False)
    flip_byte(ckpt.latest_checkpoint(cut) / "model" / "model.safetensors", 64)
    capsys.readouterr()
    train(cfg, cut, resume=True, progress=False)
    out = capsys.readouterr().out
    assert "step_000004 is not usable: checksum mismatch in model/model.safetensors" in out
    assert "resumed from" in out and "step_000002" in out
    a, b = (load_file(ckpt.latest_checkpoint(r) / "model" / "model.safetensors") for r in (full, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_sort_by_step_number(tiny, tmp_path: Path) -> None:
    """step_1000000 is newer than step_999999 (as strings it sorts first, and the old code pruned it)."""
    model, tok = tiny
    for step in (999_999, 1_000_000):
        ckpt.save_checkpoint(tmp_path, step, model, tok, {"step": step}, keep=1)
    assert [c.name for c in ckpt.list_checkpoints(tmp_path)] == ["step_1000000"]
    ckpt.save_checkpoint(tmp_path, 1_000_001, model, tok, {"step": 1_000_001}, keep=2)
    assert [c.name for c in ckpt.list_checkpoints(tmp_path)] == ["step_1000000", "step_1000001"]
    found, state = ckpt.load_latest(tmp_path, pytest.fail)
    assert found.name == "step_1000001" and state["step"] == 1_000_001
