"""Entropy statistics and dynamics of a rollout batch: the numbers behind `entropy/*`, `dynamics/*`, pass@k.

Pure functions on tensors (and plain Python sequences); no trainer state. `entropy_stats` and
`cov_logp_adv` are called once per step on the whole rollout batch, after the pre-update pass, and return
Python floats (one host sync each). Every entropy is in nats. Key definitions live in `names.py`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from entropy_rl.core.ppo import token_covariance
from entropy_rl.core.stats import entropy_change_omega, quantiles
from entropy_rl.core.types import masked_mean

__all__ = [
    "cov_logp_adv",
    "distinct_answers",
    "distinct_answers_by_group",
    "entropy_stats",
    "fit_entropy_performance_law",
    "law_fit_problems",
    "mean_pass_at_k",
    "pass_at_k",
    "quantiles",
]

# The quantiles `entropy_stats` reports, as (key suffix, q).
_ENTROPY_QUANTILES: tuple[tuple[str, float], ...] = (("p10", 0.10), ("p50", 0.50), ("p90", 0.90), ("p99", 0.99))


def entropy_stats(
    entropy: Tensor,
    mask: Tensor,
    adv: Tensor | None = None,
    correct: Tensor | None = None,
    high_threshold: float = 0.5,
    n_position_buckets: int = 4,
) -> dict[str, float]:
    """Distributional entropy metrics of one rollout batch (`entropy/*`, definitions in `names.py`).

    `entropy/token_mean` is THE entropy of the toolkit: the mean over all response tokens of the batch of
    the tempered fp32 token entropy from the pre-update pass. Pass that pass's `H_old` here; entropies from
    any other pass are a different metric and must be logged under another name.

    Keys: `entropy/token_mean`, `entropy/p10|p50|p90|p99` (quantiles over response tokens),
    `entropy/high_frac` (fraction with H > high_threshold), `entropy/seq_mean` (mean over sequences that
    have at least one response token of their token means), `entropy/adv_pos` / `entropy/adv_neg` (token
    mean over tokens with A > 0 / A < 0; A == 0 goes to neither), `entropy/correct` / `entropy/incorrect`
    (token mean over the responses judged correct / incorrect), `entropy/pos_bucket_{k}` (token mean by
    relative position: bucket = floor(n * t / len_i), with t the 0-based index of the token among the
    response tokens of sequence i and len_i their count, so a mask with holes still fills every bucket).

    A key whose token set is empty is omitted, never NaN; an all-masked batch returns `{}`.

    Args:
        entropy: [B, T] token entropies (nats). Values under mask == 0 are ignored (may be garbage).
        mask: [B, T] response mask (bool or 0/1).
        adv: [B, T] per-token advantages, or None to skip the advantage split.
        correct: [B] bool correctness per response, or None to skip the correctness split.
        high_threshold: entropy threshold in nats for `entropy/high_frac` (strict >).
        n_position_buckets: number of relative-position buckets (>= 1).

    Returns:
        dict of metric key -> Python float.

    Raises:
        ValueError: on mismatched shapes or n_position_buckets < 1.
    """
    if entropy.dim() != 2 or mask.shape != entropy.shape:
        raise ValueError(f"entropy and mask must both be [B, T], got {tuple(entropy.shape)} and {tuple(mask.shape)}")
    if adv is not None and adv.shape != entropy.shape:
        raise ValueError(f"adv must be [B, T] like entropy, got {tuple(adv.shape)}")
    if correct is not None and correct.shape != entropy.shape[:1]:
        raise ValueError(f"correct must be [B] = [{entropy.shape[0]}], got {tuple(correct.shape)}")
    if n_position_buckets < 1:
        raise ValueError(f"n_position_buckets must be >= 1, got {n_position_buckets}")

    h = entropy.detach().double()  # [B, T]; fp64 sums so a large batch's mean is not order-dependent
    m = mask.detach().bool()  # [B, T]
    h = torch.where(m, h, torch.zeros_like(h))  # masked garbage (even NaN) cannot leak into sums
    n_tok = m.sum()
    if int(n_tok) == 0:
        return {}

    # Collect (sum, count) pairs and move them to the host in one transfer.
    names: list[str] = []
    sums: list[Tensor] = []
    counts: list[Tensor] = []

    def add(name: str, sel: Tensor) -> None:
        names.append(name)
        sums.append((h * sel).sum())
        counts.append(sel.sum().double())

    add("entropy/token_mean", m)
    add("entropy/high_frac", m & (h > high_threshold))  # sum/count fixed below: count must be all tokens
    if adv is not None:
        a = adv.detach()
        add("entropy/adv_pos", m & (a > 0))
        add("entropy/adv_neg", m & (a < 0))
    if correct is not None:
        c = correct.detach().bool().to(m.device)[:, None]  # [B, 1]
        add("entropy/correct", m & c)
        add("entropy/incorrect", m & ~c)
    len_i = m.sum(-1, keepdim=True)  # [B, 1]
    t = m.long().cumsum(-1) - 1  # [B, T] 0-based rank among the sequence's response tokens
    bucket = (n_position_buckets * t) // len_i.clamp_min(1)  # [B, T]
    for k in range(n_position_buckets):
        add(f"entropy/pos_bucket_{k}", m & (bucket == k))

    has_tok = len_i.squeeze(-1) > 0  # [B]
    seq_means = h.sum(-1)[has_tok] / len_i.squeeze(-1)[has_tok].double()  # [B']

    host = torch.stack([torch.stack(sums), torch.stack(counts), seq_means.mean()[None].expand(len(sums))]).cpu()
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        s, cnt = float(host[0, i]), float(host[1, i])
        if name == "entropy/high_frac":
            out[name] = cnt / float(n_tok)
        elif cnt > 0:
            out[name] = s / cnt
    out["entropy/seq_mean"] = float(host[2, 0])

    valid = entropy.detach()[m].float()  # [N] fp32, as logged
    qv = quantiles(valid, [q for _, q in _ENTROPY_QUANTILES]).tolist()
    for (suffix, _), v in zip(_ENTROPY_QUANTILES, qv):
        out[f"entropy/{suffix}"] = float(v)
    return out


def cov_logp_adv(logp: Tensor, adv: Tensor, mask: Tensor) -> float:
    """Cov over valid response tokens of (log pi(a_t), A_t): the driver of entropy change (Cui et al. 2025).

    Cui et al., "The Entropy Mechanism of RL for Reasoning LMs", arXiv:2505.22617: under a softmax
    policy-gradient step, the entropy change is approximately -eta * Cov(log pi, A), so a positive value
    predicts that entropy will fall. Computed as the population covariance over the N valid tokens of the
    whole batch: mean((logp - mean logp) * (A - mean A)), in fp64 (units: nats x advantage units).

    Args:
        logp: [B, T] log-probabilities of the sampled tokens (use the pre-update pass, tempered).
        adv: [B, T] per-token advantages.
        mask: [B, T] response mask (bool or 0/1).

    Returns:
        The covariance as a Python float; 0.0 when fewer than 2 tokens are valid.

    Raises:
        ValueError: on mismatched shapes.
    """
    if logp.shape != adv.shape or logp.shape != mask.shape:
        raise ValueError(f"logp, adv, mask must share a shape, got {tuple(logp.shape)}, {tuple(adv.shape)}, {tuple(mask.shape)}")
    m = mask.detach().double()
    if m.sum() < 2:
        return 0.0
    return float(masked_mean(token_covariance(logp.detach().double(), adv.detach().double(), m), m))


def _check_count(name: str, value: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an integer, got {value!r}") from e
    if v != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return v


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, arXiv:2107.03374, eq. 1).

    Evaluated in the numerically stable product form 1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms
    a binomial coefficient.

    Args:
        n: samples drawn for the problem.
        c: how many of them are correct (0 <= c <= n).
        k: the k of pass@k (1 <= k <= n).

    Returns:
        Estimated probability that at least one of k samples drawn without replacement is correct.

    Raises:
        ValueError: if any argument is negative or not an integer, k == 0, k > n or c > n.
    """
    n, c, k = _check_count("n", n), _check_count("c", c), _check_count("k", k)
    if n < 0 or c < 0 or k < 0:
        raise ValueError(f"pass_at_k needs non-negative n, c, k; got n={n}, c={c}, k={k}")
    if k == 0:
        raise ValueError("pass@0 is undefined; k must be >= 1")
    if k > n:
        raise ValueError(f"pass@{k} needs at least k samples, got n={n}")
    if c > n:
        raise ValueError(f"correct count c={c} exceeds samples n={n}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(correct_per_problem: Sequence[Sequence[bool]], k: int) -> float:
    """Mean over problems of `pass_at_k(n_i, c_i, k)`, with n_i samples and c_i correct for problem i.

    Args:
        correct_per_problem: one sequence of per-sample correctness flags per problem (lengths may differ).
        k: the k of pass@k; every problem needs at least k samples.

    Returns:
        The mean estimate as a Python float.

    Raises:
        ValueError: if there are no problems, or `pass_at_k` rejects a problem (message names its index).
    """
    if len(correct_per_problem) == 0:
        raise ValueError("mean_pass_at_k needs at least one problem")
    total = 0.0
    for i, flags in enumerate(correct_per_problem):
        try:
            total += pass_at_k(len(flags), sum(bool(f) for f in flags), k)
        except ValueError as e:
            raise ValueError(f"problem {i}: {e}") from e
    return total / len(correct_per_problem)


def distinct_answers(answers: Sequence[str | None], correct: Sequence[bool], group_size: int) -> dict[str, float]:
    """Answer-level diversity per prompt group: `rollout/distinct_answers` and `rollout/distinct_correct`.

    Responses come in groups of `group_size` consecutive entries (the G samples of one prompt). Per group we
    count distinct non-None final answers and distinct answers among the correct responses, then average
    over groups. Answers compare by exact string equality: normalise them (as the verifier does) first.
    None means no answer could be parsed and is never counted.

    Args:
        answers: [B] extracted final answers, None where unparseable.
        correct: [B] correctness of each response.
        group_size: G, responses per prompt; B must be a multiple of it.

    Returns:
        `{"rollout/distinct_answers": mean count, "rollout/distinct_correct": mean count}`, or `{}` for B == 0.

    Raises:
        ValueError: if lengths differ, group_size < 1 or B is not a multiple of group_size.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if len(answers) % group_size != 0:
        raise ValueError(f"{len(answers)} responses do not split into groups of {group_size}")
    return distinct_answers_by_group(answers, correct, [i // group_size for i in range(len(answers))])


def distinct_answers_by_group(answers: Sequence[str | None], correct: Sequence[bool],
                              group_index: Sequence[int]) -> dict[str, float]:
    """`distinct_answers` for groups given by index (rows of a group need not be contiguous or equal in number).

    Raises:
        ValueError: if the lengths differ.
    """
    if not len(answers) == len(correct) == len(group_index):
        raise ValueError(f"answers ({len(answers)}), correct ({len(correct)}) and group_index ({len(group_index)}) differ in length")
    groups: dict[int, list[tuple[str | None, bool]]] = {}
    for a, ok, g in zip(answers, correct, group_index):
        groups.setdefault(int(g), []).append((a, bool(ok)))
    if not groups:
        return {}
    n_distinct = sum(len({a for a, _ in rows if a is not None}) for rows in groups.values())
    n_distinct_correct = sum(len({a for a, ok in rows if a is not None and ok}) for rows in groups.values())
    return {
        "rollout/distinct_answers": n_distinct / len(groups),
        "rollout/distinct_correct": n_distinct_correct / len(groups),
    }


LAW_CONFIDENCE = 0.95  # level of the ceiling's confidence interval
LAW_MIN_POINTS = 5  # fewer (H, R) points: a fit has <= 2 residual degrees of freedom and is flagged
LAW_MIN_R2 = 0.1  # below: entropy explains almost none of R's variation; the fit is flagged


def _law(h: Any, a: float, b: float) -> Any:
    """R = -a exp(H) + b on an array of entropies (the model curve_fit fits)."""
    import numpy as np

    return b - a * np.exp(h)


def _law_jacobian(h: Any, a: float, b: float) -> Any:
    """d/d(a, b) of `_law`: columns -exp(H) and 1 ([n, 2])."""
    import numpy as np

    return np.stack([-np.exp(h), np.ones_like(h)], axis=-1)


def fit_entropy_performance_law(H: Sequence[float], R: Sequence[float]) -> dict[str, float] | None:
    """Least-squares fit of R = -a * exp(H) + b (Cui et al. 2025, arXiv:2505.22617, eq. 3), with a CI of the ceiling.

    scipy.optimize.curve_fit (the model is linear in a and b, so this is ordinary least squares on x = exp(H)).
    The predicted ceiling is the performance at H = 0 (entropy fully spent): ceiling = b - a. Its standard error
    comes from curve_fit's covariance of (a, b), scaled by the residual variance (absolute_sigma=False):
    se^2 = Var(a) + Var(b) - 2 Cov(a, b); the 95% CI is ceiling +- t(0.975, n - 2) se. That assumes independent
    residuals: points along one training run are autocorrelated and the law is only approximate, so read the CI
    as a lower bound on the uncertainty. Points whose H or R is not finite (a step with a NaN entropy, say), or
    whose exp(H) overflows, are skipped: a running fit must not stop a run.

    Args:
        H: entropies in nats (e.g. `entropy/token_mean` per step).
        R: matching performance values (e.g. `eval/accuracy` or `reward/mean`).

    Returns:
        `{"a", "b", "r2", "ceiling", "n", "a_se", "b_se", "ceiling_se", "ceiling_low", "ceiling_high"}` as floats
        (n = points used), or None when the fit is undetermined: fewer than 3 usable points or exp(H) constant.
        r2 = 1 - SS_res / SS_tot, defined as 1.0 when R is constant (then the fit is exact).

    Raises:
        ValueError: if H and R differ in length.
    """
    if len(H) != len(R):
        raise ValueError(f"H ({len(H)}) and R ({len(R)}) differ in length")
    hs, ys = [], []
    for h, r in zip(H, R):
        h, r = float(h), float(r)
        if math.isfinite(h) and math.isfinite(r) and h < 709.0:  # exp(709.8) is the largest finite double
            hs.append(h)
            ys.append(r)
    n = len(hs)
    if n < 3:
        return None
    xs = [math.exp(h) for h in hs]
    mx = sum(xs) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 1e-300 or sxx <= (1e-12 * mx) ** 2 * n:  # exp(H) constant up to rounding: slope undetermined
        return None
    import warnings

    import numpy as np
    from scipy import stats
    from scipy.optimize import OptimizeWarning, curve_fit

    h_arr, y_arr = np.asarray(hs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    with warnings.catch_warnings():  # a perfect fit has a zero covariance: that is the answer, not a problem
        warnings.simplefilter("ignore", OptimizeWarning)
        try:
            (a, b), cov = curve_fit(_law, h_arr, y_arr, p0=(0.0, float(y_arr.mean())), jac=_law_jacobian)
        except RuntimeError:  # no convergence (not seen on this linear model): the running fit must not stop a run
            return None
    a, b = float(a), float(b)
    ss_res = float(np.sum((y_arr - _law(h_arr, a, b)) ** 2))
    ss_tot = float(np.sum((y_arr - y_arr.mean()) ** 2))
    r2 = 1.0 if ss_tot == 0.0 else 1.0 - ss_res / ss_tot
    grad = np.array([-1.0, 1.0])  # d(b - a)/d(a, b)
    cov = np.where(np.isfinite(cov), cov, 0.0) if ss_res == 0.0 else cov
    ceiling_se = float(np.sqrt(max(float(grad @ cov @ grad), 0.0)))
    half = float(stats.t.ppf(0.5 + LAW_CONFIDENCE / 2, n - 2)) * ceiling_se
    ceiling = b - a
    return {"a": a, "b": b, "r2": r2, "ceiling": ceiling, "n": float(n), "a_se": float(np.sqrt(max(cov[0, 0], 0.0))),
            "b_se": float(np.sqrt(max(cov[1, 1], 0.0))), "ceiling_se": ceiling_se, "ceiling_low": ceiling - half,
            "ceiling_high": ceiling + half}


def law_fit_problems(fit: dict[str, float] | None, min_points: int = LAW_MIN_POINTS,
                     min_r2: float = LAW_MIN_R2) -> list[str]:
    """Why a fit of R = -a exp(H) + b means nothing ([] when it may be read): undetermined, too few points,
    a < 0 (R rises with entropy: the law's premise fails and b - a is no ceiling), or R^2 near 0."""
    if fit is None:
        return ["undetermined: fewer than 3 points, or the entropy never changed"]
    out = []
    if fit["n"] < min_points:
        out.append(f"only {fit['n']:.0f} points (a fit needs {min_points}+)")
    if fit["a"] < 0:
        out.append(f"a = {fit['a']:.3g} < 0: R rises with entropy here, so b - a is no ceiling")
    if fit["r2"] < min_r2:
        out.append(f"R² = {fit['r2']:.2f} (< {min_r2}): entropy explains almost none of R")
    return out


def entropy_change_identity(old_logits: Tensor, new_logits: Tensor, mask: Tensor, temperature: float = 1.0) -> float:
    """First-order entropy change from the actual logit change: mean over response tokens of
    -Cov_{a ~ pi_old}(log pi_old(a), dz(a)) with dz = (z_new - z_old) / tau (Cui et al. 2025, arXiv:2505.22617,
    methods.md section 1 item 1). It matches the measured change to first order in dz.

    Args:
        old_logits: [B, T, V] logits before the optimizer step.
        new_logits: [B, T, V] logits of the same positions after the step.
        mask: [B, T] response mask.
        temperature: the sampling temperature tau of the entropy definition.

    Returns:
        The token-mean predicted change in nats (0.0 on an empty mask).
    """
    logp = torch.log_softmax(old_logits.double() / temperature, dim=-1)  # [B, T, V]
    p = logp.exp()
    dz = (new_logits.double() - old_logits.double()) / temperature
    centered_logp = logp - (p * logp).sum(-1, keepdim=True)
    centered_dz = dz - (p * dz).sum(-1, keepdim=True)
    per_token = -(p * centered_logp * centered_dz).sum(-1)  # [B, T]
    m = mask.double()
    return float((per_token * m).sum() / m.sum().clamp_min(1.0))


def steer_omega_signal(old_logp: Tensor, adv: Tensor, old_entropy: Tensor, mask: Tensor) -> float:
    """STEER's per-token entropy-change estimate as a batch predictor (Hao et al., arXiv:2510.10150):
    -mean_t Omega_t with Omega_t = A_t (1 - p_t)(log p_t + H_t), on-policy (r = 1), p = exp(old_logp).

    Positive predicts an entropy increase (the sign convention of dH). Its scale is not that of dH (the
    learning rate and the model's Jacobian are missing): compare it by correlation.

    Args:
        old_logp: [B, T] pre-update log-probs of the sampled tokens.
        adv: [B, T] advantages.
        old_entropy: [B, T] H_old.
        mask: [B, T] response mask.

    Returns:
        The masked mean of -Omega (a float).
    """
    old = old_logp.detach().double()
    omega = entropy_change_omega(old, old, adv.detach().double(), old_entropy.detach().double())
    return float(-masked_mean(omega, mask.double()))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation of two equal-length sequences; None with fewer than 3 points or zero variance."""
    n = len(xs)
    if n != len(ys):
        raise ValueError(f"lengths differ: {n} vs {len(ys)}")
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)
