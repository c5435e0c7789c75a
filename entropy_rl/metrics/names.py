"""Every metric key the toolkit logs, with its one-line definition and unit: the single source of truth.

`docs/metrics.md` is generated from this file (`python -m entropy_rl.metrics.names > docs/metrics.md`) and a
test fails when it goes stale. A new metric key means one new line here. Keys are namespaced
(`entropy/`, `dynamics/`, `policy/`, `reward/`, `rollout/`, `rollout_corr/`, `diversity/`, `attention/`, `adv/`, `eval/`,
`timing/`, `train/`, `method/<name>/`); families of keys are listed in `PATTERNS`.
"""

from __future__ import annotations

import re

__all__ = ["COMPLETION_FIELDS", "METRICS", "PATTERNS", "describe", "is_known", "render_markdown"]

# Shorthand used in definitions: "response tokens" = tokens with mask == 1 in the rollout batch of the step.
METRICS: dict[str, str] = {
    "step": (
        "training step index, the x-axis of every other metric; one step = one rollout batch and its update; "
        "step 0 is the eval of the policy RL starts from (warm start), before any update, with eval/* and "
        "timing/eval_s only (count)"
    ),
    # ---- entropy (pre-update pass; see dynamics.entropy_stats) ----
    "entropy/token_mean": (
        "H_t = -sum_v p_v log p_v, p = softmax(z_t / tau) with tau the sampling temperature; fp32; "
        "response tokens only; mean over all response tokens of the rollout batch; measured in the "
        "pre-update pass (nats)"
    ),
    "entropy/p10": "10th percentile of H_t over response tokens (linear interpolation, as numpy) (nats)",
    "entropy/p50": "median of H_t over response tokens (nats)",
    "entropy/p90": "90th percentile of H_t over response tokens (nats)",
    "entropy/p99": "99th percentile of H_t over response tokens (nats)",
    "entropy/high_frac": "fraction of response tokens with H_t > high_threshold (default 0.5 nats) (fraction)",
    "entropy/seq_mean": (
        "variant: mean over responses of each response's token-mean H_t; long responses weigh less (nats)"
    ),
    "entropy/adv_pos": "token mean of H_t over response tokens with advantage A > 0; omitted if none (nats)",
    "entropy/adv_neg": "token mean of H_t over response tokens with advantage A < 0; omitted if none (nats)",
    "entropy/correct": "token mean of H_t over the responses judged correct; omitted if none (nats)",
    "entropy/incorrect": "token mean of H_t over the responses judged incorrect; omitted if none (nats)",
    # ---- dynamics ----
    "dynamics/cov_logp_adv": (
        "population Cov over response tokens of (log pi(a_t), A_t), pre-update pass; > 0 predicts "
        "entropy falls (Cui et al. 2025, arXiv:2505.22617) (nats x advantage units)"
    ),
    "dynamics/dH_pred": (
        "prediction before re-scoring: grad_theta H(batch) . (theta_new - theta_old), the first-order entropy change "
        "of this step's actual optimizer update (nats)"
    ),
    "dynamics/dH_pred_lin": (
        "prediction from theta_old and the actual update only: token mean of H(z + J dtheta) - H(z), the network "
        "linearised by one forward-mode JVP along the update, the softmax entropy exact (nats)"
    ),
    "dynamics/dH_actual": (
        "entropy/token_mean of the same rollout batch re-scored after the optimizer step minus before (nats)"
    ),
    "dynamics/dH_identity": (
        "mean over response tokens of -Cov_{a~pi_old}(log pi_old(a), dz(a)) with the actual logit change dz / tau: "
        "the first-order identity of methods.md section 1 (nats)"
    ),
    "dynamics/dH_per_bonus": (
        "first-order dH of adding an entropy bonus of coefficient 1 to this step's gradient under Adam's current "
        "second moments; absent before the first optimizer step (nats per unit coefficient)"
    ),
    "dynamics/steer_omega": (
        "-mean over response tokens of STEER's Omega = A (1 - p)(log p + H_old), on-policy; > 0 predicts entropy "
        "rises; compare by correlation (arXiv:2510.10150) (nats x advantage units)"
    ),
    "dynamics/H_rollout": (
        "token mean of the entropy of the distribution the rollout sampled from, on the same tokens and pre-update "
        "logits as entropy/token_mean: softmax(z / tau_sampling) after rollout.top_k / top_p (replayed as the hf "
        "engine applies them; a strategy's own truncation rule and a separate engine's numerics are not) (nats)"
    ),
    "dynamics/H_mismatch": (
        "dynamics/H_rollout - the probe's H(theta_old) on the same tokens: the entropy drift caused by the rollout/"
        "trainer mismatch (truncation, another sampling temperature), apart from the update; 0 to fp32 rounding "
        "when the sampler is the trainer's softmax(z / tau) (nats)"
    ),
    "dynamics/dH_rollout_actual": (
        "dynamics/H_rollout of the same batch re-scored after the optimizer step minus before: the update's entropy "
        "change as the sampler sees it (equals dynamics/dH_actual without truncation) (nats)"
    ),
    "dynamics/law_a": "a of the running least-squares fit R = -a exp(H) + b of reward/mean on entropy/token_mean over "
    "logged steps; the report's law fit uses eval/accuracy instead, as the paper (reward units)",
    "dynamics/law_b": "b of the running fit R = -a exp(H) + b (reward units)",
    "dynamics/law_r2": "coefficient of determination R^2 of the running fit R = -a exp(H) + b (unitless)",
    "dynamics/law_ceiling": "predicted performance ceiling b - a (R at H = 0) of the running fit (reward units)",
    # ---- reward ----
    "reward/mean": "mean scalar reward over the responses of the rollout batch (reward units)",
    "reward/errors": (
        "fraction of responses whose verifier failed: a user reward function raised or crashed, or a reward was not "
        "a finite number in the task's score range (NaN, inf, a string, ...); scored 0, not a format error (fraction)"
    ),
    "reward/timeouts": "fraction of responses whose user reward function timed out (scored 0) (fraction)",
    "reward/std": "population std of the reward over the responses of the rollout batch (reward units)",
    "reward/format_error_rate": "fraction of responses whose answer could not be parsed (fraction)",
    "reward/solve_all_frac": "fraction of prompt groups in which every response is correct (fraction)",
    "reward/solve_none_frac": "fraction of prompt groups in which no response is correct (fraction)",
    # ---- rollout ----
    "rollout/response_len_mean": "mean response length over the rollout batch (tokens)",
    "rollout/response_len_max": "maximum response length in the rollout batch (tokens)",
    "rollout/truncated_frac": "fraction of responses with no EOS within max_new_tokens (fraction)",
    "rollout/distinct_answers": "mean over prompt groups of the number of distinct parsed final answers (count)",
    "rollout/distinct_correct": "mean over prompt groups of the number of distinct correct final answers (count)",
    # ---- diversity of each prompt group's responses (metrics/diversity.py) ----
    "diversity/vendi": (
        "mean over prompt groups of the Vendi score exp(-sum_i l_i ln l_i), l_i the eigenvalues of K / G, K the cosine "
        "similarity of the responses' character 1- to 3-gram counts (arXiv:2210.02410): the effective number of "
        "distinct response texts, 1 (all identical) to G (no shared n-gram) (count)"
    ),
    "diversity/answer_entropy": (
        "mean over prompt groups with a parsed answer of -sum_a p_a ln p_a, p_a the fraction of the group's parsed "
        "final answers equal to a (unparseable responses left out): 0 when all agree, ln m for m equal answers (nats)"
    ),
    # ---- policy update ----
    "guard/skipped_updates": (
        "optimizer updates of this step that left the weights untouched: the loss or gradient norm was non-finite "
        "(skipped), or the step was rolled back (guard/rolled_back) (count)"
    ),
    "guard/rolled_back": (
        "optimizer updates of this step undone because the parameters, the optimizer state or the logits of one "
        "sequence were non-finite after optimizer.step(); parameters and optimizer state restored to their "
        "pre-step values (count)"
    ),
    "rollout/tokens_generated": (
        "tokens sampled by every generation call of the step's rollout strategy, up to and including EOS, kept in "
        "the batch or not; a branch's copied prefix is not counted again: the generation budget (tokens)"
    ),
    "rollout/branches": "rows of the rollout batch that continue another row's prefix (branches) (count)",
    "rollout/scored_tokens": (
        "tokens of the extra no-grad scoring passes the rollout strategy ran to read entropies (tokens)"
    ),
    "rollout/logp_mismatch": "mean |sampling log-prob - pre-update-pass log-prob| over response tokens: rollout vs trainer numerics (nats)",
    "rollout/logp_diff_mean": (
        "mean over response tokens of |engine sampling log-prob - trainer log-prob| (pre-update pass, same tau): "
        "large values mean the rollout engine and the trainer disagree (stale weights, numerics) (nats)"
    ),
    "rollout/logp_diff_max": "max over response tokens of |engine sampling log-prob - trainer log-prob| (nats)",
    # ---- rollout correction (verl 0.9.1 names; r_t = pi_old(o_t) / q(o_t), q the engine's sampling distribution,
    # pi_old the trainer's pre-update pass; over response tokens; log r clamped to [-20, 20] where noted) ----
    "rollout_corr/kl": "mean over response tokens of log q - log pi_old: k1 estimate of KL(q || pi_old) (nats)",
    "rollout_corr/k3_kl": "mean over response tokens of r - log r - 1: k3 estimate of KL(q || pi_old), >= 0 (nats)",
    "rollout_corr/chi2_token": "mean over response tokens of r^2 - 1 (log r clamped): token chi^2(pi_old || q) (unitless)",
    "rollout_corr/chi2_seq": (
        "mean over responses of (prod_t r_t)^2 - 1 (the log of the product clamped): sequence chi^2 (unitless)"
    ),
    "rollout_corr/training_ppl": "mean over responses of exp(-token mean of log pi_old): trainer perplexity (perplexity)",
    "rollout_corr/training_log_ppl": "mean over responses of -token mean of log pi_old (nats)",
    "rollout_corr/rollout_ppl": "mean over responses of exp(-token mean of log q): engine perplexity (perplexity)",
    "rollout_corr/rollout_log_ppl": (
        "mean over responses of -token mean of log q: a Monte Carlo estimate of the sampler's entropy (nats)"
    ),
    "rollout_corr/log_ppl_diff": "mean over responses of (token mean of log q - token mean of log pi_old) (nats)",
    "rollout_corr/log_ppl_abs_diff": "mean over responses of |token mean of log q - token mean of log pi_old| (nats)",
    "rollout_corr/ppl_ratio": (
        "mean over responses of exp(log_ppl_diff of the response): training perplexity / rollout perplexity (ratio)"
    ),
    "rollout_corr/rollout_is_eff_sample_size": (
        "1 / mean_t (w_t / mean w)^2 over response tokens, w the IS weights applied (clamped to [0, upper]); with "
        "rollout_is off, w = the raw token ratios r_t (what untruncated token IS would weigh with); 1 = no mismatch "
        "(fraction)"
    ),
    "rollout_corr/rollout_is_mean": "mean over response tokens of the applied IS weight, before batch normalisation (ratio)",
    "rollout_corr/rollout_is_ratio_fraction_high": (
        "fraction of response tokens (sequences, at sequence level) whose raw IS ratio exceeds the upper threshold "
        "(fraction)"
    ),
    "rollout_corr/rollout_is_ratio_fraction_low": (
        "fraction of response tokens (sequences, at sequence level) whose raw IS ratio is below the lower threshold "
        "(1 / upper when none) (fraction)"
    ),
    "rollout_corr/rollout_is_batch_norm_factor": (
        "batch mean the IS weights were divided by (rollout_is_batch_normalize only; 1 when <= 1e-8) (ratio)"
    ),
    "rollout_corr/rollout_rs_masked_fraction": (
        "fraction of response tokens the rejection criteria (rollout_rs) removed from the loss; 0 when off (fraction)"
    ),
    "rollout_corr/rollout_rs_seq_masked_fraction": (
        "fraction of responses with at least one rejected token; 0 when rollout_rs is off (fraction)"
    ),
    "rollout_corr/structural_mismatch": (
        "1 when the sampler truncates (rollout.top_p < 1 or top_k > 0), which the trainer does not replay, so the "
        "mismatch is structural; else 0 (flag)"
    ),
    "policy/loss": "policy loss of the step, mean over optimizer mini-batches of the aggregated loss (loss units)",
    "policy/clipfrac": "fraction of response tokens whose ratio was clipped at either bound (fraction)",
    "policy/clipfrac_low": "fraction of response tokens clipped at the lower bound 1 - eps_low (A < 0) (fraction)",
    "policy/clipfrac_high": "fraction of response tokens clipped at the upper bound 1 + eps_high (A > 0) (fraction)",
    "policy/clipfrac_dual": "fraction of response tokens where the dual clip -c A binds (A < 0) (fraction)",
    "policy/approx_kl": (
        "k3 estimate of KL(old || new) over sampled response tokens, mean over micro-batch tokens (nats)"
    ),
    "policy/ratio_mean": "mean importance ratio exp(logp - old_logp) over response tokens (ratio)",
    "policy/kl_ref": "KL to the reference policy over response tokens, when a reference is enabled (nats)",
    "policy/grad_norm": "global L2 norm of the policy gradient before clipping, mean over the optimizer steps of the step (norm)",
    "policy/lr": "learning rate of the last optimizer step (lr units)",
    # ---- advantages ----
    "adv/mean": "mean advantage over response tokens (advantage units)",
    "adv/std": "population std of the advantage over response tokens (advantage units)",
    "adv/zero_frac": "fraction of response tokens with advantage exactly 0 (e.g. all-same-reward groups) (fraction)",
    # ---- eval ----
    "eval/accuracy": (
        "mean over eval problems of the fraction of correct samples, sampled at the training temperature (fraction)"
    ),
    "eval/pass@1": "unbiased pass@1 over eval problems (Chen et al. 2021, arXiv:2107.03374) (probability)",
    # ---- timing and throughput ----
    "timing/generate_s": "wall time of rollout generation in the step (seconds)",
    "timing/reward_s": "wall time of the verifier (reward scoring) in the step (seconds)",
    "timing/score_s": "wall time of the pre-update forward pass (old log-probs, H_old, reference log-probs; on probed steps also the dynamics probe's backward of H, fused with it) (seconds)",
    "timing/update_s": "wall time of the optimizer update(s): selection, forward, backward, steps (seconds)",
    "timing/eval_s": "wall time of the step's eval (step 0 and eval steps only) (seconds)",
    "timing/step_s": "wall time of the whole step, its eval included (seconds)",
    "train/tokens": "cumulative response tokens trained on since the start of the run (tokens)",
}

