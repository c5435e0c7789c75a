"""`entropy-rl report` on a TRL output directory: a hand-written trainer_state.json mapped onto our keys."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from entropy_rl.report.cli import cmd_report
from entropy_rl.report.data import load_run
from entropy_rl.report.trl_log import CONFIG_FILE, find_trainer_state, rows_from_log_history

IMG = '<img src="data:image/png;base64,'


def trl_row(step: int, adapter: bool = True) -> dict:
    """One train row as TRL 1.16 logs it, with the adapter's keys when `adapter`."""
    h = 0.8 * math.exp(-step / 6) + 0.2
    row = {"loss": -0.01 * step, "grad_norm": 0.5 + 0.01 * step, "learning_rate": 1e-6, "num_tokens": 100.0 * step,
           "completions/mean_length": 40.0 + step, "completions/max_length": 64.0, "completions/clipped_ratio": 0.1,
           "rewards/accuracy/mean": 0.3 + 0.02 * step, "reward": 0.3 + 0.02 * step, "reward_std": 0.4,
           "frac_reward_zero_std": 0.25, "entropy": h + 0.01, "clip_ratio/region_mean": 0.0, "step_time": 2.0,
           "epoch": 0.1 * step, "step": step}
    if adapter:
        row.update({"entropy/token_mean": h, "entropy/p10": 0.2 * h, "entropy/p50": 0.7 * h, "entropy/p90": 2 * h,
                    "entropy/p99": 3 * h, "dynamics/cov_logp_adv": 0.02, "policy/loss": -0.01 * step,
                    "method/clip_cov/n_selected": 3.0})
    return row


def write_trl_run(out: Path, steps: int, adapter: bool = True) -> Path:
    """A TRL output dir: an older checkpoint-4 and the newest checkpoint-10 (numeric, not lexical, order)."""
    for ckpt, n in ((4, 4), (10, steps)):
        history = [trl_row(s, adapter) for s in range(1, n + 1)]
        history.insert(2, {"eval_loss": 0.1, "eval_reward": 0.5, "eval_entropy/token_mean": 0.9, "step": 2})
        history.append({"train_runtime": 10.0, "train_loss": -0.02, "total_flos": 0.0, "epoch": 1.0, "step": n})
        (out / f"checkpoint-{ckpt}").mkdir(parents=True)
        (out / f"checkpoint-{ckpt}" / "trainer_state.json").write_text(json.dumps({"global_step": n,
                                                                                   "log_history": history}))
    return out


def test_log_history_maps_matching_keys_and_keeps_the_others_apart(tmp_path: Path) -> None:
    run = write_trl_run(tmp_path / "out", steps=12)
    assert find_trainer_state(run) == run / "checkpoint-10" / "trainer_state.json"
    history = json.loads(find_trainer_state(run).read_text())["log_history"]
    rows, notes = rows_from_log_history(history)
    assert [r["step"] for r in rows] == list(range(1, 13))
    r2 = rows[1]
    assert r2["reward/mean"] == pytest.approx(0.34) and r2["rollout/response_len_mean"] == 42.0
    assert r2["rollout/truncated_frac"] == 0.1 and r2["policy/grad_norm"] == pytest.approx(0.52)
    assert r2["entropy/token_mean"] == pytest.approx(trl_row(2)["entropy/token_mean"])  # the adapter's, unchanged
    assert r2["trl/entropy"] == pytest.approx(trl_row(2)["entropy"])  # TRL's entropy is not ours
    assert r2["trl/eval_reward"] == 0.5 and r2["trl/loss"] == -0.02  # the eval row merged into its step
    assert "trl/epoch" not in r2 and "trl/train_runtime" not in rows[-1]
    text = "\n".join(notes)
    assert "TRL key 'entropy' kept as trl/entropy: update-pass entropy" in text
    assert "rewards/accuracy/mean" in text and "no entropy/token_mean" not in text


def test_report_renders_a_trl_run_and_says_what_a_stock_run_lacks(tmp_path: Path, capsys) -> None:
    run = write_trl_run(tmp_path / "adapter", steps=12)
    (run / CONFIG_FILE).write_text(json.dumps({"algorithm": {"method": "clip_cov", "loss_agg_mode": "token-mean"},
                                               "train": {"seed": 3}}))
    stock = write_trl_run(tmp_path / "stock", steps=6, adapter=False)
    cmd_report(argparse.Namespace(run_dirs=[str(run), str(stock)], out=str(tmp_path / "page"), labels="trl,stock",
                                  summary=None))
    html = (tmp_path / "page" / "report.html").read_text()
    assert capsys.readouterr().out.strip() == str(tmp_path / "page" / "report.html")
    assert html.count(IMG) >= 3 and "clip_cov" in html
    assert "stock GRPOTrainer run" in html and "checkpoint-10/trainer_state.json" in html
    assert load_run(stock, "s").rows[0]["reward/mean"] == pytest.approx(0.32)


def test_a_directory_without_either_log_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="nor a TRL output directory with trainer_state.json"):
        cmd_report(argparse.Namespace(run_dirs=[str(tmp_path / "empty")], out=None, labels=None, summary=None))
