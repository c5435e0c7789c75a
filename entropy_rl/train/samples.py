"""Sampled completions of the rollout batch, written to RUN_DIR/completions.jsonl (and a W&B table).

What the policy actually generates is the first thing to look at when a reward looks wrong or the reward
rises suspiciously fast (reward hacking). At step 1, every `train.log_completions_every` steps and at the last
step, the first `train.log_completions_n` responses of the batch (whole groups when n is a multiple of the
group size G; prompts are drawn at random each step) are appended as one JSON line each, with the fields of
`entropy_rl.metrics.names.COMPLETION_FIELDS`. Nothing here draws random numbers, so logging never changes
the training trajectory. Completions are untrusted model text: the report escapes them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from entropy_rl.metrics.sinks import MetricSink, TableSink, append_jsonl, truncate_jsonl
from entropy_rl.rollout.base import RolloutBatch
from entropy_rl.tasks.base import Problem, RewardResult

FILE = "completions.jsonl"
# Columns of the W&B table (per-token entropies are summarised as mean and max there; the JSONL has them all).
TABLE_COLUMNS = ("step", "prompt", "completion", "reward", "reason", "advantage", "entropy_mean", "entropy_max")


def completion_records(
    step: int,
    problems: Sequence[Problem],
    group_size: int,
    batch: RolloutBatch,
    results: Sequence[RewardResult],
    adv: torch.Tensor,
    entropy: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    n: int,
) -> list[dict[str, Any]]:
    """Records of the first n responses of a rollout batch.

    Args:
        step: training step.
        problems: the P prompts of the step; response i answers problems[batch.group_index[i]].
        group_size: responses per prompt of plain sampling (G); unused, groups come from `batch.group_index`.
        batch: the rollout batch (B = P * G rows).
        results: the verifier's result per response (B).
        adv: [B, T] advantage per token, zero off the response mask.
        entropy: [B, T] pre-update-pass token entropy (nats).
        tokenizer: to decode each response token on its own.
        n: how many responses (capped at B).

    Returns:
        One dict per response with the keys of `COMPLETION_FIELDS`.
    """
    rows = range(min(n, len(batch.texts)))
    mask = batch.response_mask[: len(rows)].bool().cpu()  # [n, T]
    ids, adv, entropy = batch.response_ids[: len(rows)].cpu(), adv[: len(rows)].cpu(), entropy[: len(rows)].float().cpu()
    groups = batch.group_index.tolist()
    out = []
    for i in rows:
        m = mask[i]
        n_tok = int(m.sum())
        result = results[i]
        out.append({
            "step": step,
            "index": i,
            "group": groups[i],
            "prompt": problems[groups[i]].prompt,
            "completion": batch.texts[i],
            "reward": float(result.score),
            "reason": result.reason,
            "answer": result.answer,
            "advantage": float(adv[i][m].sum()) / n_tok if n_tok else 0.0,
            "tokens": [tokenizer.decode([t], skip_special_tokens=False) for t in ids[i][m].tolist()],
            "entropy": [round(v, 4) for v in entropy[i][m].tolist()],
        })
    return out


def table_rows(records: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Rows of `TABLE_COLUMNS` for the given records (entropy mean / max in nats; 0 for an empty response)."""
    rows = []
    for r in records:
        h = [v for v in r["entropy"] if isinstance(v, (int, float)) and math.isfinite(v)]
        rows.append([r["step"], r["prompt"], r["completion"], r["reward"], r["reason"], r["advantage"],
                     sum(h) / len(h) if h else 0.0, max(h) if h else 0.0])
    return rows


class CompletionLog:
    """Writes sampled completions to RUN_DIR/completions.jsonl and to the table sinks (W&B).

    Args:
        run_dir: the run directory.
        every: log at step 1, every `every` steps and at the last step (0 = never).
        n: responses per logged step.
        total_steps: the run's last step.
        start_step: the step training resumes after; records of later steps (a killed run's) are dropped.
    """

    def __init__(self, run_dir: Path, every: int, n: int, total_steps: int, start_step: int) -> None:
        self.path = Path(run_dir) / FILE
        self.every, self.n, self.total_steps = every, n, total_steps
        truncate_jsonl(self.path, start_step)

    def due(self, step: int) -> bool:
        """Whether `step` is logged."""
        return self.every > 0 and (step == 1 or step % self.every == 0 or step == self.total_steps)

    def maybe_log(self, step: int, problems: Sequence[Problem], group_size: int, batch: RolloutBatch,
                  results: Sequence[RewardResult], adv: torch.Tensor, entropy: torch.Tensor,
                  tokenizer: PreTrainedTokenizerBase, sink: MetricSink) -> None:
        """Append the step's records (see `completion_records`) and send them to `sink` as a table, if due."""
        if not self.due(step):
            return
        records = completion_records(step, problems, group_size, batch, results, adv, entropy, tokenizer, self.n)
        append_jsonl(self.path, records)
        if isinstance(sink, TableSink):
            sink.log_table(step, "completions", TABLE_COLUMNS, table_rows(records))
