"""The rollout batch after the pre-update pass (`ScoredBatch`), and the one place per-step seeds come from.

`ScoredBatch.rows(idx, ...)` is where `PolicyInputs` are built: selection (on the rollout policy or the
current one) and every micro-batch of the update read their rows through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor
from transformers import PreTrainedModel

from entropy_rl.core.policy_loss import FeatureFn
from entropy_rl.core.types import PolicyInputs
from entropy_rl.rollout.base import RolloutBatch
from entropy_rl.train.entropy_probe import EntropyProbe, score_and_probe
from entropy_rl.train.forward import score_in_chunks

# Every random stream of a step, by kind. The formulas are kept as they were when the golden metrics were
# pinned (tests/train/test_golden.py): changing one changes the data order, selections or prompts of a run.
_SEEDS: dict[str, Callable[[int, int, int, int], int]] = {
    "prompts": lambda seed, step, epoch, mb: seed * 1_000_003 + step,  # the step's training problems
    "order": lambda seed, step, epoch, mb: seed * 7_919 + step * 31 + epoch,  # mini-batch shuffle of an epoch
    "select": lambda seed, step, epoch, mb: ((seed * 1_000_003 + step) * 101 + epoch) * 1_009 + mb,  # select()
    "eval": lambda seed, step, epoch, mb: seed + 10_007 * step,  # evaluation sampling at a step
}


def seed_for(kind: str, seed: int, step: int, epoch: int = 0, minibatch: int = 0) -> int:
    """Seed of the random stream `kind` (prompts | order | select | eval) of run seed `seed` at a step.

    Raises:
        KeyError: for an unknown kind.
    """
    return _SEEDS[kind](seed, step, epoch, minibatch)


@dataclass(frozen=True)
class ScoredBatch:
    """A rollout batch with its pre-update statistics. Tensors are [B, T] (response positions) unless noted.

    Attributes:
        input_ids: [B, P + T] prompt then response token ids.
        attention_mask: [B, P + T].
        prompt_len: P.
        temperature: the sampling temperature tau (a float), or [B, T] when it varies per token.
        mask: the trained tokens (float): the response mask less what the strategy does not train and what the
            rollout correction rejects (`algorithm.rollout_correction.rollout_rs`).
        old_logp: tempered log-probs of the sampled tokens under the rollout policy (no grad).
        old_entropy: H_old, tempered full-vocabulary entropy (no grad).
        adv: per-token advantages (0 off the mask).
        ref_logp: reference-model log-probs, or None without a KL penalty.
        extras: the method's features from the pre-update pass, by name.
        is_weights: detached rollout-correction IS weights that multiply every token's policy loss, or None (off).
    """

    input_ids: Tensor
    attention_mask: Tensor
    prompt_len: int
    temperature: float | Tensor
    mask: Tensor
    old_logp: Tensor
    old_entropy: Tensor
    adv: Tensor
    ref_logp: Tensor | None
    extras: Mapping[str, Tensor]
    is_weights: Tensor | None = None

    @property
    def n_seqs(self) -> int:
        """B."""
        return self.mask.shape[0]

    def rows(self, idx: Tensor | slice, logp: Tensor | None = None, entropy: Tensor | None = None,
             extras: Mapping[str, Tensor] | None = None) -> PolicyInputs:
        """PolicyInputs of rows `idx`: the current policy's logp / entropy / features where given (update pass),
        else the rollout policy's (selection before any update of the step)."""
        return PolicyInputs(
            self.old_logp[idx] if logp is None else logp,
            self.old_logp[idx],
            self.adv[idx],
            self.mask[idx],
            self.old_entropy[idx] if entropy is None else entropy,
            self.old_entropy[idx],
            None if self.ref_logp is None else self.ref_logp[idx],
            {**{k: v[idx] for k, v in self.extras.items()}, **(extras or {})},
        )

    def rescore(self, model: PreTrainedModel, idx: Tensor, chunk: int, features: tuple[tuple[str, FeatureFn], ...],
                params: Any) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """(logp, entropy, features) of rows `idx` under the model's current weights, no grad, in chunks."""
        return score_in_chunks(model, self.input_ids[idx], self.attention_mask[idx], self.prompt_len,
                               self.temperature if isinstance(self.temperature, float) else self.temperature[idx],
                               chunk, features, params, mask=self.mask[idx])


def scoring_temperature(batch: RolloutBatch) -> float | Tensor:
    """The temperature the trainer divides logits by: the batch's one value, or its [B, T] tensor when it varies."""
    uniform = batch.uniform_temperature()
    return batch.score_temperature if uniform is None else uniform


def score_batch(model: PreTrainedModel, ref_model: PreTrainedModel | None, batch: RolloutBatch, chunk: int,
                features: tuple[tuple[str, FeatureFn], ...], params: Any, probe_with: torch.optim.Optimizer | None = None,
                ) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor | None, EntropyProbe | None]:
    """The pre-update pass: (old_logp, H_old, features, ref_logp), each [B, T], in chunks of rows, and the
    entropy-change probe's first half when `probe_with` (the optimizer) is given: then the same forward also
    takes the gradient of H over `batch.loss_mask` (`entropy_probe.score_and_probe`); the values are the same."""
    tau = scoring_temperature(batch)
    ids, attn, P, mask = batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], batch.response_mask  # every sampled token
    probe = None
    if probe_with is None:
        old_logp, old_entropy, extras = score_in_chunks(model, ids, attn, P, tau, chunk, features, params, mask=mask)
    else:
        (old_logp, old_entropy, extras), probe = score_and_probe(model, probe_with, ids, attn, P, tau, mask,
                                                                 batch.loss_mask, chunk, features, params)
    assert old_entropy is not None  # want_entropy defaults to True
    ref_logp = None if ref_model is None else score_in_chunks(ref_model, ids, attn, P, tau, chunk, mask=mask)[0]
    return old_logp, old_entropy, extras, ref_logp, probe


def per_token_advantages(adv: Tensor, mask: Tensor) -> Tensor:
    """Sequence advantages [B] broadcast over the response (or per-token [B, T] as given), 0 off the mask. [B, T]."""
    return adv.unsqueeze(-1) * mask if adv.dim() == 1 else adv * mask


def row_order(n_seqs: int, mini_batches: int, seed: int, device: torch.device) -> Tensor:
    """The epoch's row order: a seeded permutation when there are several mini-batches, else 0..B-1. [B]."""
    if mini_batches == 1:
        return torch.arange(n_seqs, device=device)
    return torch.randperm(n_seqs, generator=torch.Generator().manual_seed(seed)).to(device)


def batch_advantages(name: str, params: Mapping[str, Any], rewards: Tensor, batch: RolloutBatch, mask: Tensor,
                     old_entropy: Tensor) -> Tensor:
    """Per-token advantages [B, T]: the estimator over the rows a strategy did not fix (`batch.fixed_rows`), the
    fixed rows' own advantage elsewhere; 0 off `mask`."""
    from entropy_rl.core.advantage import compute_advantages

    fixed = batch.fixed_rows
    if not bool(fixed.any()):
        adv = compute_advantages(name, rewards, batch.group_index, mask=mask, old_entropy=old_entropy, **params)
        return per_token_advantages(adv, mask)
    free = ~fixed
    part = per_token_advantages(compute_advantages(name, rewards[free], batch.group_index[free], mask=mask[free],
                                                   old_entropy=old_entropy[free], **params), mask[free])
    adv = batch.fixed_advantage.to(mask.dtype).unsqueeze(-1) * mask  # [B, T]
    adv[free] = part
    return adv
