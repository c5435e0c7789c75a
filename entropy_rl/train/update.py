"""The policy update of one step: epochs x optimizer mini-batches x micro-batches.

Selection runs once per mini-batch (token choice never depends on the micro-batch size); micro-batch losses
are aggregated with the mini-batch normalisers and accumulate gradients; a mini-batch whose loss or gradient
is not finite is skipped, and one whose optimizer step leaves anything non-finite is rolled back (`guard`).
Metrics stay tensors (fp64 sums) until the caller syncs them once per step (`MetricSums.means`).

Rollout correction (`ScoredBatch.is_weights`, detached) multiplies the method's per-token loss before the
KL-to-reference penalty is added, whatever the method: the loss as the method returns it, so a regularizer a
method folds into its per-token loss (entropy_bonus's -c H) is weighted too, where verl and TRL weight only the
policy-gradient term (their entropy bonus and KL loss are separate terms). Rejected tokens are already off
`batch.mask`, so they leave selection, the method's metrics and the aggregation denominators (verl's modified
`response_mask`); a zero IS weight (IcePop) keeps its token in them (verl's `rollout_is_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import torch
from torch import Tensor
from transformers import PreTrainedModel

from entropy_rl.core.aggregate import aggregate
from entropy_rl.core.kl import kl_estimate
from entropy_rl.core.policy_loss import PolicyLossMethod, check_inputs, run_select
from entropy_rl.core.registry import Entry
from entropy_rl.core.types import StepContext, TokenWeights
from entropy_rl.train.batch import ScoredBatch, row_order, seed_for
from entropy_rl.train.config import Config
from entropy_rl.train.forward import entropy_for_update, score_responses


class StepGuard(Protocol):
    """Snapshot before `optimizer.step()`, check after, roll back when the step left non-finite values."""

    def snapshot(self) -> None: ...

    def check(self, input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> str | None: ...

    def rollback(self) -> bool: ...


@dataclass
class MetricSums:
    """Weighted metric sums kept as fp64 tensors on the device: key -> [sum(w * v), sum(w)]."""

    sums: dict[str, list[Tensor]] = field(default_factory=dict)

    def add(self, metrics: Mapping[str, Tensor | float], weight: Tensor | float) -> None:
        """Accumulate `metrics` (scalars) with weight `weight` (e.g. the micro-batch's token count)."""
        w = torch.as_tensor(weight, dtype=torch.float64)
        for key, value in metrics.items():
            v = torch.as_tensor(value).detach().to(torch.float64)
            s = self.sums.setdefault(key, [torch.zeros((), dtype=torch.float64, device=v.device),
                                           torch.zeros((), dtype=torch.float64, device=v.device)])
            s[0] = s[0] + w.to(v.device) * v
            s[1] = s[1] + w.to(v.device)

    def merge(self, other: "MetricSums") -> None:
        """Add another accumulator's sums into this one."""
        for key, (s, w) in other.sums.items():
            mine = self.sums.setdefault(key, [torch.zeros_like(s), torch.zeros_like(w)])
            mine[0], mine[1] = mine[0] + s, mine[1] + w

    def means(self) -> dict[str, float]:
        """Weighted means as Python floats: the one device sync of the step's update metrics."""
        if not self.sums:
            return {}
        keys = list(self.sums)
        flat = torch.stack([t for k in keys for t in self.sums[k]]).cpu().tolist()
        return {k: flat[2 * i] / max(flat[2 * i + 1], 1e-12) for i, k in enumerate(keys)}


@dataclass(frozen=True)
class UpdateResult:
    """What one step's update did: weighted-mean metrics, mini-batches skipped and rolled back, and why."""

    metrics: dict[str, float]
    skipped: int
    rolled_back: int
    reason: str


def update_policy(model: PreTrainedModel, optimizer: torch.optim.Optimizer, method: Entry[PolicyLossMethod], params: Any,
                  ctx: StepContext, batch: ScoredBatch, cfg: Config, step: int, guard: StepGuard | None = None) -> UpdateResult:
    """Epochs x mini-batches x micro-batches of `method` on `batch`; see the module docstring."""
    o, a = cfg.optim, cfg.algorithm
    B, T = batch.mask.shape
    mb_size = B // o.mini_batches
    micro = o.micro_batch_size or mb_size
    want_entropy = entropy_for_update(method.obj)
    acc, skipped, rolled_back, reason = MetricSums(), 0, 0, ""
    for epoch in range(o.epochs):
        order = row_order(B, o.mini_batches, seed_for("order", cfg.train.seed, step, epoch), batch.mask.device)
        for mb_index in range(o.mini_batches):
            rows = order[mb_index * mb_size : (mb_index + 1) * mb_size]
            n_tokens = batch.mask[rows].sum()
            gen = torch.Generator().manual_seed(seed_for("select", cfg.train.seed, step, epoch, mb_index))
            mb_ctx = ctx.for_minibatch(num_tokens=n_tokens, num_seqs=mb_size)
            sel = TokenWeights()  # a method without `select` gets an empty selection
            if a.selection_scope == "minibatch" and method.obj.select is not None:
                if epoch == 0 and mb_index == 0:  # policy == rollout policy: the pre-update pass is exact
                    x_sel = batch.rows(rows)
                else:  # later mini-batches: the current policy's values (only the update-pass features)
                    x_sel = batch.rows(rows, *batch.rescore(model, rows, micro, method.obj.cur_features, params))
                sel = run_select(method, params, x_sel, mb_ctx, gen)
            optimizer.zero_grad(set_to_none=True)
            mb_acc, mb_loss = MetricSums(), torch.zeros((), dtype=torch.float64, device=batch.mask.device)
            for start in range(0, mb_size, micro):
                r = rows[start : start + micro]
                tau = batch.temperature if isinstance(batch.temperature, float) else batch.temperature[r]
                logp, ent, cur = score_responses(model, batch.input_ids[r], batch.attention_mask[r], batch.prompt_len, tau,
                                                 method.obj.cur_features, params, want_entropy=want_entropy, mask=batch.mask[r])
                x = batch.rows(r, logp, ent, cur)
                check_inputs(method, x)
                micro_sel = sel.rows(slice(start, start + micro)) if a.selection_scope == "minibatch" \
                    else run_select(method, params, x, mb_ctx, gen)
                out = method.obj.loss(x, params, micro_sel, mb_ctx)
                per_token = out.per_token
                if batch.is_weights is not None:  # rollout correction: engine vs trainer log-probs, detached
                    per_token = per_token * batch.is_weights[r]
                if x.ref_logp is not None:
                    kl = kl_estimate(logp, x.ref_logp, a.kl_estimator)
                    per_token = per_token + a.kl_coef * kl
                    out.metrics["policy/kl_ref"] = (kl.detach() * x.mask).sum() / x.mask.sum().clamp_min(1)
                loss = aggregate(per_token, x.mask, a.loss_agg_mode, num_tokens=n_tokens, num_seqs=mb_size, norm_length=T)
                loss.backward()
                mb_loss = mb_loss + loss.detach().double()  # micro losses sum to the mini-batch loss
                mb_acc.add({**out.metrics, **micro_sel.metrics}, x.mask.sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip if o.grad_clip > 0 else float("inf"))
            if not bool(torch.isfinite(mb_loss) & torch.isfinite(grad_norm)):  # one sync per mini-batch
                optimizer.zero_grad(set_to_none=True)  # never let a non-finite update touch the weights
                skipped += 1
                reason = "non-finite loss" if not torch.isfinite(mb_loss) else "non-finite gradient norm"
                continue
            if guard is not None:
                guard.snapshot()
            optimizer.step()
            bad = guard.check(batch.input_ids[rows[:1]], batch.attention_mask[rows[:1]], batch.prompt_len) if guard else None
            if bad is not None:  # finite gradients can still give non-finite weights (huge lr, corrupted state)
                state_ok = guard.rollback()
                skipped, rolled_back = skipped + 1, rolled_back + 1
                reason = f"{bad}; rolled back" + ("" if state_ok else
                                                 "; the optimizer state was already non-finite before the step (corrupted?)")
                continue
            acc.merge(mb_acc)
            acc.add({"policy/grad_norm": grad_norm, "policy/loss": mb_loss}, 1.0)
    return UpdateResult(acc.means(), skipped, rolled_back, reason)
