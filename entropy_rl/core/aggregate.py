"""The one place per-token losses become a scalar (`loss_agg_mode`), normalised over the optimizer mini-batch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum of values where mask is nonzero. [B, T] -> []."""
    return (values * mask.to(values.dtype)).sum()


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | None = None,
    norm_length: float | None = None,
) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar under `mode` (verl's `loss_agg_mode` names).

    Normalisers default to this call's own batch. The trainer passes the *mini-batch* values so that
    summing the results of micro-batches gives exactly the mini-batch loss, whatever the split:

    - token-mean: sum(M*l) / num_tokens (num_tokens = all response tokens of the mini-batch; DAPO).
    - seq-mean-token-mean: sum_i [sum_t M*l / sum_t M]_i / num_seqs (original GRPO).
    - seq-mean-token-sum: sum_i [sum_t M*l]_i / num_seqs.
    - seq-mean-token-sum-norm: sum_i [sum_t M*l]_i / (num_seqs * norm_length) (Dr.GRPO, arXiv:2503.20783:
      a constant length, by default T, replaces |o_i|), as verl 0.9.1 (`loss_scale_factor`; older verl
      omitted the 1/num_seqs).

    num_seqs counts every response, a fully masked (empty) one included; it adds 0 to the sum. Decision: keep
    this. verl 0.9.1's trainer does the same (`global_batch_size` = ppo_mini_batch_size * rollout.n), and it
    gives each response the weight 1/B whatever the other responses of the mini-batch hold. verl's `agg_loss`
    called without `global_batch_size` divides by the number of non-empty responses instead (the verl adapter
    does so in that case); `num_seqs` = that count reproduces it. The two differ only when a response has no
    token in the mask (tests/core/test_aggregate.py, and tests/integrations/test_verl.py against verl's code).

    Args:
        per_token: [B, T] loss per token.
        mask: [B, T] response mask (0/1).
        mode: one of AGG_MODES.
        num_tokens: token-mean denominator; default mask.sum() of this call.
        num_seqs: sequence-mean denominator; default B of this call.
        norm_length: Dr.GRPO constant; default T of this call.

    Returns:
        0-dim loss tensor.

    Raises:
        ValueError: for an unknown mode.
    """
    mask = mask.to(per_token.dtype)
    if mode == "token-mean":
        denom = mask.sum() if num_tokens is None else num_tokens
        if not isinstance(denom, Tensor):
            denom = per_token.new_tensor(float(denom))
        return (per_token * mask).sum() / denom.clamp_min(1.0)
    n_seqs = float(per_token.shape[0]) if num_seqs is None else float(num_seqs)
    n_seqs = max(n_seqs, 1.0)
    seq_sum = (per_token * mask).sum(-1)  # [B]
    if mode == "seq-mean-token-mean":
        return (seq_sum / mask.sum(-1).clamp_min(1.0)).sum() / n_seqs
    if mode == "seq-mean-token-sum":
        return seq_sum.sum() / n_seqs
    if mode == "seq-mean-token-sum-norm":
        length = float(per_token.shape[1]) if norm_length is None else float(norm_length)
        return seq_sum.sum() / (n_seqs * length)
    raise ValueError(f"unknown aggregation mode '{mode}'. Valid: {', '.join(AGG_MODES)}")


def aggregation_weights(
    mask: Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | None = None,
    norm_length: float | None = None,
) -> Tensor:
    """Per-token weights a [B, T] of `aggregate`: aggregate(l, mask, mode, ...) == (l * a).sum() for every l [B, T].

    For methods that must place a mini-batch quantity on tokens so that the trainer's aggregation returns it
    exactly (e.g. SIREN's squared penalty): a token's loss counts a_bt times in the aggregated loss. Same
    arguments and defaults as `aggregate`:

    - token-mean: a = M / num_tokens;
    - seq-mean-token-mean: a = M / (len_b num_seqs), len_b = sum_t M_bt;
    - seq-mean-token-sum: a = M / num_seqs;
    - seq-mean-token-sum-norm: a = M / (num_seqs norm_length).

    Args:
        mask: [B, T] response mask (0/1, any dtype; the weights are float, in the mask's dtype if floating).
        mode: one of AGG_MODES.
        num_tokens: token-mean denominator; default mask.sum().
        num_seqs: sequence-mean denominator; default B.
        norm_length: Dr.GRPO constant; default T.

    Returns:
        [B, T] non-negative weights, exactly 0 where the mask is 0.

    Raises:
        ValueError: for an unknown mode.
    """
    m = mask if mask.is_floating_point() else mask.to(torch.get_default_dtype())
    if mode == "token-mean":
        denom = m.sum() if num_tokens is None else num_tokens
        if not isinstance(denom, Tensor):
            denom = m.new_tensor(float(denom))
        return m / denom.to(m.dtype).clamp_min(1.0)
    n_seqs = max(float(m.shape[0]) if num_seqs is None else float(num_seqs), 1.0)
    if mode == "seq-mean-token-mean":
        return m / (m.sum(-1, keepdim=True).clamp_min(1.0) * n_seqs)
    if mode == "seq-mean-token-sum":
        return m / n_seqs
    if mode == "seq-mean-token-sum-norm":
        length = float(m.shape[1]) if norm_length is None else float(norm_length)
        return m / (n_seqs * length)
    raise ValueError(f"unknown aggregation mode '{mode}'. Valid: {', '.join(AGG_MODES)}")


@dataclass(frozen=True, eq=False)
class Aggregation:
    """How the trainer turns per-token losses into the loss of one optimizer mini-batch (the `aggregate` arguments).

    The trainer puts it in the step context (`StepContext.agg`) and aggregates with it, so a method that needs
    the aggregation's per-token weights gets exactly the trainer's (`weights`). `None` normalisers mean "the
    batch passed in" (right for a call that is its own mini-batch).

    Attributes:
        mode: one of AGG_MODES (`algorithm.loss_agg_mode`).
        num_tokens: response tokens of the optimizer mini-batch (token-mean), or None.
        num_seqs: sequences of the optimizer mini-batch, or None.
        norm_length: Dr.GRPO constant (the trainer uses `rollout.max_new_tokens`), or None for T of the batch.
    """

    mode: str = "token-mean"
    num_tokens: float | Tensor | None = None
    num_seqs: float | None = None
    norm_length: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in AGG_MODES:
            raise ValueError(f"unknown aggregation mode '{self.mode}'. Valid: {', '.join(AGG_MODES)}")

    def for_minibatch(self, num_tokens: float | Tensor, num_seqs: float) -> "Aggregation":
        """The same aggregation with the normalisers of one optimizer mini-batch."""
        return replace(self, num_tokens=num_tokens, num_seqs=num_seqs)

    def reduce(self, per_token: Tensor, mask: Tensor) -> Tensor:
        """`aggregate(per_token, mask, ...)` with this aggregation: [B, T] -> 0-dim."""
        return aggregate(
            per_token, mask, self.mode, num_tokens=self.num_tokens, num_seqs=self.num_seqs, norm_length=self.norm_length
        )

    def weights(self, mask: Tensor) -> Tensor:
        """`aggregation_weights(mask, ...)` with this aggregation: [B, T] -> [B, T]."""
        return aggregation_weights(
            mask, self.mode, num_tokens=self.num_tokens, num_seqs=self.num_seqs, norm_length=self.norm_length
        )
