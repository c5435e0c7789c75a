"""Agentic AEPO's entropy-balanced rollout, single-turn: global samples grow in rounds and branch where entropy rose.

Paper: Dong et al. 2025, "Agentic Entropy-Balanced Policy Optimization" (AEPO, RUC-NLPIR, arXiv:2510.14545).
Official code: `RUC-NLPIR/ARPO`, folder `AEPO/` (upstream commits `81e3a5d`, `07afa8e`), read through the fork
`wangevan6/ARPO` @ `adacf0c`: `AEPO/verl_aepo_entropy/verl/workers/rollout/vllm_rollout/vllm_rollout_with_tools.py`
(`_calculate_initial_rollouts_dynamical`, `generate_sequences`) and `AEPO/scripts/*.sh`; spec in shared/methods.md
section 9. This module is the rollout half; the update half (entropy-balanced clipping, entropy-aware advantage) is
not in it.

The agentic rollout generates until a tool call, runs the tool, and may branch each trajectory after the tool's
result. Our tasks are single-turn, so a *round* is a segment of ceil(T / `rounds`) response tokens (T =
`max_new_tokens`) and the end of a segment stands in for a tool call. Per step, for each prompt with budget k =
`group_size`:
1. m global samples start (m = `initial_rollouts`, 0 = k // 2 as both released scripts; with `dynamic_rollouts`,
   entropy pre-monitoring: one pre-rollout per prompt, H_root = entropy of its first segment, H_seg = mean entropy
   of its later segments (H_root when there are none), m = clamp(floor(k sigmoid(0.5 (H_root - H_seg))) + 1, 1, k)).
2. Each round, every active trajectory (no EOS yet, shorter than T) samples its next segment (the engine, prompt +
   tokens so far). A segment's entropy is sum_{first min(20, len) tokens} H_t / log |V| (full-vocabulary H_t of a
   scoring pass); H_init of a trajectory is the entropy of its first segment.
3. Branching, per prompt with r < k rollouts, for each active trajectory, up to `beam_size` - 1 times while r < k:
       p = clamp((U(0, 1) + `entropy_weight` (H_now - H_init)) max(0, 1 - `consecutive_penalty` c), 0, 1)
   with c the prompt's count of consecutive rounds that created rollouts; branch if p >= `branch_probability`.
   A branch copies the trajectory so far (tokens, sampling log-probs, temperatures) and continues independently.
4. A prompt with no active trajectory and r < k starts one fresh sample from the prompt (one per round); c grows
   by one for prompts that created rollouts this round and resets to 0 for the others.
5. Rounds continue until no trajectory is active; each prompt then has exactly k rows (its group).

Loss: a branch's copied prefix is marked in `shared_prefix_mask`, and `train_shared_prefix=True`: the released code
trains every branch on its whole response (the copied prefix included), so prefix tokens count once per row that
holds them.

Departures from the official code (named):
    - Single-turn: rounds are fixed-length segments, not tool calls; no tool results in the response (the agentic
      mask of tool-output tokens does not arise); the call limit is the segment count.
    - Entropy is the full-vocabulary H of a scoring pass; the official one sums -p log p over vLLM's top-k
      log-probs of the first 20 tokens (an approximation). Same 20-token window and 1 / log|V| normalisation.
    - H_init and the consecutive-branch counts are reset every step; the released code keeps `initial_entropy_dict`
      across steps, keyed by row index (stale after the first step).
    - Randomness is the global torch RNG (`torch.rand`), not Python's `random`.
    - Each segment is a separate engine call; segments are cut to each trajectory's remaining budget exactly (tokens
      sampled past it are counted in `rollout/tokens_generated` and dropped).

Metrics: `rollout/scored_tokens` (entropy passes), `rollout/aepo_branching/rounds`,
`rollout/aepo_branching/initial_rollouts` (mean m), `rollout/aepo_branching/fresh` (rollouts started from a prompt
after step 1).

Params:
    initial_rollouts (0): global samples m per prompt; 0 = group_size // 2 (at least 1).
    dynamic_rollouts (False): entropy pre-monitoring sets m per prompt (the released scripts turn it off).
    beam_size (2): a trajectory spawns at most beam_size - 1 branches per round.
    branch_probability (0.5): threshold on p.
    entropy_weight (0.2): weight w of the entropy rise in p.
    consecutive_penalty (0.05): p shrinks by this factor per consecutive branching round (hard-coded officially).
    rounds (4): segments the response budget is cut into (branch points at their ends).
    entropy_tokens (20): tokens at the start of a segment whose entropies are summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.rollout.base import Prompts, RolloutBatch, RolloutEngine, SamplingParams
from entropy_rl.rollout.hf import encode_prompts, response_mask_from_ids
from entropy_rl.rollout.strategies.base import (
    Metrics,
    RewardFn,
    Stateless,
    cost_metrics,
    decode_texts,
    register_strategy,
    sampled_tokens,
)
from entropy_rl.train.forward import score_in_chunks


@dataclass(frozen=True)
class Params:
    initial_rollouts: int = 0  # global samples per prompt; 0 = group_size // 2
    dynamic_rollouts: bool = False  # entropy pre-monitoring (off in the released scripts)
    beam_size: int = 2  # at most beam_size - 1 branches per trajectory per round
    branch_probability: float = 0.5  # branch when p >= this
    entropy_weight: float = 0.2  # w in p = U + w (H_now - H_init)
    consecutive_penalty: float = 0.05  # p x max(0, 1 - penalty x consecutive branching rounds)
    rounds: int = 4  # segments of the response budget (branch points at their ends)
    entropy_tokens: int = 20  # leading tokens of a segment whose entropies are summed

    def __post_init__(self) -> None:
        if self.initial_rollouts < 0 or self.beam_size < 1 or self.rounds < 1 or self.entropy_tokens < 1:
            raise ValueError(
                "initial_rollouts must be >= 0 and beam_size, rounds, entropy_tokens >= 1, got "
                f"{self.initial_rollouts}, {self.beam_size}, {self.rounds}, {self.entropy_tokens}"
            )
        if not 0 <= self.branch_probability <= 1 or self.consecutive_penalty < 0:
            raise ValueError(f"branch_probability must be in [0, 1] and consecutive_penalty >= 0, got "
                             f"{self.branch_probability}, {self.consecutive_penalty}")


@dataclass
class Trajectory:
    """One rollout under construction: its prompt, what it sampled so far, and how much of that it copied."""

    prompt: int
    tokens: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)
    shared: int = 0  # leading tokens copied from the trajectory it branched from
    done: bool = False
    h_init: float | None = None
    h_now: float = 0.0

    def branch(self) -> Trajectory:
        """A copy that continues independently; what it holds so far is shared."""
        return Trajectory(self.prompt, list(self.tokens), list(self.logp), list(self.temperature), len(self.tokens),
                          self.done, None, self.h_now)


def segment_entropy(entropy: Tensor, mask: Tensor, n_tokens: int, vocab: int) -> Tensor:
    """Per row [B]: sum of the first `n_tokens` masked token entropies of a segment, divided by log(vocab).

    Args:
        entropy: [B, S] token entropies of the segment (nats).
        mask: [B, S] 1 on its sampled tokens.
        n_tokens: leading tokens summed (the official 20).
        vocab: vocabulary size |V|.

    Returns:
        [B] normalised segment entropies.
    """
    return (entropy * mask)[:, :n_tokens].sum(-1) / math.log(vocab)


def branch_score(u: float, weight: float, delta_h: float, penalty: float, consecutive: int) -> float:
    """p = clamp((u + weight delta_h) max(0, 1 - penalty consecutive), 0, 1): branch when p >= the threshold."""
    p = (u + weight * delta_h) * max(0.0, 1.0 - penalty * consecutive)
    return min(1.0, max(0.0, p))


def initial_count(k: int, h_root: float, h_seg: float) -> int:
    """Pre-monitoring's global sample count m = clamp(floor(k sigmoid(0.5 (h_root - h_seg))) + 1, 1, k)."""
    return max(1, min(int(k / (1 + math.exp(-0.5 * (h_root - h_seg)))) + 1, k))


