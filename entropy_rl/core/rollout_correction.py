"""Rollout-mismatch correction: importance weights and rejection masks from the rollout engine's log-probs.

The rollout engine samples each token from q = its own distribution (another numeric path, top-k / top-p
truncation, another temperature, stale weights); the trainer's pre-update pass recomputes pi_old(token). With
log r_t = log pi_old(o_t) - log q(o_t) (per response token), this module computes, on detached tensors:

  - importance-sampling (IS) weights that multiply every token's policy-gradient loss (`rollout_is`):
      token level: w_t = r_t;  sequence level: w_t = prod_s r_s for every token of the sequence;
      truncated (TIS, a float threshold C): w = min(w, C);
      two-sided masking (IcePop, a "lower_upper" threshold): w = w if lower <= w <= upper else 0;
  - rejection masks that drop tokens or whole sequences from the loss and its denominators (`rollout_rs`),
    on per-token divergences k1 = -log r (= log q / pi_old), k2 = (log r)^2 / 2, k3 = r - 1 - log r,
    aggregated per token, or per sequence as sum / mean / max: masking (MIS) is `seq_sum_k1` with ratio bounds,
    geometric-mean rejection (Geo-RS) is `seq_mean_k1` (bounds on the geometric mean of 1 / r);
  - diagnostics of the mismatch (`mismatch_metrics`): KL, k3-KL, chi^2 (token and sequence), perplexities.

Option names and semantics follow verl 0.9.1 (`verl/trainer/ppo/rollout_corr_helper.py`,
`RolloutCorrectionConfig`): the same option strings, the same threshold grammar (`2.0`, `"0.5_5.0"`, one value
per rejection option or one shared), log-ratios clamped to [-20, 20] before exponentiating, IS weights zero off
the mask, and k1 bounds given in ratio space and compared against k1 in log space. TRL's
`vllm_importance_sampling_mode` names are accepted as `rollout_is` values (`TRL_MODES`): `token_truncate` and
`sequence_truncate` clamp to [lower, upper] (lower only from a "lower_upper" threshold; verl has no lower clamp),
`token_mask` and `sequence_mask` zero weights outside [lower, upper] (no lower bound from a float threshold,
TRL's `vllm_importance_sampling_clip_min=None`; IcePop otherwise). Departure: verl refuses an empty response
mask; here the statistics of an empty mask are 0.

Shapes: B sequences, T response tokens; every tensor argument is [B, T] fp32 and aligned on response positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

SAFETY_BOUND = 20.0  # |log-ratio| clamp before exp (verl's bound: exp(20) ~ 4.9e8)
IS_LEVELS: tuple[str, ...] = ("token", "sequence")
TRL_MODES: dict[str, tuple[str, str]] = {  # TRL vllm_importance_sampling_mode -> (level, kind)
    "token_truncate": ("token", "truncate"),
    "token_mask": ("token", "mask"),
    "sequence_truncate": ("sequence", "truncate"),
    "sequence_mask": ("sequence", "mask"),
}
RS_OPTIONS: tuple[str, ...] = (
    "token_k1", "token_k2", "token_k3",
    "seq_sum_k1", "seq_sum_k2", "seq_sum_k3",
    "seq_mean_k1", "seq_mean_k2", "seq_mean_k3",
    "seq_max_k2", "seq_max_k3",
)  # fmt: skip


@dataclass(frozen=True)
class ISSpec:
    """How IS weights are formed.

    Attributes:
        level: "token" (w_t = r_t) or "sequence" (w_t = prod over the response of r).
        kind: "truncate" (clamp to [lower, upper]) or "mask" (zero outside [lower, upper]).
        upper: upper bound (> 0).
        lower: lower bound (> 0, <= upper), or None for none.
        batch_normalize: divide the weights by their batch mean (verl `rollout_is_batch_normalize`).
    """

    level: Literal["token", "sequence"]
    kind: Literal["truncate", "mask"]
    upper: float
    lower: float | None = None
    batch_normalize: bool = False


@dataclass(frozen=True)
class RSOption:
    """One rejection criterion (a verl `rollout_rs` option) with its bounds.

    Attributes:
        name: one of RS_OPTIONS.
        upper: upper bound: on the ratio exp(k1) for *_k1 options, on the divergence for k2 / k3.
        lower: lower ratio bound for *_k1 options (None for k2 / k3).
    """

    name: str
    upper: float
    lower: float | None = None


@dataclass(frozen=True)
class CorrectionSpec:
    """A parsed `algorithm.rollout_correction`: IS weighting (or None) and rejection criteria (all must pass)."""

    rollout_is: ISSpec | None = None
    rollout_rs: tuple[RSOption, ...] = ()

    @property
    def active(self) -> bool:
        """Whether the correction changes the loss (weights or a rejection mask)."""
        return self.rollout_is is not None or bool(self.rollout_rs)


@dataclass(frozen=True)
class Correction:
    """What the correction of one rollout batch gives the trainer.

    Attributes:
        weights: [B, T] detached IS weights (0 off the mask), or None without `rollout_is`.
        keep: [B, T] float, 1 on tokens the rejection criteria keep, 0 on rejected ones (and off the mask), or
            None without `rollout_rs`.
        metrics: scalar tensors, keys `rollout_corr/...` (verl's names).
    """

    weights: Tensor | None
    keep: Tensor | None
    metrics: dict[str, Tensor]


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: '{text}' is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what}: bounds must be finite and > 0, got {text}")
    return value


def parse_bounds(spec: float | str, what: str) -> tuple[float | None, float]:
    """A threshold `C` or `"lower_upper"` (verl's grammar) -> (lower or None, upper), both finite and > 0.

    Args:
        spec: the threshold as configured.
        what: the key named in error messages.

    Returns:
        (lower bound or None, upper bound).

    Raises:
        ValueError: a bool, a non-number, a bound <= 0 or non-finite, or lower > upper; naming `what`.
    """
    if isinstance(spec, bool) or not isinstance(spec, (int, float, str)):
        raise ValueError(f"{what}: expected a number or a 'lower_upper' string, got {spec!r}")
    text = str(spec).strip()
    if not text:
        raise ValueError(f"{what}: empty threshold")
    if "_" not in text:
        return None, _number(text, what)
    low_text, high_text = text.split("_", 1)
    lower, upper = _number(low_text, what), _number(high_text, what)
    if lower > upper:
        raise ValueError(f"{what}: lower bound {lower:g} > upper bound {upper:g}")
    return lower, upper


def parse_correction(
    rollout_is: str | None = None,
    rollout_is_threshold: float | str = 2.0,
    rollout_is_batch_normalize: bool = False,
    rollout_rs: str | None = None,
    rollout_rs_threshold: float | str | None = None,
) -> CorrectionSpec:
    """Validate verl's `rollout_correction` options (TRL mode names accepted for `rollout_is`) into a spec.

    Args:
        rollout_is: None, "token", "sequence", or a TRL mode (TRL_MODES).
        rollout_is_threshold: verl: C (TIS cap) or "lower_upper" (IcePop); see the module docstring for TRL modes.
        rollout_is_batch_normalize: normalise the weights to batch mean 1.
        rollout_rs: None or comma-separated RS_OPTIONS (duplicates dropped, order kept).
        rollout_rs_threshold: one threshold per option, comma-separated, or one shared: "lower_upper" or a ratio
            upper bound (lower = 1 / upper) for *_k1 options, a single upper bound for k2 / k3.

    Returns:
        The CorrectionSpec.

    Raises:
        ValueError: an unknown level or option, a missing or malformed threshold (the message names the key).
    """
    is_spec = None
    if rollout_is is not None:
        if rollout_is in IS_LEVELS:
            lower, upper = parse_bounds(rollout_is_threshold, "rollout_is_threshold")
            level, kind = rollout_is, "mask" if lower is not None else "truncate"
        elif rollout_is in TRL_MODES:
            level, kind = TRL_MODES[rollout_is]
            lower, upper = parse_bounds(rollout_is_threshold, "rollout_is_threshold")
        else:
            valid = ", ".join([*IS_LEVELS, *TRL_MODES])
            raise ValueError(f"rollout_is: unknown level {rollout_is!r}; valid: null, {valid}")
        is_spec = ISSpec(level, kind, upper, lower, rollout_is_batch_normalize)  # type: ignore[arg-type]
    if rollout_rs is None:
        return CorrectionSpec(is_spec, ())
    names: list[str] = []
    for name in (part.strip() for part in str(rollout_rs).split(",")):
        if name not in RS_OPTIONS:
            raise ValueError(f"rollout_rs: unknown option {name!r}; valid: {', '.join(RS_OPTIONS)}")
        if name not in names:
            names.append(name)
    if rollout_rs_threshold is None:
        raise ValueError(f"rollout_rs_threshold: required with rollout_rs={rollout_rs!r} (e.g. '0.5_2.0' for *_k1)")
    specs = [s.strip() for s in str(rollout_rs_threshold).split(",") if s.strip()]
    if len(specs) not in (1, len(names)):
        raise ValueError(
            f"rollout_rs_threshold: give one threshold or {len(names)} (one per rollout_rs option), got {len(specs)}"
        )
    options = []
    for name, spec in zip(names, specs * len(names) if len(specs) == 1 else specs):
        lower, upper = parse_bounds(spec, f"rollout_rs_threshold ({name})")
        if name.endswith("k1"):
            options.append(RSOption(name, upper, 1.0 / upper if lower is None else lower))
        elif lower is not None:
            raise ValueError(f"rollout_rs_threshold ({name}): k2 / k3 options take one upper bound, got {spec!r}")
        else:
            options.append(RSOption(name, upper))
    return CorrectionSpec(is_spec, tuple(options))


def _mean(values: Tensor, mask: Tensor) -> Tensor:
    """Masked mean over all positions; 0 for an empty mask. [B, T] -> []."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def _row_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Masked mean per row; 0 for an empty row. [B, T] -> [B]."""
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def rollout_log_ratio(old_logp: Tensor, sampling_logp: Tensor, mask: Tensor) -> Tensor:
    """log r = log pi_old - log q per token, fp32, detached, 0 off the mask. [B, T] each -> [B, T] (nats)."""
    if old_logp.shape != sampling_logp.shape or old_logp.shape != mask.shape:
        raise ValueError(
            f"old_logp {tuple(old_logp.shape)}, sampling_logp {tuple(sampling_logp.shape)} and mask "
            f"{tuple(mask.shape)} must have the same [B, T] shape"
        )
    return ((old_logp.detach().float() - sampling_logp.detach().float()) * mask).detach()


def raw_is_weights(log_ratio: Tensor, mask: Tensor, level: str) -> Tensor:
    """Untruncated IS weights [B, T], 0 off the mask: exp(log r_t) per token, or exp(sum_t log r_t) broadcast.

    Args:
        log_ratio: [B, T] log pi_old - log q (0 off the mask).
        mask: [B, T] float response mask.
        level: "token" or "sequence"; log-ratios (or their sequence sums) are clamped to [-20, 20] first.

    Returns:
        [B, T] weights.
    """
    if level == "token":
        return torch.exp(log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND)) * mask
    seq = (log_ratio * mask).sum(-1, keepdim=True).clamp(-SAFETY_BOUND, SAFETY_BOUND)  # [B, 1]
    return torch.exp(seq).expand_as(log_ratio) * mask


def is_weights(log_ratio: Tensor, mask: Tensor, spec: ISSpec) -> tuple[Tensor, Tensor]:
    """Applied and raw IS weights, [B, T] each, detached, 0 off the mask (see the module docstring).

    Truncation clamps to [lower, upper] (verl: upper only); masking zeroes weights outside [lower, upper]
    (IcePop). Batch normalisation is separate (`normalize_weights`).
    """
    raw = raw_is_weights(log_ratio, mask, spec.level)
    if spec.kind == "truncate":
        w = raw.clamp(min=spec.lower, max=spec.upper) * mask
    else:
        keep = raw <= spec.upper
        if spec.lower is not None:
            keep = keep & (raw >= spec.lower)
        w = torch.where(keep, raw, torch.zeros_like(raw))
    return w.detach(), raw.detach()


def normalize_weights(weights: Tensor, mask: Tensor, level: str) -> tuple[Tensor, Tensor]:
    """Weights divided by their batch mean (verl `rollout_is_batch_normalize`), and that mean (the factor).

    The mean is the token mean (token level) or the mean over non-empty sequences of each sequence's weight
    (sequence level); weights are left as they are when it is <= 1e-8 (the factor is then reported as 1).
    [B, T] -> ([B, T], []).
    """
    if level == "token":
        mean = _mean(weights, mask)
    else:
        nonempty = (mask.sum(-1) > 0).to(weights.dtype)  # [B]
        mean = (_row_mean(weights, mask) * nonempty).sum() / nonempty.sum().clamp_min(1e-8)
    factor = torch.where(mean > 1e-8, mean, torch.ones_like(mean))
    return (weights / factor).detach(), factor


def rs_statistic(log_ratio: Tensor, mask: Tensor, option: str) -> Tensor:
    """The statistic option `option` thresholds, per token [B, T] (token_*) or per sequence [B] (seq_*).

    k1 = -log r, k2 = (log r)^2 / 2, k3 = exp(log r) - 1 - log r, with log r clamped to [-20, 20]; sequence
    options aggregate over the mask by sum, mean (0 for an empty row) or max (0 for an empty row).
    """
    lr = log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND)
    k = option.rsplit("_", 1)[1]
    token = -lr if k == "k1" else 0.5 * lr.square() if k == "k2" else torch.exp(lr) - 1.0 - lr  # [B, T]
    if option.startswith("token_"):
        return token
    if option.startswith("seq_sum_"):
        return (token * mask).sum(-1)
    if option.startswith("seq_mean_"):
        return _row_mean(token, mask)
    highest = token.masked_fill(mask <= 0, float("-inf")).amax(-1)  # [B]
    return torch.where(torch.isfinite(highest), highest, torch.zeros_like(highest))


