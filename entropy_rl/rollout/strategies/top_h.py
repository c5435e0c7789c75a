"""Top-H decoding: sample from the largest high-probability set whose entropy stays within alpha of the model's.

Paper: Potraghloo, Azizi, Kundu, Pedram 2025, "Top-H Decoding: Adapting the Creativity and Coherence with Bounded
Entropy in Text Generation" (arXiv:2509.02510). Official code: `ErfanBaghaei/Top-H-Decoding` @ `e3cc917`,
`logit_processor.py` (`TopH_LogitsProcessor`), read for this module; the rule below is that code's.

Per token, with p = softmax(z / tau) (tau = `rollout.temperature`) and its `top_n` most likely tokens sorted
p_1 >= p_2 >= ...:

    C_j = -sum_{i <= j} p_i log p_i          (un-normalised partial entropy of the j most likely tokens)
    keep the k = max(1, #{j : C_j <= alpha C_N}) most likely tokens,   N = min(top_n, V)
    q = p restricted to them, renormalised; the token is drawn from q (then `top_k` / `top_p`, as the official
        run passes top_p = 1).

The official loop adds tokens one by one and stops before the first j with C_j > alpha C_N; its renormalised form
(H(q_j) compared with alpha C_N / sigma_j + log sigma_j, sigma_j the kept mass) is the same test. The paper states
the constraint as H(q) <= alpha H(p) (entropy-constrained mass maximisation, solved greedily); the code's C_N is the
top-N partial entropy, not the full H(p), and is what this module follows. Entropy base (log2 in the code) does not
change the set.

Log-probs. `sampling_logp` is log q(token), the exact log-prob under the truncated, renormalised distribution.
The trainer scores log softmax(z / tau)(token) without the truncation: smaller by -log(sum of the kept p), a
structural off-policy gap this strategy does not correct (the ratio and the loss use the untruncated policy, as
with top-p in verl). `rollout/top_h/kept_mass` reports the kept mass.

Departures:
    - The official processor handles one sequence at a time (asserts batch size 1); this one is batched.
    - Samples with the token-by-token sampler (entropy_rl/rollout/stepwise.py) on the policy model itself, whatever
      `rollout.engine` is: the truncation needs a hook at every token that the engines do not expose.
    - Used here for RL rollouts; the paper evaluates it as a decoding method only (at eval time:
      `entropy-rl eval --top-h ALPHA`, which samples with `top_h_generate`). As a training-time strategy (alpha 0.4)
      it collapsed on every seed of the demo comparison (reward 0 by step 25-50, full entropy rising to 0.6-1.2
      nats; docs/LOG.md, 2026-11-30): never-sampled tokens are never pushed down. `algorithm.rollout_correction`
      does not replay the truncation either.

Params:
    alpha (0.4): entropy scale in (0, 1]; the README's usual range is 0.3-0.5.
    top_n (100): candidates considered per token (the official `top_n`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.rollout.base import Prompts, RolloutBatch, RolloutEngine, SamplingParams, contiguous_groups
from entropy_rl.rollout.hf import concat_rollouts
from entropy_rl.rollout.stepwise import StepChoice, StepRule, sample_stepwise
from entropy_rl.rollout.strategies.base import (
    Metrics,
    RewardFn,
    Stateless,
    cost_metrics,
    register_strategy,
    sampled_tokens,
)


@dataclass(frozen=True)
class Params:
    alpha: float = 0.4  # entropy scale: keep tokens while their partial entropy <= alpha x that of the top_n
    top_n: int = 100  # candidate tokens per step

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {self.top_n}")


def top_h_keep(logits: Tensor, temperature: float | Tensor, alpha: float, top_n: int) -> Tensor:
    """Top-H's kept set per row: [n, V] bool (see the module docstring).

    Args:
        logits: [n, V] raw next-token logits.
        temperature: tau, a float or [n].
        alpha: entropy scale in (0, 1].
        top_n: candidates considered.

    Returns:
        [n, V] bool, True on the kept tokens (at least the most likely one).
    """
    tau = temperature.float().unsqueeze(-1) if isinstance(temperature, Tensor) else temperature
    probs = torch.softmax(logits.float() / tau, dim=-1)  # [n, V]
    top, idx = torch.topk(probs, min(top_n, probs.shape[-1]), dim=-1, sorted=True)  # [n, N]
    partial = torch.special.entr(top).cumsum(-1)  # C_j, [n, N]
    count = (partial <= alpha * partial[:, -1:]).sum(-1).clamp_min(1)  # [n]
    ranks = torch.arange(top.shape[-1], device=logits.device)
    return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, idx, ranks < count.unsqueeze(-1))


def top_h_rule(temperature: float, alpha: float, top_n: int) -> StepRule:
    """The stepwise-sampler rule: the run's temperature, Top-H's kept set."""

    def rule(logits: Tensor, t: int) -> StepChoice:
        tau = torch.full((logits.shape[0],), temperature, dtype=torch.float32, device=logits.device)
        return StepChoice(tau, top_h_keep(logits, temperature, alpha, top_n))

    return rule


def top_h_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    sampling: SamplingParams,
    p: Params,
    batch_size: int = 512,
) -> RolloutBatch:
    """One Top-H sample per prompt (each row its own group), `batch_size` prompts at a time: the drop-in for
    `generate` at eval time (`entropy-rl eval --top-h ALPHA`)."""
    rule = top_h_rule(sampling.temperature, p.alpha, p.top_n)
    parts = [sample_stepwise(model, tokenizer, prompts[i : i + batch_size], sampling, rule)
             for i in range(0, len(prompts), batch_size)]
    return parts[0] if len(parts) == 1 else concat_rollouts(parts, tokenizer.pad_token_id)


@register_strategy("top_h", Params)
class TopH(Stateless):
    """Top-H decoding (arXiv:2509.02510): entropy-bounded truncation of every token's distribution."""

    def __init__(self, p: Params) -> None:
        self.p = p

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
        """G Top-H samples per prompt with the stepwise sampler (the engine is not used); see the module docstring."""
        rows = [q for q in prompts for _ in range(group_size)]
        kept: list[Tensor] = []
        base = top_h_rule(sampling.temperature, self.p.alpha, self.p.top_n)

        def rule(logits: Tensor, t: int) -> StepChoice:
            choice = base(logits, t)
            kept.append(torch.softmax(logits / choice.temperature.unsqueeze(-1), -1).mul(choice.keep).sum(-1))  # [n]
            return choice

        batch = sample_stepwise(model, tokenizer, rows, sampling, rule)
        batch = replace(batch, group_index=contiguous_groups(len(prompts), group_size, batch.group_index.device))
        mass = torch.stack(kept, dim=1)  # [B, t_run] kept mass per step
        m = batch.response_mask[:, : mass.shape[1]]
        metrics = cost_metrics(sampled_tokens(batch), 0)
        metrics["rollout/top_h/kept_mass"] = float((mass * m).sum() / m.sum().clamp_min(1))
        return batch, metrics
