"""A TRL run as the report sees it: `trainer_state.json`'s log history mapped onto our metric keys.

`entropy-rl report OUTPUT_DIR` accepts a TRL `GRPOTrainer` output directory (or one of its `checkpoint-N/`
folders): it reads `trainer_state.json` (the directory's own, written by `trainer.save_state()`, else that of
the newest `checkpoint-N/`) and, when the run used `entropy_rl.integrations.trl.EntropyRLGRPOTrainer`,
`entropy_rl_config.json` (method, parameters, aggregation, seed) for the page header. Plain JSON only.

A log row's keys become ours in three ways:
  - keys that are already ours (`entropy/*`, `dynamics/*`, `policy/*`, `method/<name>/*`, logged by the adapter)
    pass through unchanged;
  - TRL keys whose definition is ours (`TRL_KEYS`) are renamed;
  - every other TRL key is kept as `trl/<key>` and is not read by any figure: `TRL_DIFFERENT` says why the
    common ones are not ours. In particular TRL's `entropy` is not `entropy/token_mean` (see there), so a run of
    stock `GRPOTrainer` has no entropy curve: train with the adapter to get one.
Rows with the same `step` (a train row and an eval row) are merged; TRL's end-of-training summary keys
(`train_runtime`, ...) and `epoch` are dropped. `step` is TRL's `global_step`, an optimizer step: one rollout
batch of ours when `steps_per_generation == gradient_accumulation_steps` and `num_iterations == 1` (the TRL
defaults); otherwise one rollout batch spans several steps and its `entropy/*` values appear in the first.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from entropy_rl.metrics.names import is_known

__all__ = ["TRL_KEYS", "TRL_DIFFERENT", "CONFIG_FILE", "find_trainer_state", "is_trl_run", "rows_from_log_history",
           "load_trl_rows"]

CONFIG_FILE = "entropy_rl_config.json"  # written by EntropyRLGRPOTrainer into its output_dir

# TRL log key -> our key, where the definitions are the same.
TRL_KEYS: dict[str, str] = {
    "reward": "reward/mean",  # mean over the generation batch of the (weighted) sum of the reward functions
    "completions/mean_length": "rollout/response_len_mean",  # completion tokens, EOS included
    "completions/max_length": "rollout/response_len_max",
    "completions/clipped_ratio": "rollout/truncated_frac",  # completions not ending in EOS
    "learning_rate": "policy/lr",  # the learning rate of the logged optimizer step
    "grad_norm": "policy/grad_norm",  # pre-clipping global norm of the (one) optimizer step
}

# Common TRL keys that are kept as `trl/<key>` because their definition differs from our key's.
TRL_DIFFERENT: dict[str, str] = {
    "entropy": ("update-pass entropy (parameters of the current optimizer step), a mean over micro-batches of their "
                "token means; entropy/token_mean is the pre-update pass's token mean over the whole rollout batch"),
    "loss": ("TRL's loss under its loss_type; with the adapter it equals policy/loss, which the adapter logs itself"),
    "reward_std": "Bessel-corrected std; reward/std is documented as the population std",
    "kl": "k3 to the reference, times the ratio when use_bias_correction_kl; policy/kl_ref is k3 (clamped)",
    "clip_ratio/region_mean": "unweighted mean over micro-batches; policy/clipfrac is token-weighted",
    "clip_ratio/low_mean": "unweighted mean over micro-batches; policy/clipfrac_low is token-weighted",
    "clip_ratio/high_mean": "unweighted mean over micro-batches; policy/clipfrac_high is token-weighted",
    "num_tokens": "cumulative prompt + completion tokens; train/tokens counts response tokens",
    "step_time": "time inside the step's training_step calls; timing/step_s is the whole step",
}

_DROPPED = {"epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)\Z")


def find_trainer_state(run_dir: Path) -> Path | None:
    """`run_dir/trainer_state.json`, else that of the newest `run_dir/checkpoint-N/`, else None."""
    run_dir = Path(run_dir)
    own = run_dir / "trainer_state.json"
    if own.is_file():
        return own
    found = [(int(m.group(1)), p / "trainer_state.json") for p in run_dir.glob("checkpoint-*")
             if (m := _CHECKPOINT_RE.match(p.name)) and (p / "trainer_state.json").is_file()]
    return max(found)[1] if found else None


def is_trl_run(run_dir: Path) -> bool:
    """Whether `run_dir` is a TRL output (or checkpoint) directory without a metrics.jsonl of ours."""
    return not (Path(run_dir) / "metrics.jsonl").is_file() and find_trainer_state(run_dir) is not None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def rows_from_log_history(log_history: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Our metrics rows from a TRL `log_history`, and notes on what was not mapped.

    Args:
        log_history: `trainer_state.json["log_history"]`: dicts with a `step` and numeric metrics.

    Returns:
        (rows sorted by step, one per step, keys mapped as the module docstring says; notes naming each kept
        `trl/<key>` with the reason when known).
    """
    by_step: dict[int, dict[str, Any]] = {}
    kept: set[str] = set()
    for entry in log_history:
        if not isinstance(entry, dict) or not _number(entry.get("step")):
            continue
        row = by_step.setdefault(int(entry["step"]), {"step": int(entry["step"])})
        for key, value in entry.items():
            if key == "step" or key in _DROPPED or not _number(value):
                continue
            if key in TRL_KEYS:
                row[TRL_KEYS[key]] = float(value)
            elif is_known(key):
                row[key] = float(value)
            else:
                row[f"trl/{key}"] = float(value)
                kept.add(key)
    rows = [r for _, r in sorted(by_step.items()) if len(r) > 1]
    notes = [f"TRL key '{k}' kept as trl/{k}: {TRL_DIFFERENT[k]}" for k in sorted(kept) if k in TRL_DIFFERENT]
    others = sorted(k for k in kept if k not in TRL_DIFFERENT)
    if others:
        notes.append(f"TRL keys without an entropy-rl definition, kept as trl/<key>: {', '.join(others)}")
    if rows and not any(math.isfinite(r.get("entropy/token_mean", math.nan)) for r in rows):
        notes.append("no entropy/token_mean: a stock GRPOTrainer run; train with "
                     "entropy_rl.integrations.trl.EntropyRLGRPOTrainer to log our entropy metrics")
    return rows, notes


