"""A verl run's metrics as a report run: `entropy-rl report path/to/experiment.jsonl`.

verl 0.9.1's file logger (`trainer.logger=[console,file]`, `verl.utils.tracking.FileLogger`) writes one JSON
object per step, `{"step": N, "data": {key: value, ...}}`, to `$VERL_FILE_LOGGER_PATH` or
`$VERL_FILE_LOGGER_ROOT/<project_name>/<experiment_name>.jsonl`. (The console logger prints text, not JSON.)
Each line becomes one metrics row: keys whose verl definition matches ours are renamed (`VERL_KEYS`), our own
keys pass through (a run with `trainer.v1.trainer_mode=entropy_rl` logs `entropy/*` and `dynamics/cov_logp_adv`
itself), and the keys whose definitions differ are listed on the page with the difference (`NOT_MAPPED`).
Reads plain JSON only; a malformed line is noted and skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["NOT_MAPPED", "VERL_KEYS", "is_verl_log", "load_verl_run", "verl_row"]

# verl key -> our key, where the two definitions agree (entropy_rl.metrics.names for ours).
VERL_KEYS: dict[str, str] = {
    "critic/score/mean": "reward/mean",  # mean over responses of the verifier score (summed over tokens)
    "response_length/mean": "rollout/response_len_mean",
    "response_length/max": "rollout/response_len_max",
    "actor/grad_norm": "policy/grad_norm",  # pre-clipping norm, mean over the optimizer steps of the step
    "actor/lr": "policy/lr",
    "timing_s/step": "timing/step_s",
}
# verl keys that look like ours but are defined differently: key -> why it is not mapped.
NOT_MAPPED: dict[str, str] = {
    "actor/entropy": "pre-update pass like entropy/token_mean, but aggregated with actor.loss_agg_mode (the "
                     "same only under token-mean, which the log does not record)",
    "actor/entropy_loss": "entropy of the update pass (not pre-update), aggregated with loss_agg_mode",
    "actor/pg_clipfrac": "excludes the dual clip and is an unweighted mean over micro-batches (policy/clipfrac "
                         "counts every bound, token-weighted)",
    "actor/ppo_kl": "k1 estimate mean(old_logp - logp); policy/approx_kl is k3",
    "actor/pg_loss": "policy term only (without the KL loss that policy/loss includes)",
    "critic/rewards/mean": "token-level rewards after the in-reward KL penalty, not the verifier score",
    "response_length/clip_ratio": "responses of exactly the maximum length (rollout/truncated_frac: no EOS)",
}
# Our namespaces: keys under them are ours (logged into verl by entropy_rl.integrations.verl) and pass through.
OUR_PREFIXES = ("entropy/", "dynamics/")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_verl_log(path: Path) -> bool:
    """Whether `path` is a file whose first non-empty line is a verl file-logger record {"step", "data"}."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    return False
                return isinstance(record, dict) and set(record) == {"step", "data"} and isinstance(record["data"], dict)
    return False


def verl_row(step: int, data: dict[str, Any]) -> dict[str, Any]:
    """One metrics row from a verl record: mapped keys and our own keys, finite numbers only."""
    row: dict[str, Any] = {"step": step}
    for key, value in data.items():
        ours = VERL_KEYS.get(key) or (key if key.startswith(OUR_PREFIXES) else None)
        if ours is not None and _finite(value):
            row[ours] = float(value)
    return row


def load_verl_run(path: Path, label: str) -> Any:
    """A `RunData` from a verl file-logger JSONL (rows sorted by step; steps with no mapped key are dropped)."""
    from entropy_rl.report.data import RunData

    path = Path(path)
    run = RunData(path, label, [], {})
    seen_unmapped: set[str] = set()
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, data = record["step"], record["data"]
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if not _finite(step) or not isinstance(data, dict):
            bad += 1
            continue
        seen_unmapped.update(k for k in data if k in NOT_MAPPED)
        row = verl_row(int(step), data)
        if len(row) > 1:
            run.rows.append(row)
    run.rows.sort(key=lambda r: r["step"])
    run.problems.append(f"verl log: mapped {', '.join(f'{k} -> {v}' for k, v in VERL_KEYS.items())}")
    for key in sorted(seen_unmapped):
        run.problems.append(f"verl log: {key} not mapped: {NOT_MAPPED[key]}")
    if not any("entropy/token_mean" in r for r in run.rows):
        run.problems.append("verl log: no entropy/token_mean; run verl with trainer.v1.trainer_mode=entropy_rl "
                            "(entropy_rl.integrations.verl) to log it")
    if bad:
        run.problems.append(f"verl log: {bad} malformed lines skipped")
    return run
