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
The sampler's entropies come from the logits the probe computes after the step anyway (theta_old's from
the JVP's primal output, theta_new's from the new forward). Numerical differences of a separate engine (vLLM's kernels) are not replayed: rollout_corr/* measures them.
Cost: the gradient of H is taken in the pre-update scoring pass itself (`score_and_probe`: that pass runs with
gradient and backpropagates H chunk by chunk, so the probe adds one backward, not a forward + backward); after
the step, one forward at the new weights (H_new, and the new logits for the identity) and one forward-mode JVP at
theta_old, whose primal output is theta_old's logits: the identity reads those, so theta_old is not run a second
time and no [B, T, V] tensor is kept across the update. The JVP runs with eager attention (fused attention
kernels have no forward-mode derivative). `train.dynamics_every` sets how often. Measured split: docs/LOG.md.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.func import functional_call, jvp
from transformers import PreTrainedModel

from entropy_rl.core.entropy import entropy_from_logp, token_entropy
from entropy_rl.metrics.dynamics import entropy_change_identity
from entropy_rl.rollout.base import SamplingParams
from entropy_rl.rollout.stepwise import StepChoice, step_distribution
from entropy_rl.train.forward import (Features, logits_of, position_ids_from_mask, response_scores, rows_of, score_in_chunks,
                                      stats_of)


@dataclass
class EntropyProbe:
    """What the probe keeps from before the step: gradient of H, parameters and H itself (no logits)."""

    grad_h: dict[str, Tensor]  # by parameter name (trainable parameters only), like theta_old
    theta_old: dict[str, Tensor]
    h_old: float
    dh_per_bonus: float | None
    sampler: "Sampler | None" = None


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


def score_and_probe(
    model: PreTrainedModel, optimizer: torch.optim.Optimizer, input_ids: Tensor, attn: Tensor, prompt_len: int,
    temperature: float | Tensor, score_mask: Tensor, probe_mask: Tensor, chunk: int, features: Features = (),
    params: Any = None,
) -> tuple[tuple[Tensor, Tensor, dict[str, Tensor]], EntropyProbe]:
    """The pre-update scoring pass fused with the probe's gradient pass (grads are left zeroed).

    Args:
        model: the policy, at theta_old.
        optimizer: its optimizer (zeroed; read for dH_per_bonus).
        input_ids: [B, P + T]; attn: [B, P + T]; prompt_len: P.
        temperature: tau, a float or [B, T].
        score_mask: [B, T] tokens the scoring pass computes (every sampled token).
        probe_mask: [B, T] tokens of the probe's H (the trained ones), nonzero only where `score_mask` is.
        chunk: sequences per forward.
        features: the method's pre-update features; params: its params.

    Returns:
        (logp [B, T], entropy [B, T], {feature: [B, T]}) exactly as `score_in_chunks` gives them, and the probe.
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer.zero_grad(set_to_none=True)
    logp, entropy, extras = score_in_chunks(model, input_ids, attn, prompt_len, temperature, chunk, features, params,
                                            mask=score_mask, entropy_grad_mask=probe_mask)
    assert entropy is not None  # want_entropy defaults to True
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for n, p in named.items()}
    optimizer.zero_grad(set_to_none=True)
    n_tokens = probe_mask.sum().clamp_min(1.0)
    chunk = chunk or input_ids.shape[0]
    h_old = sum(float((entropy[i : i + chunk] * probe_mask[i : i + chunk]).sum() / n_tokens)
                for i in range(0, input_ids.shape[0], chunk))
    probe = EntropyProbe(grads, {n: p.detach().clone() for n, p in named.items()}, h_old,
                         adam_bonus_sensitivity(optimizer, list(grads.values()), list(named.values())))
    return (logp, entropy, extras), probe


def sampled_entropy_sum(logits: Tensor, sampler: Sampler, mask: Tensor, start: int, chunk: int) -> Tensor:
    """Sum over the masked tokens of rows start:start+chunk of `rollout_entropy` (logits are those rows'). []."""
    tau = rows_of(sampler.temperature, start, start + chunk)
    with torch.no_grad():
        return rollout_entropy(logits, tau, sampler.sampling, mask[start : start + chunk]).sum()


def probe_before_update(
    model: PreTrainedModel, optimizer: torch.optim.Optimizer, input_ids: Tensor, attn: Tensor, prompt_len: int,
    temperature: float | Tensor, mask: Tensor, chunk: int, sampler: Sampler | None = None,
) -> EntropyProbe:
    """The probe's half before the step on its own: `score_and_probe` scoring just `mask`, its scores dropped;
    with `sampler`, `measure_after_update` also reports the sampler's entropy (H_rollout, ...)."""
    probe = score_and_probe(model, optimizer, input_ids, attn, prompt_len, temperature, mask, mask, chunk)[1]
    return probe if sampler is None else replace(probe, sampler=sampler)


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


def tempered(logits: Tensor, temperature: float | Tensor) -> Tensor:
    """logits / tau in fp32: [b, T, V] divided by a float or by a [b, T] per-token temperature."""
    tau = temperature.unsqueeze(-1) if isinstance(temperature, Tensor) else temperature
    return logits.float() / tau


def entropy_shift(z: Tensor, dz: Tensor, temperature: float | Tensor) -> Tensor:
    """H(z + dz) - H(z) per token [b, T] (nats) of softmax(logits / tau); z, dz: [b, T, V]; tau a float or [b, T]."""
    return token_entropy(tempered(z + dz, temperature)) - token_entropy(tempered(z, temperature))


def linearised_entropy_change(
    model: PreTrainedModel, theta_old: dict[str, Tensor], delta: dict[str, Tensor], input_ids: Tensor, attn: Tensor,
    prompt_len: int, temperature: float | Tensor, mask: Tensor, chunk: int,
) -> float:
    """dynamics/dH_pred_lin: token mean over `mask` of H(z + J delta) - H(z) at theta_old, in nats (tau: a float or
    [B, T])."""
    n_tokens = float(mask.sum().clamp_min(1.0))
    total = 0.0
    for i in range(0, input_ids.shape[0], chunk):
        z, dz = linearised_logit_change(model, theta_old, delta, input_ids[i : i + chunk], attn[i : i + chunk], prompt_len)
        tau = rows_of(temperature, i, i + chunk)
        total += float((entropy_shift(z, dz, tau) * mask[i : i + chunk]).sum()) / n_tokens
    return total


@torch.no_grad()
def measure_after_update(
    model: PreTrainedModel, probe: EntropyProbe, input_ids: Tensor, attn: Tensor, prompt_len: int,
    temperature: float | Tensor, mask: Tensor, chunk: int,
) -> dict[str, float]:
    """dynamics/dH_actual, dH_pred, dH_pred_lin, dH_identity (and dH_per_bonus when Adam has moments) for this step;
    dynamics/H_rollout, H_mismatch and dH_rollout_actual when the probe carries the sampler.

    Chunk by chunk: one forward at the new weights (H_new through the same scoring path as the pre-update pass,
    and the new logits), one JVP at theta_old along the update (its primal output is theta_old's logits, which
    the identity compares the new ones with); each chunk's logits are dropped before the next.
    """
    delta = {n: p.detach() - probe.theta_old[n] for n, p in model.named_parameters() if p.requires_grad}
    dh_pred = sum(float((probe.grad_h[n] * d).sum()) for n, d in delta.items())
    was_training = model.training
    model.eval()
    n_tokens = float(mask.sum().clamp_min(1.0))
    h_new, identity, dh_lin, h_rollout_old, h_rollout_new = 0.0, 0.0, 0.0, 0.0, 0.0
    step = chunk or input_ids.shape[0]
    for i in range(0, input_ids.shape[0], step):
        j = i + step
        ids, a, m = input_ids[i:j], attn[i:j], mask[i:j]
        x, head = response_scores(model, ids, a, prompt_len)
        tau = rows_of(temperature, i, j)
        entropy = stats_of(x, head, ids[:, prompt_len:], tau, mask=m).entropy
        assert entropy is not None  # want_entropy defaults to True
        h_new += float((entropy * m).sum()) / n_tokens
        logits = logits_of(x, head).float()
        z, dz = linearised_logit_change(model, probe.theta_old, delta, ids, a, prompt_len)  # z: theta_old's logits
        # the identity and H(z + dz) on logits / tau (tau 1 below): a per-token temperature divides each row
        identity += entropy_change_identity(tempered(z, tau), tempered(logits, tau), m) * float(m.sum()) / n_tokens
        dh_lin += float((entropy_shift(z, dz, tau) * m).sum()) / n_tokens
        if probe.sampler is not None:
            h_rollout_old += float(sampled_entropy_sum(z, probe.sampler, mask, i, step)) / n_tokens
            h_rollout_new += float(sampled_entropy_sum(logits, probe.sampler, mask, i, step)) / n_tokens
    model.train(was_training)
    out = {"dynamics/dH_actual": h_new - probe.h_old, "dynamics/dH_pred": dh_pred, "dynamics/dH_pred_lin": dh_lin,
           "dynamics/dH_identity": identity}
    if probe.dh_per_bonus is not None:
        out["dynamics/dH_per_bonus"] = probe.dh_per_bonus
    if probe.sampler is not None:
        out["dynamics/H_rollout"] = h_rollout_old
        out["dynamics/H_mismatch"] = h_rollout_old - probe.h_old
        out["dynamics/dH_rollout_actual"] = h_rollout_new - h_rollout_old
    return out