PATTERNS: dict[str, str] = {
    "entropy/pos_bucket_*": (
        "token mean of H_t by relative position in the response: bucket k = floor(n t / len_i), "
        "t the 0-based index among response tokens of response i (nats)"
    ),
    "eval/pass@*": "unbiased pass@k over eval problems, k from the key (Chen et al. 2021, arXiv:2107.03374) (probability)",
    "eval/maj@*": (
        "majority-vote accuracy over eval problems: the most frequent normalised answer among a problem's first k "
        "samples (k from the key; unparseable samples do not vote) is correct (fraction)"
    ),
    "attention/entropy_l*": (
        "layer i (from the key, 0 = first) of the attention-entropy monitor (train.attention_entropy_every): mean over "
        "heads of the token mean, over the queries that predict response tokens (mask == 1), of -sum_k a_k ln a_k of "
        "the attention weights; pre-update pass, eager attention; per-head values in attention_entropy.jsonl (nats)"
    ),
    "timing/*": "wall time of a named phase of the step (seconds)",
    "method/<name>/*": "metric specific to entropy method <name>, defined in that method's module docstring (unit given there)",
    "rollout/<name>/*": "metric specific to rollout strategy <name>, defined in that strategy's module docstring (unit given there)",
}


# Fields of one line of RUN_DIR/completions.jsonl (entropy_rl.train.samples writes them).
COMPLETION_FIELDS: dict[str, str] = {
    "step": "training step whose rollout batch the response belongs to (count)",
    "index": "row of the response in the rollout batch, 0-based (count)",
    "group": "prompt group of the response: index // group_size (count)",
    "prompt": "the prompt text (text)",
    "completion": "the decoded response without special tokens: untrusted model text (text)",
    "reward": "the verifier's score of the response (reward units)",
    "reason": "the verifier's reason code: ok, parse_error, wrong_value, error, timeout, ... (text)",
    "answer": "the parsed final answer, null if unparseable (text)",
    "advantage": "mean advantage over the response's tokens; the sequence advantage for sequence-level estimators (advantage units)",
    "tokens": "the response tokens, each decoded on its own, special tokens (EOS) included (list of text)",
    "entropy": "per-token H_t of the pre-update pass, aligned with tokens, rounded to 4 decimals (list of nats)",
}


