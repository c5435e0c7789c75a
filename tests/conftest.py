"""Shared fixtures: a tiny policy warm-started once per session (1-digit addition, ~30% sampled accuracy)
and a fast training-config factory that trains it (so advantages are non-zero and updates happen)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from entropy_rl.train.config import Config, load_config

from tiny_setup import TASK, TINY, TINY_MODEL  # noqa: E402,F401  (tests/ is on sys.path via this conftest)


@pytest.fixture(scope="session")
def warm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SFT a width-32 model on 1-digit addition until ~30% sampled accuracy (about 10 s), once per session."""
    from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model, save_pretrained
    from entropy_rl.tasks import make_task
    from entropy_rl.train.loop import rollout_sampling
    from entropy_rl.train.sft import run_sft

    cfg = load_config(None, TASK + TINY_MODEL + ["sft.max_steps=300", "sft.eval_every=50", "sft.batch_size=64",
                                                "sft.eval_problems=64", "sft.lr=0.003", "sft.target_accuracy=0.3",
                                                "rollout.max_new_tokens=6"])
    task = make_task(cfg.task.name, **cfg.task.params)
    tok = build_char_tokenizer(task.alphabet)
    spec = TinyModelSpec(**{k: getattr(cfg.model, k) for k in TinyModelSpec.__dataclass_fields__})
    model = build_tiny_model(spec, tok, seed=0)
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)  # the warm model (and so every pinned number) must not depend on test order
        torch.manual_seed(0)
        run_sft(model, tok, task, cfg.sft, rollout_sampling(cfg), 0, lambda step, m: None)
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("warm") / "model"
    save_pretrained(model, tok, out)
    return out


@pytest.fixture
def tiny_config(warm_model_dir: Path):
    """Factory: tiny_config(*overrides) -> validated Config training the warm tiny model."""

    def make(*overrides: str) -> Config:
        return load_config(None, TINY + [f"model.path={warm_model_dir}", *overrides])

    return make


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
