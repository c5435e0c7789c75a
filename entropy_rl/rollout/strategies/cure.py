"""CURE: re-generate from a high-entropy critical token of each first-pass response (stage 1), then plain sampling.

Paper: "CURE: Critical-token-gUided Re-concatenation for Entropy-collapse prevention" (ByteDance, arXiv:2508.11016).
Official code: `bytedance/CURE` @ `c904b38`, `recipe/CURE_First_Stage/dapo_ray_trainer.py`
(`get_critic_key_token_mask`, the stage-1 `fit`), `run_cure_stage_1.sh`, `run_cure_stage_2.sh`; spec in
shared/methods.md section 10.

Stage 1 (steps <= `stage1_steps`), per prompt:
1. Sample n1 = `group_size` responses (the engine, the run's sampling).
2. Entropy of every response position under the policy at the sampling temperature (`score_in_chunks`, an extra
   no-grad pass: H_old).
3. Critical token t* of each response: positions sorted by entropy, descending; skip position 0, special tokens
   and tokens whose decoded text, stripped, is shorter than `min_token_chars` (official: length > 1); t* is drawn
   uniformly among the first `critical_top_k` that remain (mode `random`: among all that remain). None remain:
   t* = 0 (the branch re-samples the whole response).
4. n2 = `branches` continuations of prompt + response[:t*] (the critical token itself is re-sampled).
5. The group of the prompt is its n1 originals and n1 n2 branches (official 4 + 4 x 3 = 16 under one uid); the
   advantage estimator normalises over all of them.
Stage 2 (steps > `stage1_steps`): plain sampling of n1 (1 + n2) responses per prompt, the official stage 2's n = 16.

How the batch holds a branch: its response is prefix + continuation (the prefix copied from its original, marked
in `shared_prefix_mask`, with the original's sampling log-probs); `train_shared_prefix=False`, so `loss_mask` leaves
the prefix out of the branch's loss. Each prefix token is therefore trained once, in its original, as the official
code does (there the prefix is part of the branch's prompt).

Departures from the official code (named):
    - The reward sees the whole branch response (prefix + continuation); the official reward and overlong penalty
      see the continuation only (the prefix sits in the prompt). Our tasks' answers are short and may straddle t*.
    - A branch's whole response (prefix + continuation) is capped at `max_new_tokens`, as an original; the official
      continuation gets a full response budget. No prompt buffer, hence none of the official truncation of long
      prefixes (it keeps the first max_prompt_length tokens and cuts the tokens next to t*; the spec's fix).
    - `min_token_chars` (default 2 = official) is a parameter: with a character tokenizer (the CPU demo) every
      token is one character and the official filter leaves no candidate, so the demo needs 1.
    - The stage switch is a step count in one run (`stage1_steps`); officially a second run from the stage-1
      checkpoint (global_step_300). The DAPO parts of the recipe (clip-higher, dynamic sampling, overlong buffer)
      are trainer settings, not this strategy's.

Metrics: `rollout/scored_tokens` (tokens of the entropy pass), `rollout/cure/stage` (1 or 2),
`rollout/cure/no_critical_frac` (responses with no candidate, t* = 0), `rollout/cure/critical_pos_mean` (mean t*),
`rollout/cure/critical_entropy_mean` (mean H at t*, nats).

Params:
    branches (3): n2, continuations per first-pass response.
    critical_top_k (20): candidates (highest entropy first) t* is drawn from.
    mode ("entropy"): "entropy" or "random" (the official ablation: a uniformly random valid position).
    min_token_chars (2): shortest stripped decoded text of a candidate token (official: > 1 character).
    stage1_steps (300): last step of stage 1 (the official stage-2 start); 0 = stage 2 from the start.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.rollout.base import Prompts, RolloutBatch, RolloutEngine, SamplingParams
from entropy_rl.rollout.strategies.base import (
    Metrics,
    RewardFn,
    Stateless,
    branch_prompts,
    concat_batches,
    cost_metrics,
    graft_branches,
    register_strategy,
    sampled_tokens,
    take_rows,
)
from entropy_rl.train.forward import score_in_chunks

MODES = ("entropy", "random")


@dataclass(frozen=True)
class Params:
    branches: int = 3  # n2 continuations per first-pass response
    critical_top_k: int = 20  # t* is drawn among this many highest-entropy candidates
    mode: str = "entropy"  # "entropy" or "random" (official ablation)
    min_token_chars: int = 2  # official: stripped decoded text longer than 1 character
    stage1_steps: int = 300  # last step of stage 1 (official stage 2 starts from global_step_300)

    def __post_init__(self) -> None:
        if self.branches < 1 or self.critical_top_k < 1:
            raise ValueError(f"branches and critical_top_k must be >= 1, got {self.branches}, {self.critical_top_k}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.min_token_chars < 0 or self.stage1_steps < 0:
            raise ValueError(f"min_token_chars and stage1_steps must be >= 0, got {self.min_token_chars}, {self.stage1_steps}")


def candidate_mask(batch: RolloutBatch, tokenizer: PreTrainedTokenizerBase, min_chars: int) -> Tensor:
    """[B, T] bool: positions that may be a critical token (response tokens after position 0, not special, whose
    decoded text, stripped, has at least `min_chars` characters)."""
    special = {int(i) for i in tokenizer.all_special_ids}
    present = batch.response_ids[batch.response_mask.bool()].unique().tolist()
    ok = [t for t in present if t not in special and len(tokenizer.decode([t]).strip()) >= min_chars]
    mask = batch.response_mask.bool() & torch.isin(batch.response_ids, torch.tensor(ok, dtype=torch.long,
                                                                                    device=batch.response_ids.device))
    mask[:, 0] = False
    return mask


def critical_positions(entropy: Tensor, candidates: Tensor, top_k: int, mode: str) -> Tensor:
    """t* per row [B] int64: uniform among the `top_k` highest-entropy candidates (mode "entropy") or among all
    candidates (mode "random"); 0 where a row has none. Global torch RNG.

    Args:
        entropy: [B, T] token entropies.
        candidates: [B, T] bool, `candidate_mask`.
        top_k: candidates drawn from, highest entropy first.
        mode: "entropy" or "random".

    Returns:
        [B] int64 critical positions.
    """
    B = entropy.shape[0]
    out = torch.zeros(B, dtype=torch.long)
    for i in range(B):
        pos = candidates[i].nonzero().squeeze(-1)  # [m]
        if pos.numel() == 0:
            continue
        if mode == "entropy":
            order = torch.argsort(entropy[i, pos].float(), descending=True, stable=True)
            pos = pos[order[:top_k]]
        out[i] = pos[torch.randint(pos.numel(), (1,))].item()
    return out


@register_strategy("cure", Params)
class Cure(Stateless):
    """CURE (arXiv:2508.11016): stage 1 branches every response at a high-entropy critical token; stage 2 is plain."""

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
        """Stage 1: originals + branches grouped per prompt; stage 2: plain sampling (see the module docstring)."""
        n2 = self.p.branches
        if step > self.p.stage1_steps:
            batch = engine.generate(prompts, sampling, group_size * (1 + n2))
            return batch, {**cost_metrics(sampled_tokens(batch), 0), "rollout/cure/stage": 2.0}

        first = engine.generate(prompts, sampling, group_size)
        P = first.prompt_ids.shape[1]
        _, entropy, _ = score_in_chunks(model, first.input_ids, first.attention_mask, P, first.temperature,
                                        score_chunk, mask=first.response_mask)
        candidates = candidate_mask(first, tokenizer, self.p.min_token_chars)
        t_star = critical_positions(entropy.cpu(), candidates.cpu(), self.p.critical_top_k, self.p.mode)
        B, T = first.response_ids.shape
        budget = replace(sampling, max_new_tokens=T - int(t_star.min()))
        cont = engine.generate(branch_prompts(first, torch.arange(B), t_star), budget, n2)
        rows = torch.arange(B).repeat_interleave(n2)  # the engine returns each prompt's n2 samples contiguously
        branches = graft_branches(first, rows, t_star.repeat_interleave(n2), cont, tokenizer)
        # per prompt: its n1 originals, then their n1 n2 branches (contiguous groups, as the official concat)
        order = torch.cat([torch.cat([torch.arange(g * group_size, (g + 1) * group_size),
                                      B + torch.arange(g * group_size * n2, (g + 1) * group_size * n2)])
                           for g in range(len(prompts))])
        joined = take_rows(concat_batches([first, branches], tokenizer.pad_token_id), order)
        batch = replace(joined, train_shared_prefix=False)

        has = candidates.any(dim=1).cpu()
        H_star = entropy.cpu().gather(1, t_star.unsqueeze(1)).squeeze(1)
        metrics = cost_metrics(sampled_tokens(first) + sampled_tokens(cont), B * n2)
        metrics.update({
            "rollout/scored_tokens": float(first.response_mask.sum()),
            "rollout/cure/stage": 1.0,
            "rollout/cure/no_critical_frac": float((~has).float().mean()),
            "rollout/cure/critical_pos_mean": float(t_star.float().mean()),
            "rollout/cure/critical_entropy_mean": float(H_star[has].mean()) if bool(has.any()) else 0.0,
        })
        return batch, metrics