# docs/metrics.md's section on the attention-entropy monitor: what it measures and what it does not say.
ATTENTION_NOTE: tuple[str, ...] = (
    "Off by default. With `train.attention_entropy_every: N`, every N-th step runs one extra no-grad forward of",
    "the rollout batch before the update, with eager attention (the only implementation that forms the weights;",
    "the model's setting is restored after), and logs per layer the mean over heads of the attention entropy",
    "-sum_k a_k ln a_k, averaged over the queries that predict response tokens (the tokens `entropy/token_mean`",
    "averages over). `RUN_DIR/attention_entropy.jsonl` keeps the per-head matrix of each logged step",
    '(`{"step": s, "entropy": [[layer 0 heads], [layer 1 heads], ...]}`, nats); the report draws it as a heatmap.',
    "",
    "What it tells: how spread each head's attention is over the context. A layer whose heads fall towards 0 attends",
    "to one token per query (attention entropy collapse, which sigmaReparam, arXiv:2303.06296, ties to training",
    "instability), and a shift during RL shows where in the network the update acts. The bound is ln(visible",
    "keys), which grows with the query's position: longer prompts or responses raise it without any change in the",
    "model, so compare runs on the same task and lengths.",
    "",
    "What it does not tell: the policy's entropy. `entropy/token_mean` is the entropy of the next-token",
    "distribution, a function of the final hidden state and the LM head; attention entropy describes how that",
    "state was mixed from the context. A model can attend broadly and still be certain of its next token (or",
    "attend to one token and be uncertain), and the two need not move together during RL. Read it as a diagnostic",
    "of the network's internals beside the policy entropy, not as a proxy for exploration.",
)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*|<name>)", pattern)
    body = "".join(".+" if p == "*" else "[^/]+" if p == "<name>" else re.escape(p) for p in parts)
    return re.compile(body + r"\Z")


