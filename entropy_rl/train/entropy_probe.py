"""Entropy-dynamics probe around one optimizer step: predicted vs measured change of `entropy/token_mean`.

Before the update it takes the gradient of the batch entropy H(theta) (the exact quantity `entropy/token_mean`
measures: tempered, response tokens, token mean) and a copy of the parameters; after the update it re-scores
the same rollout batch. Then:
  - dH_actual   = H(theta_new) - H(theta_old), measured;
  - dH_pred     = grad H(theta_old) . (theta_new - theta_old): first order in parameter space, using the
                  optimizer's actual update (no post-step forward pass enters it);
  - dH_pred_lin = mean_t [H(z_t + J_t dtheta) - H(z_t)]: the network linearised at theta_old (one forward-mode
                  JVP along the update), the softmax entropy kept exact. A function of (theta_old, dtheta) only,
                  like dH_pred; it tracks dH_actual far better late in training, when peaked tokens make the
                  entropy strongly non-linear in the logits (docs/LOG.md);
  - dH_identity = mean_t -Cov_{a~pi_old}(log pi_old(a), dz_t(a)) with the actual logit change dz (methods.md
                  section 1): first order in logit space, validates the instrument;
  - dH_per_bonus = predicted dH of adding an entropy bonus of coefficient 1 to this step's gradient under the
                  current Adam preconditioner: lr (1 - b1) / (1 - b1^t) * sum g_H^2 / (sqrt(v_hat) + eps).
Beside the update's change it separates the drift caused by the rollout/trainer mismatch (`sampler` given):
  - H_rollout   = token mean of the entropy of the distribution the rollout sampled from, on the same tokens and
                  logits: softmax(z / tau_sampling) with `rollout.top_k` / `top_p` replayed (Hugging Face's warpers,
                  as the `hf` engine applies them); a strategy's own truncation rule (top_h) is not replayed;
  - H_mismatch  = H_rollout - H(theta_old): what the sampler's entropy differs from the trainer's (0 to fp32
                  rounding when the sampler is the trainer's softmax(z / tau));
  - dH_rollout_actual = H_rollout(theta_new) - H_rollout(theta_old): the update's change as the sampler sees it.
Numerical differences of a separate engine (vLLM's kernels) are not replayed: rollout_corr/* measures them.
Costs one extra forward + backward before and, after the step, two forwards (new weights, and theta_old again for
the identity's old logits, so no [B, T, V] tensor is kept across the update) plus one forward-mode JVP (run with
eager attention: fused attention kernels have no forward-mode derivative); `train.dynamics_every` sets how often.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor
from torch.func import functional_call, jvp
from transformers import PreTrainedModel

from entropy_rl.core.entropy import token_entropy
from entropy_rl.core.token_stats import token_stats
from entropy_rl.core.entropy import entropy_from_logp
from entropy_rl.metrics.dynamics import entropy_change_identity
from entropy_rl.rollout.base import SamplingParams
from entropy_rl.rollout.stepwise import StepChoice, step_distribution
from entropy_rl.train.forward import position_ids_from_mask, response_logits


@dataclass
class EntropyProbe:
    """What the probe keeps from before the step: gradient of H, parameters and H itself (no logits)."""

    grad_h: dict[str, Tensor]  # by parameter name (trainable parameters only), like theta_old
    theta_old: dict[str, Tensor]
    h_old: float
    dh_per_bonus: float | None
    sampler: "Sampler | None" = None
    h_rollout: float | None = None


@dataclass(frozen=True)
class Sampler:
    """The rollout's sampling distribution as the trainer replays it.

    Attributes:
        temperature: the sampling temperature, a float or [B, T] per response token (`RolloutBatch.temperature`).
        sampling: the run's sampling settings (top_k / top_p are replayed; its temperature is not used).
    """

    temperature: float | Tensor
    sampling: SamplingParams


def rollout_entropy(logits: Tensor, temperature: float | Tensor, sampling: SamplingParams, mask: Tensor) -> Tensor:
    """Entropy [B, T] fp32 (nats, 0 off the mask) of the sampling distribution: softmax of logits / tau after
    top-k / top-p, as the `hf` engine samples. No gradient.

    Args:
        logits: [B, T, V] raw response logits.
        temperature: tau, a float or [B, T].
        sampling: top_k / top_p to replay (0 / 1 disable).
        mask: [B, T] response mask; only these tokens are computed.
    """
    keep = mask.bool()
    z = logits.detach()[keep].float()  # [n, V]
    tau = temperature[keep] if isinstance(temperature, Tensor) else torch.full((z.shape[0],), float(temperature))
    h = entropy_from_logp(step_distribution(z, StepChoice(tau.float().to(z.device)), sampling))  # [n]
    out = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    out[keep] = h
    return out


def adam_bonus_sensitivity(optimizer: torch.optim.Optimizer, grads: list[Tensor], params: list[Tensor]) -> float | None:
    """First-order dH of a unit entropy bonus under Adam(W)'s current second moments, or None before step 1."""
    if any("exp_avg_sq" not in optimizer.state.get(p, {}) for group in optimizer.param_groups for p in group["params"]):
        return None  # no second moments before the first step: Adam's first update is sign-like, not linear
    # pair gradients with params by identity (optimizer groups hold the same tensors as model.parameters())
    by_id = {id(p): g for p, g in zip(params, grads)}
    total = 0.0
    for group in optimizer.param_groups:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            state = optimizer.state[p]
            t = float(state["step"]) + 1
            v_hat = state["exp_avg_sq"] / (1 - beta2 ** (t - 1))
            scale = group["lr"] * (1 - beta1) / (1 - beta1**t)
            g = by_id[id(p)]
            total += scale * float((g * g / (v_hat.sqrt() + group["eps"])).sum())
    return total