def rejection_keep(log_ratio: Tensor, mask: Tensor, options: tuple[RSOption, ...]) -> Tensor:
    """[B, T] float keep mask: 1 where every option passes, 0 where one rejects the token (or its sequence) and
    off the mask. k1 options keep log(lower) <= statistic <= log(upper); k2 / k3 keep statistic <= upper."""
    keep = mask > 0
    for opt in options:
        stat = rs_statistic(log_ratio, mask, opt.name)
        if opt.name.endswith("k1"):
            assert opt.lower is not None
            ok = (stat >= math.log(opt.lower)) & (stat <= math.log(opt.upper))
        else:
            ok = stat <= opt.upper
        keep = keep & (ok if ok.dim() == 2 else ok.unsqueeze(-1))
    return keep.to(mask.dtype)


def ess(weights: Tensor, mask: Tensor) -> Tensor:
    """Effective sample size fraction 1 / mean((w / mean w)^2) over the mask (verl's `rollout_is_eff_sample_size`):
    1 for equal weights, -> 1/n when one token carries all the weight. [B, T] -> []."""
    normalised = weights / (_mean(weights, mask) + 1e-8)
    return 1.0 / _mean(normalised.square(), mask).clamp_min(1e-12)


def mismatch_metrics(old_logp: Tensor, sampling_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """verl's off-policy diagnostics of the rollout batch (`compute_offpolicy_metrics`), keys `rollout_corr/...`.

    kl = mean_t (log q - log pi_old) (k1 estimate of KL(q || pi_old)); k3_kl = mean_t (r - log r - 1);
    training_ppl / rollout_ppl = mean over sequences of exp(-token mean log-prob) (log_ppl: without the exp);
    log_ppl_diff = mean over sequences of (mean_t log q - mean_t log pi_old), log_ppl_abs_diff of its |.|,
    ppl_ratio = mean over sequences of exp of it; chi2_token = mean_t r^2 - 1; chi2_seq = mean over sequences of
    (prod_t r)^2 - 1 (log-ratios clamped to [-20, 20] before the exp in chi2 only, as verl).

    Args:
        old_logp: [B, T] trainer log-probs (pre-update pass).
        sampling_logp: [B, T] the engine's sampling log-probs.
        mask: [B, T] float response mask.

    Returns:
        Scalar tensors, detached.
    """
    old, q = old_logp.detach().float(), sampling_logp.detach().float()
    lr = rollout_log_ratio(old, q, mask)
    lr_safe = lr.clamp(-SAFETY_BOUND, SAFETY_BOUND)
    old_mean, q_mean = _row_mean(old, mask), _row_mean(q, mask)  # [B]
    log_ppl_diff = q_mean - old_mean  # [B]
    seq_sum = (lr * mask).sum(-1).clamp(-SAFETY_BOUND, SAFETY_BOUND)  # [B]
    return {
        "rollout_corr/kl": _mean(q - old, mask),
        "rollout_corr/k3_kl": _mean(torch.exp(lr) - lr - 1.0, mask),
        "rollout_corr/training_ppl": torch.exp(-old_mean).mean(),
        "rollout_corr/training_log_ppl": (-old_mean).mean(),
        "rollout_corr/rollout_ppl": torch.exp(-q_mean).mean(),
        "rollout_corr/rollout_log_ppl": (-q_mean).mean(),
        "rollout_corr/log_ppl_diff": log_ppl_diff.mean(),
        "rollout_corr/log_ppl_abs_diff": log_ppl_diff.abs().mean(),
        "rollout_corr/ppl_ratio": torch.exp(log_ppl_diff).mean(),
        "rollout_corr/chi2_token": _mean(torch.exp(lr_safe).square(), mask) - 1.0,
        "rollout_corr/chi2_seq": torch.exp(2.0 * seq_sum).mean() - 1.0,
    }


def is_metrics(weights: Tensor, raw: Tensor, log_ratio: Tensor, mask: Tensor, spec: ISSpec) -> dict[str, Tensor]:
    """verl's IS-weight statistics (`compute_is_metrics`) before batch normalisation, keys `rollout_corr/...`.

    rollout_is_mean: token mean of the applied weights; ratio_fraction_high / _low: fraction of tokens (token
    level) or sequences (sequence level) whose raw weight is above `upper` / below `lower` (1 / upper when None);
    rollout_is_eff_sample_size: `ess` of the applied weights clamped to [0, upper].

    Args:
        weights: [B, T] applied weights (before batch normalisation).
        raw: [B, T] untruncated weights.
        log_ratio: [B, T] log pi_old - log q (0 off the mask).
        mask: [B, T] float response mask.
        spec: the IS spec.

    Returns:
        Scalar tensors.
    """
    lower = 1.0 / spec.upper if spec.lower is None else spec.lower
    if spec.level == "sequence":
        seq = (log_ratio * mask).sum(-1)  # [B]
        high = (seq > math.log(spec.upper)).float().mean()
        low = (seq < math.log(lower)).float().mean()
    else:
        high, low = _mean((raw > spec.upper).float(), mask), _mean((raw < lower).float(), mask)
    return {
        "rollout_corr/rollout_is_mean": _mean(weights, mask),
        "rollout_corr/rollout_is_ratio_fraction_high": high,
        "rollout_corr/rollout_is_ratio_fraction_low": low,
        "rollout_corr/rollout_is_eff_sample_size": ess(weights.clamp(0.0, spec.upper), mask),
    }


def rollout_correction(old_logp: Tensor, sampling_logp: Tensor, mask: Tensor, spec: CorrectionSpec) -> Correction:
    """IS weights, rejection mask and metrics of one rollout batch (verl's `compute_rollout_correction_and_rejection_mask`).

    Always returns the mismatch metrics, `rollout_corr/rollout_rs_masked_fraction` and `_seq_masked_fraction`
    (0 without rejection) and `rollout_corr/rollout_is_eff_sample_size` (without `rollout_is`: of the raw
    token-level ratios, i.e. what untruncated token IS would weigh with).

    Args:
        old_logp: [B, T] trainer log-probs of the sampled tokens (pre-update pass).
        sampling_logp: [B, T] the engine's log-probs of the same tokens.
        mask: [B, T] float response mask.
        spec: the parsed config (`parse_correction`).

    Returns:
        The Correction: weights (or None), keep mask (or None) and metrics.
    """
    mask = mask.float()
    lr = rollout_log_ratio(old_logp, sampling_logp, mask)
    metrics = mismatch_metrics(old_logp, sampling_logp, mask)
    weights = keep = None
    if spec.rollout_is is not None:
        weights, raw = is_weights(lr, mask, spec.rollout_is)
        metrics.update(is_metrics(weights, raw, lr, mask, spec.rollout_is))
        if spec.rollout_is.batch_normalize:
            weights, metrics["rollout_corr/rollout_is_batch_norm_factor"] = normalize_weights(
                weights, mask, spec.rollout_is.level
            )
    else:
        metrics["rollout_corr/rollout_is_eff_sample_size"] = ess(raw_is_weights(lr, mask, "token"), mask)
    zero = torch.zeros((), device=mask.device)
    if spec.rollout_rs:
        keep = rejection_keep(lr, mask, spec.rollout_rs)
        rejected = mask * (1.0 - keep)  # [B, T]
        metrics["rollout_corr/rollout_rs_masked_fraction"] = _mean(rejected, mask)
        metrics["rollout_corr/rollout_rs_seq_masked_fraction"] = (rejected.sum(-1) > 0).float().mean()
    else:
        metrics["rollout_corr/rollout_rs_masked_fraction"] = zero
        metrics["rollout_corr/rollout_rs_seq_masked_fraction"] = zero
    return Correction(weights, keep, metrics)