_PATTERN_RES: dict[str, re.Pattern[str]] = {p: _pattern_regex(p) for p in PATTERNS}


def describe(key: str) -> str | None:
    """One-line definition (with unit) of a metric key, from `METRICS` or else the first matching family.

    Args:
        key: metric key, e.g. "entropy/token_mean" or "method/clip_cov/n_clipped".

    Returns:
        The definition, or None for an unknown key.
    """
    if key in METRICS:
        return METRICS[key]
    for pattern, regex in _PATTERN_RES.items():
        if regex.match(key):
            return PATTERNS[pattern]
    return None


def is_known(key: str) -> bool:
    """Whether `key` is listed in `METRICS` or matches a family in `PATTERNS`.

    Args:
        key: metric key.

    Returns:
        True if the key has a definition.
    """
    return describe(key) is not None


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The contents of docs/metrics.md: a table of every key and family with its definition.

    Returns:
        Markdown text ending in a newline.
    """
    lines = [
        "# Metrics",
        "",
        "<!-- Generated from entropy_rl/metrics/names.py; do not edit by hand. -->",
        "<!-- Regenerate: python -m entropy_rl.metrics.names > docs/metrics.md -->",
        "",
        "Every key the toolkit logs. Entropies are in nats. `entropy/token_mean` is *the* entropy: any other",
        "variant (in-update, sequence-mean, untempered, top-p) is logged under another name. Non-finite values",
        'appear in the JSONL log as the strings "nan", "inf", "-inf".',
        "",
        "When `train.eval_every > 0`, metrics.jsonl starts with a row `step: 0`: the eval of the policy RL starts",
        "from (the SFT warm start or `model.path`), before the first update, holding only `eval/*` and",
        "`timing/eval_s`. Rows `step >= 1` are RL steps. Each eval has its own seed and restores the RNG state, so",
        "the RL steps are the same with or without evals.",
        "",
        "| key | definition (unit) |",
        "|---|---|",
    ]
    lines += [f"| `{key}` | {_cell(text)} |" for key, text in METRICS.items()]
    lines += ["", "## Key families", "", "| pattern | definition (unit) |", "|---|---|"]
    lines += [f"| `{pattern}` | {_cell(text)} |" for pattern, text in PATTERNS.items()]
    lines += ["", "## Attention entropy (`attention/entropy_l*`)", "", *ATTENTION_NOTE]
    lines += ["", "## completions.jsonl", "",
              "At step 1, every `train.log_completions_every` steps and at the last step, the first",
              "`train.log_completions_n` responses of the rollout batch (whole groups when n is a multiple of the",
              "group size), one JSON object per line. Non-finite numbers are the strings \"nan\", \"inf\", \"-inf\".",
              "", "| field | definition (unit) |", "|---|---|"]
    lines += [f"| `{key}` | {_cell(text)} |" for key, text in COMPLETION_FIELDS.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