def load_trl_rows(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Rows, config and notes of a TRL output directory (`is_trl_run`); unreadable parts become notes.

    Returns:
        (metrics rows as `rows_from_log_history`, config dict for the page header ({} without
        entropy_rl_config.json), notes starting with the file read).
    """
    run_dir = Path(run_dir)
    state_file = find_trainer_state(run_dir)
    if state_file is None:
        return [], {}, [f"no trainer_state.json in {run_dir} or its checkpoint-N/ folders"]
    notes = [f"TRL run: metrics from {state_file.relative_to(run_dir)} (log_history; step = optimizer step)"]
    try:
        history = json.loads(state_file.read_text(encoding="utf-8")).get("log_history", [])
    except (OSError, ValueError, AttributeError) as e:
        return [], {}, notes + [f"{state_file.name} unreadable: {e}"]
    rows, mapped = rows_from_log_history(history if isinstance(history, list) else [])
    config: dict[str, Any] = {}
    cfg_file = run_dir / CONFIG_FILE
    if not cfg_file.is_file() and _CHECKPOINT_RE.match(run_dir.name):
        cfg_file = run_dir.parent / CONFIG_FILE  # a checkpoint-N/ folder: the config is in the output dir above
    if cfg_file.is_file():
        try:
            data = json.loads(cfg_file.read_text(encoding="utf-8"))
            config = data if isinstance(data, dict) else {}
        except (OSError, ValueError) as e:
            notes.append(f"{CONFIG_FILE} unreadable: {e}")
    return rows, config, notes + mapped
