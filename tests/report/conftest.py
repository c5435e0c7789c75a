"""Fake run directories for the report tests: metrics.jsonl rows with plausible values (entropy decaying,
reward and eval accuracy following R = -a exp(H) + b plus noise, dynamics on every other step, evals at step 0
(the warm start, its own row, as the trainer writes it) and every `eval_every` steps), config.yaml,
token_entropy/*.json and completions.jsonl, written directly (no training)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import yaml

from entropy_rl.metrics.sinks import JsonlSink, append_jsonl

WARM_START_EVAL = {"eval/accuracy": 0.25, "eval/pass@1": 0.25, "eval/pass@2": 0.55, "eval/pass@4": 0.66,
                   "eval/pass@8": 0.77, "timing/eval_s": 1.5}


def fake_completions(step: int, n: int = 4, completion: str = "1+2+3") -> list[dict]:
    """n completions.jsonl records of one step (one token per character, as the char tokenizer gives)."""
    tokens = list(completion) + ["<eos>"]
    return [{"step": step, "index": i, "group": 0, "prompt": "Use 1 2 3 to make 6:", "completion": completion,
             "reward": float(i % 2), "reason": "ok" if i % 2 else "wrong_value", "answer": "6" if i % 2 else "5",
             "advantage": 0.5 if i % 2 else -0.5, "tokens": tokens,
             "entropy": [round(0.1 * (j + 1), 4) for j in range(len(tokens))]} for i in range(n)]


def fake_rows(steps: int, seed: int, dynamics: bool = True, evals: bool = True,
              eval_every: int = 5) -> list[dict[str, float]]:
    """Plausible metrics rows for `steps` steps."""
    rng = random.Random(seed)
    rows, h_prev = [], None
    for step in range(1, steps + 1):
        h = 0.2 + 0.6 * math.exp(-step / 15) + rng.gauss(0, 0.01)
        m = {"entropy/token_mean": h, "entropy/p10": 0.3 * h, "entropy/p50": 0.8 * h, "entropy/p90": 1.9 * h,
             "entropy/p99": 2.6 * h, "reward/mean": -0.4 * math.exp(h) + 1.1 + rng.gauss(0, 0.02),
             "timing/step_s": 1.0 + rng.random(), "dynamics/cov_logp_adv": 0.05 * h + rng.gauss(0, 0.005)}
        if dynamics and step % 2 == 0 and h_prev is not None:  # probed steps only
            d = h - h_prev
            m.update({"dynamics/dH_actual": d, "dynamics/dH_pred": 0.9 * d + rng.gauss(0, 0.003),
                      "dynamics/dH_pred_lin": d + rng.gauss(0, 0.001),
                      "dynamics/dH_identity": d + rng.gauss(0, 0.004), "dynamics/steer_omega": d + rng.gauss(0, 0.01)})
        if evals and step % eval_every == 0:
            p1 = -0.4 * math.exp(h) + 1.1 + rng.gauss(0, 0.01)  # the law, on eval accuracy
            m.update({f"eval/pass@{k}": min(1.0, p1 * (1 + 0.5 * math.log2(k))) for k in (1, 2, 4, 8)})
            m["eval/accuracy"] = p1
        if not dynamics:
            m.pop("dynamics/cov_logp_adv")
        rows.append(m)
        h_prev = h
    return rows


def make_run(path: Path, steps: int = 30, seed: int = 0, dynamics: bool = True, evals: bool = True,
             token_entropy: bool = True, method_params: dict | None = None, completions: bool = True,
             eval_every: int = 5, task: str = "countdown") -> Path:
    """Write metrics.jsonl (via JsonlSink), config.yaml, token_entropy files and completions.jsonl into `path`."""
    sink = JsonlSink(path / "metrics.jsonl")
    if evals:
        sink.log(0, WARM_START_EVAL)
    for step, m in enumerate(fake_rows(steps, seed, dynamics, evals, eval_every), start=1):
        sink.log(step, m)
    sink.close()
    cfg = {"task": {"name": task, "params": {}}, "model": {"path": None, "hidden_size": 32, "num_layers": 2},
           "algorithm": {"method": "clip_cov", "method_params": method_params or {"eps": 0.2}, "advantage": "grpo",
                         "loss_agg_mode": "token-mean"},
           "train": {"steps": steps, "seed": seed}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    if token_entropy:
        rng = random.Random(seed + 100)
        (path / "token_entropy").mkdir()
        for step, scale in ((1, 0.8), (steps, 0.3)):
            values = [round(rng.expovariate(1 / scale), 6) for _ in range(2000)]
            (path / "token_entropy" / f"step_{step:06d}.json").write_text(json.dumps({"step": step, "entropy": values}))
    if completions:
        append_jsonl(path / "completions.jsonl", fake_completions(1) + fake_completions(steps))
    return path


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    """Two complete fake runs, a/seed0 and b/seed1."""
    return [make_run(tmp_path / "a" / "seed0", seed=0), make_run(tmp_path / "b" / "seed1", seed=1)]


@pytest.fixture
def make_fake_run():
    """Factory: make_fake_run(path, **options) -> run dir (see make_run)."""
    return make_run