def probe_before_update(
    model: PreTrainedModel, optimizer: torch.optim.Optimizer, input_ids: Tensor, attn: Tensor, prompt_len: int,
    temperature: float, mask: Tensor, chunk: int, sampler: Sampler | None = None,
) -> EntropyProbe:
    """Gradient of the batch token-mean entropy and a snapshot of the parameters (grads are left zeroed); with
    `sampler`, also the token mean of the sampling distribution's entropy on the same logits (`rollout_entropy`)."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.eval()
    optimizer.zero_grad(set_to_none=True)
    n_tokens = mask.sum().clamp_min(1.0)
    h_sum, h_rollout = 0.0, 0.0
    for i in range(0, input_ids.shape[0], chunk):
        ids = input_ids[i : i + chunk]
        logits = response_logits(model, ids, attn[i : i + chunk], prompt_len)
        h = (response_entropy(logits, ids[:, prompt_len:], temperature) * mask[i : i + chunk]).sum() / n_tokens
        h_sum += h.detach().item()
        if sampler is not None:
            h_rollout += float(sampled_entropy_sum(logits, sampler, mask, i, chunk) / n_tokens)
        h.backward()
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for n, p in named.items()}
    optimizer.zero_grad(set_to_none=True)
    model.train(was_training)
    return EntropyProbe(grads, {n: p.detach().clone() for n, p in named.items()}, h_sum,
                        adam_bonus_sensitivity(optimizer, list(grads.values()), list(named.values())), sampler,
                        h_rollout if sampler is not None else None)


def sampled_entropy_sum(logits: Tensor, sampler: Sampler, mask: Tensor, start: int, chunk: int) -> Tensor:
    """Sum over the masked tokens of rows start:start+chunk of `rollout_entropy` (logits are those rows'). []."""
    tau = sampler.temperature
    rows = slice(start, start + chunk)
    tau_rows = tau[rows] if isinstance(tau, Tensor) else tau
    with torch.no_grad():
        return rollout_entropy(logits, tau_rows, sampler.sampling, mask[rows]).sum()


def response_entropy(logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
    """Tempered entropy [B, T] fp32 of response logits [B, T, V], chunked over tokens; grad as the caller's mode."""
    entropy = token_stats(logits, tokens, temperature).entropy
    assert entropy is not None  # want_entropy defaults to True
    return entropy


def response_logits_at(
    model: PreTrainedModel, params: dict[str, Tensor], input_ids: Tensor, attn: Tensor, prompt_len: int
) -> Tensor:
    """`response_logits` [B, T, V] with the model's parameters replaced by `params` (by name) for this call."""
    out = functional_call(model, params, (), {"input_ids": input_ids, "attention_mask": attn,
                                              "position_ids": position_ids_from_mask(attn)})
    return out.logits[:, prompt_len - 1 : -1]


@contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[None]:
    """Run `model` with eager attention inside the block (forward-mode AD needs it), then restore its setting."""
    before = model.config._attn_implementation
    if before == "eager":
        yield
        return
    if not hasattr(model, "set_attn_implementation"):
        raise RuntimeError("dynamics/dH_pred_lin needs transformers >= 4.56 (set_attn_implementation), "
                           "or load the model with attn_implementation='eager'")
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def linearised_logit_change(
    model: PreTrainedModel, theta_old: dict[str, Tensor], delta: dict[str, Tensor], input_ids: Tensor, attn: Tensor,
    prompt_len: int,
) -> tuple[Tensor, Tensor]:
    """Response logits z at theta_old and their first-order change J delta (one JVP): [B, T, V] each, fp32.

    Reads only `theta_old` and `delta` (by parameter name), never the model's current weights.
    """

    def logits_at(params: dict[str, Tensor]) -> Tensor:
        return response_logits_at(model, params, input_ids, attn, prompt_len)

    with eager_attention(model):
        z, dz = jvp(logits_at, (theta_old,), (delta,))
    return z.float(), dz.float()


def linearised_entropy_change(
    model: PreTrainedModel, theta_old: dict[str, Tensor], delta: dict[str, Tensor], input_ids: Tensor, attn: Tensor,
    prompt_len: int, temperature: float, mask: Tensor, chunk: int,
) -> float:
    """dynamics/dH_pred_lin: token mean over `mask` of H(z + J delta) - H(z) at theta_old, in nats."""
    n_tokens = float(mask.sum().clamp_min(1.0))
    total = 0.0
    for i in range(0, input_ids.shape[0], chunk):
        z, dz = linearised_logit_change(model, theta_old, delta, input_ids[i : i + chunk], attn[i : i + chunk], prompt_len)
        change = token_entropy(z + dz, temperature) - token_entropy(z, temperature)
        total += float((change * mask[i : i + chunk]).sum()) / n_tokens
    return total


@torch.no_grad()
def measure_after_update(
    model: PreTrainedModel, probe: EntropyProbe, input_ids: Tensor, attn: Tensor, prompt_len: int,
    temperature: float, mask: Tensor, chunk: int,
) -> dict[str, float]:
    """dynamics/dH_actual, dH_pred, dH_pred_lin, dH_identity (and dH_per_bonus when Adam has moments) for this step;
    dynamics/H_rollout, H_mismatch and dH_rollout_actual when the probe was given the sampler.

    Chunk by chunk it scores the new weights and, for the identity, theta_old again (the same forward as before
    the step, so the old logits are those the probe saw); each chunk's logits are dropped before the next.
    """
    delta = {n: p.detach() - probe.theta_old[n] for n, p in model.named_parameters() if p.requires_grad}
    dh_pred = sum(float((probe.grad_h[n] * d).sum()) for n, d in delta.items())
    was_training = model.training
    model.eval()
    n_tokens = float(mask.sum().clamp_min(1.0))
    h_new, identity, h_rollout_new = 0.0, 0.0, 0.0
    for i in range(0, input_ids.shape[0], chunk):
        ids, a, m = input_ids[i : i + chunk], attn[i : i + chunk], mask[i : i + chunk]
        logits = response_logits(model, ids, a, prompt_len).float()
        h_new += float((response_entropy(logits, ids[:, prompt_len:], temperature) * m).sum()) / n_tokens
        if probe.sampler is not None:
            h_rollout_new += float(sampled_entropy_sum(logits, probe.sampler, mask, i, chunk)) / n_tokens
        old_logits = response_logits_at(model, probe.theta_old, ids, a, prompt_len).float()
        identity += entropy_change_identity(old_logits, logits, m, temperature) * float(m.sum()) / n_tokens
    dh_lin = linearised_entropy_change(model, probe.theta_old, delta, input_ids, attn, prompt_len, temperature, mask, chunk)
    model.train(was_training)
    out = {"dynamics/dH_actual": h_new - probe.h_old, "dynamics/dH_pred": dh_pred, "dynamics/dH_pred_lin": dh_lin,
           "dynamics/dH_identity": identity}
    if probe.dh_per_bonus is not None:
        out["dynamics/dH_per_bonus"] = probe.dh_per_bonus
    if probe.h_rollout is not None:
        out["dynamics/H_rollout"] = probe.h_rollout
        out["dynamics/H_mismatch"] = probe.h_rollout - probe.h_old
        out["dynamics/dH_rollout_actual"] = h_rollout_new - probe.h_rollout
    return out
