"""The one place per-token losses become a scalar (`loss_agg_mode`), normalised over the optimizer mini-batch."""

from __future__ import annotations

from typing import Literal

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

    num_seqs counts every response, a fully masked (empty) one included; it adds 0 to the sum. verl 0.9.1's
    trainer does the same (`global_batch_size` = ppo_mini_batch_size * rollout.n), but its `agg_loss` called
    without `global_batch_size` divides by the number of non-empty responses instead. The two differ only
    when a response has no token in the mask; `num_seqs` = that count reproduces the latter.

    Args:
        per_token: [B, T] loss per token.
        mask: [B, T] response mask (0/1).
        mode: one of AGG_MODES.
        num_tokens: token-mean denominator; default mask.sum() of this call.
        num_seqs: sequence-mean denominator; default B of this call.
        norm_length: Dr.GRPO constant; default T of this call.

    Returns:
        0-dim loss tensor.
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