@register_strategy("aepo_branching", Params)
class AepoBranching(Stateless):
    """Agentic AEPO's entropy-balanced rollout (arXiv:2510.14545), single-turn: branching at segment ends."""

    def __init__(self, p: Params) -> None:
        self.p = p

    def segment(
        self, engine: RolloutEngine, model: PreTrainedModel, eos: int, prompt_ids: list[list[int]],
        trajs: list[Trajectory], sampling: SamplingParams, seg_len: int, score_chunk: int,
    ) -> tuple[RolloutBatch, Tensor]:
        """Sample the next segment of each trajectory (appended to it, cut to its remaining budget); returns the
        engine's batch and the token entropies H [n, S] of the segments."""
        T = sampling.max_new_tokens
        ctx = [prompt_ids[t.prompt] + t.tokens for t in trajs]
        batch = engine.generate(ctx, replace(sampling, max_new_tokens=min(seg_len, T - min(len(t.tokens) for t in trajs))), 1)
        _, H, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1],
                                  batch.temperature, score_chunk, mask=batch.response_mask)
        for i, t in enumerate(trajs):
            n = min(int(batch.response_mask[i].sum()), T - len(t.tokens))
            t.tokens += batch.response_ids[i, :n].tolist()
            t.logp += batch.sampling_logp[i, :n].tolist()
            t.temperature += batch.temperature[i, :n].tolist()
            t.done = (n > 0 and t.tokens[-1] == eos) or len(t.tokens) >= T
        return batch, H

    def initial_counts(
        self, engine: RolloutEngine, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Prompts,
        sampling: SamplingParams, k: int, seg_len: int, score_chunk: int,
    ) -> tuple[list[int], float, float]:
        """m per prompt, and the tokens sampled and scored doing it (pre-monitoring with `dynamic_rollouts`)."""
        if not self.p.dynamic_rollouts:
            m = self.p.initial_rollouts or max(1, k // 2)
            return [min(m, k)] * len(prompts), 0.0, 0.0
        pre = engine.generate(prompts, sampling, 1)
        _, H, _ = score_in_chunks(model, pre.input_ids, pre.attention_mask, pre.prompt_ids.shape[1], pre.temperature,
                                  score_chunk, mask=pre.response_mask)
        vocab = len(tokenizer.get_vocab())
        counts = []
        for i in range(len(prompts)):
            L = int(pre.response_mask[i].sum())
            segs = [segment_entropy(H[i : i + 1, s : s + seg_len], pre.response_mask[i : i + 1, s : s + seg_len],
                                    self.p.entropy_tokens, vocab).item() for s in range(0, L, seg_len)]
            h_root = segs[0] if segs else 0.0
            h_seg = sum(segs[1:]) / len(segs[1:]) if len(segs) > 1 else h_root
            counts.append(initial_count(k, h_root, h_seg))
        return counts, sampled_tokens(pre), float(pre.response_mask.sum())

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
        """k = group_size rows per prompt grown in rounds with entropy-balanced branching (module docstring)."""
        k, T = group_size, sampling.max_new_tokens
        seg_len = math.ceil(T / self.p.rounds)
        counts, generated, scored = self.initial_counts(engine, model, tokenizer, prompts, sampling, k, seg_len, score_chunk)
        prompt_ids = self.encoded(tokenizer, prompts)
        trajs = [Trajectory(i) for i, m in enumerate(counts) for _ in range(m)]
        consecutive = [0] * len(prompts)
        vocab = len(tokenizer.get_vocab())
        rounds = branches = fresh = 0
        active = list(trajs)
        while active:
            rounds += 1
            batch, H = self.segment(engine, model, tokenizer.eos_token_id, prompt_ids, active, sampling, seg_len, score_chunk)
            generated += sampled_tokens(batch)
            scored += float(batch.response_mask.sum())
            h = segment_entropy(H, batch.response_mask, self.p.entropy_tokens, vocab).tolist()
            for t, h_t in zip(active, h):
                t.h_now = h_t
                t.h_init = h_t if t.h_init is None else t.h_init
            still = [t for t in active if not t.done]
            per_prompt = [sum(t.prompt == i for t in trajs) for i in range(len(prompts))]
            new: list[Trajectory] = []
            for i in range(len(prompts)):
                mine = [t for t in still if t.prompt == i]
                if not mine:
                    if per_prompt[i] < k:  # no live trajectory: start one afresh from the prompt
                        new.append(Trajectory(i))
                        per_prompt[i] += 1
                        fresh += 1
                    continue
                for t in mine:
                    for _ in range(min(self.p.beam_size - 1, k - per_prompt[i])):
                        p = branch_score(float(torch.rand(())), self.p.entropy_weight, t.h_now - t.h_init,
                                         self.p.consecutive_penalty, consecutive[i])
                        if p >= self.p.branch_probability:
                            new.append(t.branch())
                            per_prompt[i] += 1
                            branches += 1
            made = {t.prompt for t in new}
            consecutive = [c + 1 if i in made else 0 for i, c in enumerate(consecutive)]
            trajs += new
            active = still + new
        out = self.assemble(trajs, prompt_ids, tokenizer, sampling, batch.temperature.device)
        metrics = cost_metrics(generated, branches)
        metrics.update({"rollout/scored_tokens": scored, "rollout/aepo_branching/rounds": float(rounds),
                        "rollout/aepo_branching/initial_rollouts": sum(counts) / len(counts),
                        "rollout/aepo_branching/fresh": float(fresh)})
        return out, metrics

    @staticmethod
    def encoded(tokenizer: PreTrainedTokenizerBase, prompts: Prompts) -> list[list[int]]:
        """Prompts as token ids, encoded as the hf engine encodes them (chat templates rendered, no padding)."""
        ids, mask = encode_prompts(tokenizer, prompts, torch.device("cpu"))
        return [row[m.bool()].tolist() for row, m in zip(ids, mask)]

    @staticmethod
    def assemble(trajs: list[Trajectory], prompt_ids: list[list[int]], tokenizer: PreTrainedTokenizerBase,
                 sampling: SamplingParams, device: torch.device) -> RolloutBatch:
        """The batch: each prompt's trajectories in creation order, prompts in order; copies marked as shared."""
        rows = sorted(trajs, key=lambda t: t.prompt)  # stable: creation order within a prompt
        pad, T = tokenizer.pad_token_id, sampling.max_new_tokens
        B, P = len(rows), max(len(prompt_ids[t.prompt]) for t in rows)
        prompt = torch.full((B, P), pad, dtype=torch.long)
        pmask = torch.zeros(B, P, dtype=torch.long)
        ids = torch.full((B, T), pad, dtype=torch.long)
        logp = torch.zeros(B, T)
        temp = torch.full((B, T), sampling.temperature)
        shared = torch.zeros(B, T)
        for i, t in enumerate(rows):
            q, n = prompt_ids[t.prompt], len(t.tokens)
            if q:
                prompt[i, P - len(q):], pmask[i, P - len(q):] = torch.tensor(q), 1
            ids[i, :n] = torch.tensor(t.tokens, dtype=torch.long)
            logp[i, :n], temp[i, :n] = torch.tensor(t.logp), torch.tensor(t.temperature)
            shared[i, : t.shared] = 1.0
        mask, truncated = response_mask_from_ids(ids, tokenizer.eos_token_id)
        return RolloutBatch(
            prompt.to(device), pmask.to(device), ids.to(device), mask.to(device), (logp * mask).to(device),
            decode_texts(tokenizer, ids), truncated.to(device),
            group_index=torch.tensor([t.prompt for t in rows], dtype=torch.long, device=device),
            temperature=temp.to(device), shared_prefix_mask=(shared * mask).to(device), train_shared_prefix=True,
        )
