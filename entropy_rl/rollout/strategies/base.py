"""Rollout strategies: how one step's rollouts are sampled (plain, truncated, re-tempered, branched).

A strategy wraps an engine. The trainer calls, once per step (`rollout.strategy`, `rollout.strategy_params`):

    strategy = make_strategy(cfg.rollout.strategy, cfg.rollout.strategy_params)
    batch, rollout_metrics = strategy.generate(engine, model, tokenizer, prompts, sampling,
                                               group_size=G, step=step, reward_fn=reward_fn, score_chunk=micro)

and gets one `RolloutBatch` whose contract every strategy keeps:
- `sampling_logp` is the exact log-prob of each sampled token under the distribution it was drawn from
  (temperature changes and truncation included) and `temperature` the temperature it was drawn at;
- `group_index[i]` is the index into `prompts` of row i's prompt: rows of a prompt form its group (a strategy may
  return more than `group_size` rows per prompt, e.g. CURE's branches);
- `shared_prefix_mask` marks response tokens copied from another row (a branch's prefix); `loss_mask` is what the
  loss trains (the copies are left out when the paper trains a shared prefix once: `train_shared_prefix=False`);
- `fixed_advantage` (finite on some rows) takes those rows out of the advantage estimator with that advantage;
- `score_temperature` is the temperature the trainer scores at (differs from `temperature` only where the method
  samples at one temperature and trains at another, AEPO).
The metrics always hold `rollout/tokens_generated` (every token any generation call of the step sampled, up to and
including EOS, kept or not; copied prefix tokens are not sampled again and not counted) and `rollout/branches`
(rows that continue another row's prefix), so strategies can be compared at equal generation budget;
strategy-specific keys are `rollout/<strategy>/*`.

A strategy with state across steps (HAPO's entropy statistics) exposes it as plain data in `state_dict()` for the
checkpoint (JSON, never a pickle) and takes it back in `load_state_dict`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.core.registry import Registry
from entropy_rl.rollout.base import Prompts, RolloutBatch, RolloutEngine, SamplingParams
from entropy_rl.rollout.hf import response_mask_from_ids

RewardFn = Callable[[Sequence[int], Sequence[str]], Tensor]
"""(prompt index of each row, decoded texts) -> rewards [n] fp32: the task's verifier, for strategies that read
rewards while sampling (AEPO's arbitrary-entropy samples). Texts are untrusted: parse, never evaluate."""

Metrics = dict[str, float]


class RolloutStrategy(Protocol):
    """Samples a step's rollouts; see the module docstring for the contract of what it returns."""

    def generate(
        self,
        engine: RolloutEngine,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Prompts,
        sampling: SamplingParams,
        *,
        group_size: int,
        step: int,
        reward_fn: RewardFn | None = None,
        score_chunk: int = 0,
    ) -> tuple[RolloutBatch, Metrics]:
        """One step's rollouts of `prompts` and the step's rollout metrics.

        Args:
            engine: the rollout engine (`rollout.engine`).
            model: the policy (the training model), for strategies that score or sample with it directly.
            tokenizer: the policy's tokenizer.
            prompts: the step's prompts (strings or token ids); `group_index` indexes this list.
            sampling: the run's sampling settings.
            group_size: G, responses per prompt of plain sampling (`rollout.group_size`).
            step: the training step (1-based), for schedules.
            reward_fn: the verifier, for strategies that read rewards while sampling (None: they refuse to run).
            score_chunk: sequences per scoring forward pass (0 = all at once), for strategies that score.

        Returns:
            The step's RolloutBatch and its metrics (`rollout/tokens_generated`, `rollout/branches`, ...).
        """
        ...

    def state_dict(self) -> dict[str, Any]:
        """State carried across steps, as plain data (empty for stateless strategies)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        ...


StrategyFactory = Callable[[Any], RolloutStrategy]
STRATEGIES: Registry[StrategyFactory] = Registry("rollout strategy")


def register_strategy(name: str, params_cls: type, doc: str | None = None) -> Callable[[StrategyFactory], StrategyFactory]:
    """Decorator registering a strategy class (built from its Params) under `name` (`rollout.strategy`)."""
    return STRATEGIES.register(name, params_cls, doc=doc)


def make_strategy(name: str, params: Mapping[str, Any] | None = None) -> RolloutStrategy:
    """The strategy registered as `name`, built from `params` (checked against its Params; errors name the key).

    Args:
        name: registry key (`rollout.strategy`).
        params: its Params fields (`rollout.strategy_params`); None = the defaults.

    Returns:
        The strategy, ready for `generate` once per step.

    Raises:
        RegistryError: unknown name (the message lists the valid ones).
        ParamsError: unknown, mistyped or out-of-range parameter (`rollout.strategy_params.<key>: ...`).
    """
    import entropy_rl.rollout.strategies  # noqa: F401  (registers the built-in strategies)

    entry = STRATEGIES.get(name)
    return entry.obj(entry.parse_params(dict(params or {}), "rollout.strategy_params"))


class Stateless:
    """Mixin for strategies with no state across steps."""

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore; a non-empty state is a checkpoint of another strategy."""
        if state:
            raise ValueError(f"this rollout strategy keeps no state, got keys {sorted(state)}")


# ---- the step's cost ----

def cost_metrics(tokens_generated: float, branches: float) -> Metrics:
    """The two metrics every strategy reports (see the module docstring)."""
    return {"rollout/tokens_generated": float(tokens_generated), "rollout/branches": float(branches)}


def sampled_tokens(batch: RolloutBatch) -> float:
    """Tokens a generation call sampled into `batch`: response tokens up to and including EOS, copies excluded."""
    copied = 0.0 if batch.shared_prefix_mask is None else float((batch.response_mask * batch.shared_prefix_mask).sum())
    return float(batch.response_mask.sum()) - copied


# ---- rows of batches ----

def prompt_token_lists(batch: RolloutBatch) -> list[list[int]]:
    """Each row's prompt as token ids without its left padding."""
    return [row[m.bool()].tolist() for row, m in zip(batch.prompt_ids, batch.prompt_mask)]


def decode_texts(tokenizer: PreTrainedTokenizerBase, response_ids: Tensor) -> list[str]:
    """Completions as `generate` decodes them: special tokens dropped, whitespace stripped."""
    return [t.strip() for t in tokenizer.batch_decode(response_ids, skip_special_tokens=True)]


def take_rows(batch: RolloutBatch, rows: Tensor) -> RolloutBatch:
    """The rows `rows` ([n] int64) of `batch`, in that order, every field kept."""
    idx = rows.to(batch.response_ids.device)

    def pick(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.index_select(0, idx)

    return replace(
        batch, prompt_ids=pick(batch.prompt_ids), prompt_mask=pick(batch.prompt_mask),
        response_ids=pick(batch.response_ids), response_mask=pick(batch.response_mask),
        sampling_logp=pick(batch.sampling_logp), texts=[batch.texts[i] for i in idx.tolist()],
        truncated=pick(batch.truncated), group_index=pick(batch.group_index), temperature=pick(batch.temperature),
        shared_prefix_mask=pick(batch.shared_prefix_mask), fixed_advantage=pick(batch.fixed_advantage),
        train_temperature=pick(batch.train_temperature),
    )


def concat_batches(parts: Sequence[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Stack the rows of `parts` (same response width T), re-left-padding prompts to a common width.

    Group indices are kept as they are (all parts index the same prompt list). An optional field present in any
    part is filled in for the others with its default (no copies, no fixed advantage, scored at the sampling
    temperature). `train_shared_prefix` is left at its default: the strategy sets it on the result.
    """
    width = max(p.prompt_ids.shape[1] for p in parts)

    def left_pad(t: Tensor, value: int) -> Tensor:
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    def optional(name: str, default: Callable[[RolloutBatch], Tensor]) -> Tensor | None:
        if all(getattr(p, name) is None for p in parts):
            return None
        return torch.cat([getattr(p, name) if getattr(p, name) is not None else default(p) for p in parts])

    return RolloutBatch(
        prompt_ids=torch.cat([left_pad(p.prompt_ids, pad_id) for p in parts]),
        prompt_mask=torch.cat([left_pad(p.prompt_mask, 0) for p in parts]),
        response_ids=torch.cat([p.response_ids for p in parts]),
        response_mask=torch.cat([p.response_mask for p in parts]),
        sampling_logp=torch.cat([p.sampling_logp for p in parts]),
        texts=[t for p in parts for t in p.texts],
        truncated=torch.cat([p.truncated for p in parts]),
        group_index=torch.cat([p.group_index for p in parts]),
        temperature=torch.cat([p.temperature for p in parts]),
        shared_prefix_mask=optional("shared_prefix_mask", lambda p: torch.zeros_like(p.response_mask)),
        fixed_advantage=optional("fixed_advantage", lambda p: torch.full_like(p.truncated, float("nan"), dtype=torch.float32)),
        train_temperature=optional("train_temperature", lambda p: p.temperature),
    )


def graft_branches(
    parent: RolloutBatch,
    rows: Tensor,
    prefix_len: Tensor,
    continuation: RolloutBatch,
    tokenizer: PreTrainedTokenizerBase,
) -> RolloutBatch:
    """Branch rows: a parent row's prompt and first `prefix_len` response tokens, then a sampled continuation.

    The continuation was generated from prompt + prefix (token ids), so prefix tokens keep the parent's sampling
    log-probs and temperatures and are marked in `shared_prefix_mask`; the whole response is cut to the parent's
    width T (a continuation that runs past T - prefix_len is truncated there, exactly as if it had been sampled
    with that budget). Prefixes must hold no EOS.

    Args:
        parent: the rows branched from.
        rows: [n] int64 parent row of each branch.
        prefix_len: [n] int64 number of parent response tokens each branch copies (0 <= L < T).
        continuation: n rows sampled from prompt + prefix, in the order of `rows`.
        tokenizer: pad / eos ids and decoding.

    Returns:
        RolloutBatch: n rows with the parents' prompts and groups.
    """
    T = parent.response_ids.shape[1]
    n = rows.numel()
    rows = rows.to(parent.response_ids.device)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    ids = torch.full((n, T), pad, dtype=torch.long, device=parent.response_ids.device)
    logp = torch.zeros(n, T, dtype=torch.float32, device=ids.device)
    temperature = parent.temperature.index_select(0, rows).clone()
    shared = torch.zeros(n, T, dtype=torch.float32, device=ids.device)
    for i, (r, L) in enumerate(zip(rows.tolist(), prefix_len.tolist())):
        k = min(T - L, continuation.response_ids.shape[1])
        ids[i, :L], ids[i, L : L + k] = parent.response_ids[r, :L], continuation.response_ids[i, :k]
        logp[i, :L], logp[i, L : L + k] = parent.sampling_logp[r, :L], continuation.sampling_logp[i, :k]
        temperature[i, L : L + k] = continuation.temperature[i, :k]
        shared[i, :L] = 1.0
    mask, truncated = response_mask_from_ids(ids, eos)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    logp = torch.where(mask.bool(), logp, torch.zeros_like(logp))
    return RolloutBatch(
        prompt_ids=parent.prompt_ids.index_select(0, rows), prompt_mask=parent.prompt_mask.index_select(0, rows),
        response_ids=ids, response_mask=mask, sampling_logp=logp, texts=decode_texts(tokenizer, ids),
        truncated=truncated, group_index=parent.group_index.index_select(0, rows), temperature=temperature,
        shared_prefix_mask=shared * mask,
    )


def branch_prompts(parent: RolloutBatch, rows: Tensor, prefix_len: Tensor) -> list[list[int]]:
    """Token-id prompts for branch continuations: each parent row's prompt followed by its response prefix."""
    prompts = prompt_token_lists(parent)
    return [prompts[r] + parent.response_ids[r, :L].tolist() for r, L in zip(rows.tolist(), prefix_len.tolist())]
