"""`entropy-rl compare`: run several methods x seeds on one task, model and budget, then summarise.

Every run that needs an SFT warm start shares one (done once, seed = the base config's seed) so that methods
differ only in the RL phase; seeds vary the RL phase (sampling, data order, selection). A method name resolves
to a variant (`entropy_rl.presets`: a `--methods-dir` file, else a packaged one) or, failing that, to a
policy-loss registry key with default parameters; the summary says which. Every run's config is resolved and
validated before anything is trained, so a typo fails in a second.

Nothing is reused on a name alone. A run directory that holds a run (its `config.yaml`) is resumed or counted as
finished only when the saved config equals the run's resolved config; otherwise compare stops and names the
differing keys. The warm start lives in `<out>/_sft/<hash>`, keyed by the sha256 of the settings it depends on
(`warm_start_settings`), so a changed task or model gets a new one. The default output directory carries a
hash of the resolved base config, so compares with different overrides never share one. Runs are subprocesses
(`entropy-rl train`), so one failing run does not end the comparison.

The summary gives, per method and metric, the mean, sample std and 95% bootstrap CI of the mean over seeds
(scipy.stats.bootstrap, percentile method, fixed seed: deterministic) and with >= 5 seeds the interquartile mean;
then each method's difference from a baseline (`--baseline`; default ppo_clip when compared, else the first
method) with its bootstrap CI, flagged "CI excludes 0" or, in words, "CI includes 0: within seed noise". Below 3
seeds the CIs are n/a (std too with 1 seed): 2 values give no usable interval.

With `--k K,K,...` the warm start and every finished run's final model get a pass@k curve after training
(`evaluate_curves`: `entropy-rl eval`'s function and cache, one evaluation at a time); the summary adds pass@kmax
and the crossover k against the warm start, and the report plots the curves.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import yaml
from scipy import stats

from entropy_rl.metrics import passk
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.presets import REGISTRY_SOURCE, Variant, check_name, flatten, resolve, settings
from entropy_rl.train.checkpoint import COMPLETE, latest_checkpoint
from entropy_rl.train.config import Config, ConfigError, from_dict, load_config, save_config, to_dict, validate

if TYPE_CHECKING:  # evaluate imports transformers: loaded only when curves are evaluated
    from entropy_rl.train.evaluate import PasskEvalPlan, PasskEvalResult

SUMMARY_KEYS = ("final_entropy", "final_reward", "pass@1", "pass@8", "steps_to_half_entropy", "wall_s",
                "tokens_generated", "steps")
# With `compare --k`: pass@k of the curve at the grid's largest k, and the crossover k against the warm start.
PASSK_KEYS = ("pass@kmax", "crossover_k")
NEVER_KEYS = frozenset({"steps_to_half_entropy", "crossover_k"})  # no value = it never happened (or the run failed)
PASSK_NOT_HELD = " (pass@kmax and crossover_k are of each run's final model, beyond the budget)"
WARM_START_KEY = "_warm_start"  # summary.json's entry of the warm start (a method name cannot start with '_')
TOKENS_KEY = "rollout/tokens_generated"  # every token the step's generation calls sampled (strategies' cost)
# The summary table's column headers: a plain name with its unit, the short key beside it.
SUMMARY_HEADERS = {"final_entropy": "final entropy, nats", "final_reward": "final reward", "pass@1": "pass@1, prob.",
                   "pass@8": "pass@8, prob.", "steps_to_half_entropy": "steps until entropy halves",
                   "wall_s": "wall time, s", "tokens_generated": "tokens generated", "steps": "steps summarised",
                   "pass@kmax": "pass@k at the largest k, prob.", "crossover_k": "k where the warm start catches up"}
IGNORED_KEYS = frozenset({"train.threads"})  # compare sets it from --jobs; a resumed run keeps its own value
RESERVED_NAMES = frozenset({"report"})  # <out>/report is the HTML report, not a method's run directories
SFT_SAMPLING = ("temperature", "top_p", "top_k", "max_new_tokens")  # the rollout settings SFT's accuracy check uses
SFT_DIR = "_sft"  # <out>/_sft/<hash>: warm starts (a method name cannot start with '_')
DEFAULT_BASELINE = "ppo_clip"  # the plain clipped objective every entropy paper compares against
CONFIDENCE = 0.95
CI_MIN_SEEDS = 3  # 2 values give a bootstrap of 3 distinct means, a t-interval 1 degree of freedom: n/a below 3
IQM_MIN_SEEDS = 5  # trim_mean(x, 0.25) drops nothing below 4 values and leaves the middle 2 of 4
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # a fixed seed: the same runs always give the same summary
STATS_NOTE = (
    "Cells: mean ± sample std over the seeds with a value ((n/N) when only n of N had one: failed runs, runs "
    "whose entropy never halved, or, for crossover_k, runs the warm start never catches up with), then the 95% "
    "bootstrap CI of the mean (percentile, scipy.stats.bootstrap, "
    f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) and, with {IQM_MIN_SEEDS} or more seeds, the "
    "interquartile mean (IQM). std is n/a with 1 seed, the CI with fewer than "
    f"{CI_MIN_SEEDS}. Few seeds make the CI too narrow: with 3 it spans about the lowest to the highest seed and "
    "covers the true mean about 3 times in 4 (5 seeds: about 84%), so read it as a lower bound on the uncertainty.")


@dataclass(frozen=True)
class WarmStart:
    """A shared SFT warm start: the config `entropy-rl sft` runs with and the directory keyed by its hash."""

    cfg: Config
    model_dir: Path


@dataclass(frozen=True)
class RunSpec:
    """One (method, seed) run: what its name resolved to, its resolved config, directory and warm start."""

    method: str
    variant: Variant
    seed: int
    cfg: Config
    run_dir: Path
    warm_start: WarmStart | None


def config_hash(data: dict[str, Any]) -> str:
    """sha256 hex digest of a config dict's canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_diff(old: dict[str, Any], new: dict[str, Any], ignore: frozenset[str] = IGNORED_KEYS) -> list[str]:
    """'dotted.key: old -> new' for every leaf that differs (a missing leaf reads '<unset>'), sorted by key."""
    a, b = flatten(old), flatten(new)
    unset = "<unset>"
    return [f"{k}: {a.get(k, unset)} -> {b.get(k, unset)}" for k in sorted(a.keys() | b.keys())
            if k not in ignore and a.get(k, unset) != b.get(k, unset)]


def warm_start_settings(cfg: Config) -> dict[str, Any]:
    """What an SFT warm start depends on: the model, task and sft sections, the seed and device, and the sampling
    settings of its accuracy check (`SFT_SAMPLING`). Nothing RL-only enters (batch shape, strategy, engine and its
    params: SFT samples with Hugging Face generate), so a new RL setting never invalidates a warm start."""
    d = to_dict(cfg)
    return {"model": d["model"], "task": d["task"], "sft": d["sft"],
            "train": {"seed": d["train"]["seed"], "device": d["train"]["device"]},
            "rollout": {k: d["rollout"][k] for k in SFT_SAMPLING}}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values of `extra` win (dict values merge key by key)."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def check_methods(methods: list[str]) -> None:
    """Raise ConfigError on an empty list, an unsafe or reserved name, or a name given twice."""
    if not methods:
        raise ConfigError("--methods needs at least one name")
    for name in methods:
        check_name(name)
        if name in RESERVED_NAMES:
            raise ConfigError(f"method name '{name}' is reserved (<out>/{name} holds the comparison's own files)")
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise ConfigError(f"--methods names {', '.join(twice)} more than once (two runs would share a directory)")


def resolved_config(name: str, variant: Variant, data: dict[str, Any]) -> Config:
    """from_dict + validate of one run's merged config; ConfigError names the method and where it came from."""
    try:
        cfg = from_dict(Config, data)
        validate(cfg)
    except ConfigError as e:
        if variant.source == REGISTRY_SOURCE:
            raise ConfigError(f"method '{name}' is not a variant (`entropy-rl methods` lists them); {e}") from None
        raise ConfigError(f"method '{name}' ({variant.source}): {e}") from None
    return cfg


def plan_runs(base: dict[str, Any], methods: list[str], seeds: int, out_dir: Path, methods_dir: Path | None,
              threads: int = 0) -> list[RunSpec]:
    """Resolve and validate every run's config before anything is trained (a typo fails in a second).

    Args:
        base: the base config as a dict (file + overrides); variants merge over it.
        methods: method names (variants or registry keys).
        seeds: runs per method; run k has train.seed = base seed + k.
        out_dir: the comparison's directory; run k of method m lives in <out_dir>/m/seed<seed>.
        methods_dir: a directory of user variants that win over the packaged ones, or None.
        threads: torch threads per run (saved in each run's config); 0 keeps the base config's value.

    Returns:
        One RunSpec per (method, seed), method-major. A run whose config asks for an SFT warm start from a fresh
        model gets a shared one instead: model.path = <out_dir>/_sft/<hash>, sft.enabled = false.
    """
    check_methods(methods)
    base_seed = from_dict(Config, base).train.seed
    specs = []
    for name in methods:
        variant = resolve(name, methods_dir)
        for k in range(seeds):
            data = deep_merge(base, variant.overrides)
            data = deep_merge(data, {"train": {"seed": base_seed + k, **({"threads": threads} if threads else {})}})
            cfg = resolved_config(name, variant, data)
            warm_start = None
            if cfg.sft.enabled and not cfg.model.path:
                ws_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=base_seed))
                key = config_hash(warm_start_settings(ws_cfg))[:16]
                warm_start = WarmStart(ws_cfg, out_dir / SFT_DIR / key)
                cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(warm_start.model_dir)),
                                          sft=dataclasses.replace(cfg.sft, enabled=False))
            specs.append(RunSpec(name, variant, cfg.train.seed, cfg, out_dir / name / f"seed{cfg.train.seed}", warm_start))
    return specs


def check_run_dir(spec: RunSpec) -> None:
    """Raise ConfigError if the run directory holds a run whose saved config differs from `spec.cfg`.

    The message names the differing keys (dotted paths, old -> new); train.threads is not compared.
    """
    saved = spec.run_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        old = to_dict(from_dict(Config, yaml.safe_load(saved.read_text(encoding="utf-8")) or {}))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError) as e:
        raise ConfigError(f"{saved}: not a run config compare can check ({str(e).splitlines()[0]}); "
                          "use another --out") from None
    diff = config_diff(old, to_dict(spec.cfg))
    if diff:
        more = f"; and {len(diff) - 5} more" if len(diff) > 5 else ""
        raise ConfigError(f"{spec.run_dir} holds a {spec.method} run with another config ({'; '.join(diff[:5])}{more}); "
                          "use another --out, or remove that run directory to train this config")


def is_finished(spec: RunSpec) -> bool:
    """A run is finished when its final-step checkpoint exists (its config was checked by `check_run_dir`)."""
    ckpt = latest_checkpoint(spec.run_dir)
    return ckpt is not None and ckpt.name == f"step_{spec.cfg.train.steps:06d}"


def train_warm_start(ws: WarmStart, log: Callable[[str], None]) -> None:
    """Run `entropy-rl sft` for a warm start in a subprocess, then mark it complete. RuntimeError on failure."""
    log(f"compare: SFT warm start -> {ws.model_dir}")
    ws.model_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg_file = ws.model_dir.with_suffix(".yaml")
    save_config(ws.cfg, cfg_file)
    proc = subprocess.run([sys.executable, "-m", "entropy_rl", "sft", str(cfg_file), "--out", str(ws.model_dir)])
    if proc.returncode != 0:
        raise RuntimeError(f"the SFT warm start failed (exit {proc.returncode}, output above); config {cfg_file}")
    (ws.model_dir / COMPLETE).write_text(ws.model_dir.name)


def run_one(spec: RunSpec) -> tuple[RunSpec, int, str]:
    """Train one run in a subprocess (resuming if it has started). Returns (spec, exit code, stderr tail)."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = spec.run_dir.parent / f"seed{spec.seed}.yaml"
    save_config(spec.cfg, cfg_file)
    if (spec.run_dir / "config.yaml").is_file():
        cmd = [sys.executable, "-m", "entropy_rl", "train", "--resume", str(spec.run_dir), "--no-progress"]
    else:
        cmd = [sys.executable, "-m", "entropy_rl", "train", str(cfg_file), "--run-dir", str(spec.run_dir), "--no-progress"]
    with open(spec.run_dir.parent / f"seed{spec.seed}.log", "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.PIPE, text=True)
    return spec, proc.returncode, proc.stderr[-2000:]


def run_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The RL steps' metric rows of a run (step >= 1; step 0 is the warm start's eval); [] if it has none."""
    logged = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    return [r for r in logged if r.get("step", 0) >= 1]


def total_tokens(rows: list[dict[str, Any]]) -> float | None:
    """Sum of `rollout/tokens_generated` over the rows, None when a row lacks it (a run from before the metric)."""
    values = [r.get(TOKENS_KEY) for r in rows]
    return float(sum(values)) if values and all(v is not None for v in values) else None


def within_budget(rows: list[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    """The leading rows whose cumulative `rollout/tokens_generated` stays <= budget (tokens)."""
    kept, spent = [], 0.0
    for r in rows:
        spent += r.get(TOKENS_KEY, math.inf)
        if spent > budget:
            break
        kept.append(r)
    return kept


def summarize_run(run_dir: Path, token_budget: float | None = None) -> dict[str, float | None]:
    """Final entropy / reward (mean of the last 10 steps), last eval pass@1 / pass@8, steps until the entropy
    first falls to half its first-5-step mean, the summed step wall time and the tokens generated.

    With `token_budget` (tokens), only the steps up to the last one whose cumulative tokens generated stay
    within it count (pass@k: the last eval among them): runs are compared at an equal generation budget.
    """
    rows = run_rows(run_dir)
    if token_budget is not None:
        rows = within_budget(rows, token_budget)
    if not rows:  # the run failed before its first step (or its first step is over the budget)
        return {k: None for k in SUMMARY_KEYS}
    tail = rows[-10:]
    h0 = statistics.mean(r["entropy/token_mean"] for r in rows[:5])
    half = next((r["step"] for r in rows if r["entropy/token_mean"] <= 0.5 * h0), None)
    evals = [r for r in rows if "eval/pass@1" in r]
    return {
        "final_entropy": statistics.mean(r["entropy/token_mean"] for r in tail),
        "final_reward": statistics.mean(r["reward/mean"] for r in tail),
        "pass@1": evals[-1]["eval/pass@1"] if evals else None,
        "pass@8": evals[-1].get("eval/pass@8") if evals else None,
        "steps_to_half_entropy": half,
        "wall_s": sum(r.get("timing/step_s", 0.0) for r in rows),
        "tokens_generated": total_tokens(rows),
        "steps": float(rows[-1]["step"]),
    }


def equal_token_budget(run_dirs: list[Path]) -> float:
    """The generation budget every run can be held to: the smallest total of tokens generated (ConfigError when
    a run has no steps or lacks `rollout/tokens_generated`)."""
    totals = []
    for d in run_dirs:
        total = total_tokens(run_rows(d))
        if total is None:
            raise ConfigError(f"--equal-tokens: {d} has no steps with {TOKENS_KEY} (failed, or from an older version)")
        totals.append(total)
    return min(totals)


def finite(values: list[float | None]) -> list[float]:
    """The values that are numbers: a failed run's None and a non-finite value are left out."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def bootstrap_ci(samples: tuple[list[float], ...], statistic: Callable[..., Any]) -> tuple[float, float] | None:
    """95% percentile bootstrap CI of `statistic` (scipy.stats.bootstrap), or None if a sample has < CI_MIN_SEEDS.

    Every call draws from a fresh generator seeded with BOOTSTRAP_SEED, so a summary is the same every time it is
    written. Samples are resampled independently of each other (`paired=False`).
    """
    if any(len(x) < CI_MIN_SEEDS for x in samples):
        return None
    res = stats.bootstrap(tuple(np.asarray(x, dtype=np.float64) for x in samples), statistic, paired=False,
                          vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE,
                          method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean along `axis` (the vectorised statistic scipy's bootstrap calls)."""
    return np.mean(x, axis=axis)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(x) - mean(y) along `axis` (the vectorised statistic scipy's bootstrap calls)."""
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


@dataclass(frozen=True)
class MetricStats:
    """One metric of one method over its seeds: n = how many values there were (failed runs and, for
    steps_to_half_entropy and crossover_k, runs where it never happened are left out); std is the sample std (None
    below 2 values); ci the 95% bootstrap CI of the mean (None below CI_MIN_SEEDS); iqm the interquartile mean
    (None below IQM_MIN_SEEDS)."""

    n: int
    mean: float | None
    std: float | None
    ci: tuple[float, float] | None
    iqm: float | None


def metric_stats(values: list[float | None]) -> MetricStats:
    """Mean, sample std, 95% bootstrap CI of the mean and interquartile mean of one metric over seeds.

    The IQM is scipy.stats.trim_mean(x, 0.25) (as in rliable): the mean after dropping floor(n/4) values at
    each end, so with 5 seeds the mean of the middle 3.
    """
    xs = finite(values)
    n = len(xs)
    if not xs:
        return MetricStats(0, None, None, None, None)
    return MetricStats(n, statistics.mean(xs), statistics.stdev(xs) if n > 1 else None,
                       bootstrap_ci((xs,), _mean), float(stats.trim_mean(xs, 0.25)) if n >= IQM_MIN_SEEDS else None)


@dataclass(frozen=True)
class Difference:
    """mean(method) - mean(baseline) of one metric with its 95% bootstrap CI (None below CI_MIN_SEEDS values of
    either); n and n_baseline count the values each side had."""

    diff: float | None
    ci: tuple[float, float] | None
    n: int
    n_baseline: int

    @property
    def excludes_zero(self) -> bool | None:
        """True if the CI lies wholly above or below 0, None without a CI."""
        return None if self.ci is None else (self.ci[0] > 0 or self.ci[1] < 0)

    @property
    def verdict(self) -> str:
        """The difference in words."""
        if self.diff is None:
            return "n/a: no values"
        if self.ci is None:
            return f"n/a: the CI needs >= {CI_MIN_SEEDS} seeds of each"
        return "CI excludes 0" if self.excludes_zero else "CI includes 0: within seed noise"


def difference(values: list[float | None], baseline_values: list[float | None]) -> Difference:
    """A method's difference from the baseline on one metric; the seeds of the two are resampled independently
    (conservative when runs with the same seed are correlated, and failed runs may leave unequal counts)."""
    xs, bs = finite(values), finite(baseline_values)
    if not xs or not bs:
        return Difference(None, None, len(xs), len(bs))
    return Difference(statistics.mean(xs) - statistics.mean(bs), bootstrap_ci((xs, bs), _mean_difference),
                      len(xs), len(bs))


def choose_baseline(methods: list[str], baseline: str | None) -> str:
    """The method others are compared with: `baseline` if given (ConfigError unless it is one of `methods`),
    else DEFAULT_BASELINE when it is among them, else the first method."""
    if baseline is not None:
        if baseline not in methods:
            raise ConfigError(f"--baseline '{baseline}' is not one of --methods ({', '.join(methods)})")
        return baseline
    return DEFAULT_BASELINE if DEFAULT_BASELINE in methods else methods[0]


def _fmt(key: str) -> str:
    """Format spec of a summary key's values: whole steps and seconds, else 3 decimals."""
    return ".0f" if key in ("wall_s", "steps_to_half_entropy", "tokens_generated", "steps", "crossover_k") else ".3f"


def stats_cell(key: str, st: MetricStats, runs: int) -> str:
    """'mean ± std, CI [lo, hi]' (', IQM x' with >= IQM_MIN_SEEDS values; ' (n/runs)' when values are missing);
    'n/a' where a statistic needs more seeds; '-' without values (NEVER_KEYS: 'never (runs)')."""
    if st.mean is None:
        return "-" if key not in NEVER_KEYS else f"never ({runs})"
    f = _fmt(key)
    std = "n/a" if st.std is None else f"{st.std:{f}}"
    ci = "n/a" if st.ci is None else f"[{st.ci[0]:{f}}, {st.ci[1]:{f}}]"
    iqm = "" if st.iqm is None else f", IQM {st.iqm:{f}}"
    missing = f" ({st.n}/{runs})" if st.n < runs else ""
    return f"{st.mean:{f}} ± {std}, CI {ci}{iqm}{missing}"


def keys_of(results: dict[str, list[dict[str, float | None]]]) -> tuple[str, ...]:
    """The summary's columns: SUMMARY_KEYS, then each of PASSK_KEYS that some run's summary has (`compare --k`)."""
    return SUMMARY_KEYS + tuple(k for k in PASSK_KEYS if any(k in r for runs in results.values() for r in runs))


def summary_table(results: dict[str, list[dict[str, float | None]]]) -> str:
    """Markdown table: one row per method, per summary key (keys_of) mean ± std, 95% CI and IQM over seeds
    (stats_cell)."""
    keys = keys_of(results)
    head = "| method | seeds | " + " | ".join(f"{SUMMARY_HEADERS[k]} ({k})" for k in keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 2)]
    for method, runs in results.items():
        cells = [stats_cell(key, metric_stats([r.get(key) for r in runs]), len(runs)) for key in keys]
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences(results: dict[str, list[dict[str, float | None]]], baseline: str) -> dict[str, dict[str, Difference]]:
    """Per method other than the baseline, per summary key (keys_of), its Difference from the baseline."""
    base, keys = results[baseline], keys_of(results)
    return {m: {k: difference([r.get(k) for r in runs], [r.get(k) for r in base]) for k in keys}
            for m, runs in results.items() if m != baseline}


def difference_table(results: dict[str, list[dict[str, float | None]]], baseline: str) -> str:
    """Markdown table: one row per (method, summary key) with the difference from the baseline, its 95% CI, the
    values each side had and the verdict in words; a key neither side has a value for (e.g. pass@k without
    evaluation) gets no row; '' with a single method."""
    diffs = differences(results, baseline)
    if not diffs:
        return ""
    lines = [f"| method | metric | Δ vs {baseline} | 95% CI | seeds (method vs baseline) | verdict |",
             "|---|---|---|---|---|---|"]
    for method, by_key in diffs.items():
        for key, d in by_key.items():
            if d.n == d.n_baseline == 0:
                continue
            f = _fmt(key).replace(".", "+.")
            diff = "-" if d.diff is None else f"{d.diff:{f}}"
            ci = "n/a" if d.ci is None else f"[{d.ci[0]:{f}}, {d.ci[1]:{f}}]"
            lines.append(f"| {method} | {key} | {diff} | {ci} | {d.n} vs {d.n_baseline} | {d.verdict} |")
    return "\n".join(lines)


def summary_markdown(results: dict[str, list[dict[str, float | None]]], baseline: str, passk_note: str = "") -> str:
    """The statistics part of summary.md: the per-method table, `passk_note` (what the pass@k columns are, the warm
    start's values; passk_markdown) when given, what the cells mean, and the difference table."""
    parts = [summary_table(results), *([passk_note] if passk_note else []), STATS_NOTE]
    table = difference_table(results, baseline)
    if table:
        intro = (f"Differences from the baseline `{baseline}` (mean of the method - mean of the baseline; 95% "
                 "bootstrap CI with the seeds of each resampled independently). \"CI excludes 0\" flags a "
                 "difference larger than the seed-to-seed noise; \"CI includes 0: within seed noise\" means these "
                 "seeds cannot tell the method from the baseline on that metric. With 3 seeds each the interval "
                 "covers the true difference about 4 times in 5 (5 each: about 89%), not 95%.")
        parts += [intro, table]
    return "\n\n".join(parts)


def stats_json(st: MetricStats) -> dict[str, Any]:
    """A MetricStats as summary.json writes it: n, mean, std, ci95 ([lo, hi] or None), iqm."""
    return {"n": st.n, "mean": st.mean, "std": st.std, "ci95": list(st.ci) if st.ci else None, "iqm": st.iqm}


def summary_stats(results: dict[str, list[dict[str, float | None]]], baseline: str) -> dict[str, dict[str, Any]]:
    """JSON-ready statistics per method: "stats" (per key n, mean, std, ci95, iqm) and "vs_baseline" (None for
    the baseline, else {"baseline": name, "metrics": per key diff, ci95, n, n_baseline, excludes_zero, verdict})."""
    diffs = differences(results, baseline)
    out: dict[str, dict[str, Any]] = {}
    for method, runs in results.items():
        per_key = {key: stats_json(metric_stats([r.get(key) for r in runs])) for key in keys_of(results)}
        vs = None
        if method in diffs:
            vs = {"baseline": baseline, "metrics": {
                k: {"diff": d.diff, "ci95": list(d.ci) if d.ci else None, "n": d.n, "n_baseline": d.n_baseline,
                    "excludes_zero": d.excludes_zero, "verdict": d.verdict} for k, d in diffs[method].items()}}
        out[method] = {"stats": per_key, "vs_baseline": vs}
    return out


def check_out_dir(out_dir: Path) -> None:
    """Raise ConfigError if `out_dir` is a file or lies under one (instead of a traceback at the first write)."""
    p = out_dir
    while not p.exists() and p != p.parent:  # exists() is False for a path under a file
        p = p.parent
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out '{out_dir}': '{p}' is a file, not a directory")


def default_out_dir(config: str | None, base_cfg: Config) -> Path:
    """runs/compare_<config name>_<first 8 hex of the resolved base config's hash>: other overrides, other dir."""
    return Path("runs") / f"compare_{Path(config).stem if config else 'demo'}_{config_hash(to_dict(base_cfg))[:8]}"


def describe(variant: Variant) -> str:
    """One line: what a method name resolved to and what it sets."""
    what = f" ({variant.description})" if variant.description else ""
    return f"{variant.source}{what}: {', '.join(settings(variant.overrides))}"


# ---------------------------------------------------------------- pass@k curves (compare --k)


@dataclass(frozen=True)
class PasskCurves:
    """The pass@k curves of a comparison (`evaluate_curves`).

    Attributes:
        ks: the k grid, ascending.
        problems: eval problems per curve.
        seed: the seed of the problem draw and of sampling.
        runs: run directory -> the evaluation of its final model (finished runs only).
        warm_starts: run directory -> the evaluation of the model that run started from, on the run's task and
            sampling (runs without a warm start on disk, e.g. from a fresh model, have none); runs that share the
            model and sampling share one evaluation.
    """

    ks: list[int]
    problems: int
    seed: int
    runs: dict[Path, PasskEvalResult]
    warm_starts: dict[Path, PasskEvalResult]

    def distinct_warm_starts(self) -> list[PasskEvalResult]:
        """The warm-start evaluations, each once (runs that share one share the object), in run order."""
        return list({id(r): r for r in self.warm_starts.values()}.values())

    def base_dirs(self) -> list[Path]:
        """Folders of warm-start results that a run's own lookup (`passk.warm_start_results`: RUN/eval and its
        `model.path`'s eval/) does not reach, e.g. a `model.path` the toolkit did not write, whose warm start is
        kept in the first run's eval/: the report needs them as base folders."""
        out: list[Path] = []
        for run_dir, ws in self.warm_starts.items():
            reach = passk.warm_start_results(run_dir, {"model": {"path": ws.plan.model_path}})
            if ws.path is not None and str(ws.path) not in {r["path"] for r in reach} and ws.path.parent not in out:
                out.append(ws.path.parent)
        return out


def check_ks(ks: list[int] | None, eval_problems: int) -> None:
    """Raise ConfigError unless `ks` is None or a strictly ascending list of k in [1, passk.MAX_K] and
    eval_problems >= 1 (the same rules as `--k`, for callers that pass a list)."""
    if ks is None:
        return
    if not ks or any(not isinstance(k, int) or not 1 <= k <= passk.MAX_K for k in ks) or ks != sorted(set(ks)):
        raise ConfigError(f"--k must be strictly ascending integers in [1, {passk.MAX_K}], got {ks}")
    if eval_problems < 1:
        raise ConfigError(f"--eval-problems must be >= 1, got {eval_problems}")


def describe_curve(r: PasskEvalResult) -> str:
    """'pass@1 0.300 pass@4 0.700' (the grid's first and last k) of an evaluation."""
    curve = r.curve
    ks = list(dict.fromkeys([min(curve), max(curve)]))
    return " ".join(f"pass@{k} {curve[k]:.3f}" for k in ks)


def evaluate_curves(specs: list[RunSpec], ks: list[int], problems: int, log: Callable[[str], None]) -> PasskCurves:
    """pass@k curves of every finished run's final model and of the warm start(s) they started from.

    Each evaluation is `entropy-rl eval RUN [--warm-start] --k KS --problems PROBLEMS` with its defaults (seed 0,
    the run's task and sampling, samples = the largest k): the results are the same files, cached the same way
    (a second call samples nothing, and `entropy-rl eval` reuses compare's results). Warm starts come first, each
    model and sampling once: a warm start the toolkit wrote (compare's shared SFT, an `entropy-rl sft --out`
    directory) keeps its result in its own eval/, else the first run's eval/ holds it. A run that started from a
    fresh model has no warm start to evaluate (logged).

    Evaluations run one after another in this process, not `--jobs` at a time: sampling seeds torch's
    process-wide generator (`sample_eval`), so evaluations in parallel threads would draw from one generator in
    an order set by timing and their results would not be reproducible.

    Logs one line per evaluation: `[i/n] method seed s: pass@1 .. pass@kmax .. (12 s)` ("(cached)" when reused).
    """
    from entropy_rl.train.evaluate import EVAL_SEED, cached_result, plan_passk_eval

    quiet: Callable[[str], None] = lambda line: None  # the progress line of _evaluate says it all
    finished = [s for s in specs if is_finished(s)]
    ws_plans: dict[Path, PasskEvalPlan] = {}
    for spec in finished:
        try:
            ws_plans[spec.run_dir] = plan_passk_eval(spec.run_dir, ks, problems, warm_start=True, log=quiet)
        except FileNotFoundError:
            log(f"compare: {spec.method} seed {spec.seed} starts from a fresh model: no warm start to evaluate")
    groups: dict[str, list[PasskEvalPlan]] = {}
    for plan in ws_plans.values():  # the same model and settings: one evaluation, wherever it is already kept
        groups.setdefault(passk.settings_key(plan.settings), []).append(plan)
    n = len(groups) + len(finished)
    i, by_key = 0, {}
    for key, plans in groups.items():
        folder = next((p.folder for p in plans if cached_result(p.folder, p.settings)), plans[0].folder)
        i += 1
        by_key[key] = _evaluate(dataclasses.replace(plans[0], folder=folder), f"[{i}/{n}] warm start", log, quiet)
    warm_starts = {run_dir: by_key[passk.settings_key(p.settings)] for run_dir, p in ws_plans.items()}
    runs = {}
    for spec in finished:
        i += 1
        ws = warm_starts.get(spec.run_dir)
        plan = plan_passk_eval(spec.run_dir, ks, problems, log=quiet)
        runs[spec.run_dir] = _evaluate(plan, f"[{i}/{n}] {spec.method} seed {spec.seed}", log, quiet,
                                       ws.curve if ws is not None else None)
    return PasskCurves(list(ks), problems, EVAL_SEED, runs, warm_starts)


def _evaluate(plan: PasskEvalPlan, what: str, log: Callable[[str], None], quiet: Callable[[str], None],
              base: dict[int, float] | None = None) -> PasskEvalResult:
    """execute_passk_eval with `base` as the warm-start curve, and its progress line."""
    from entropy_rl.train.evaluate import execute_passk_eval

    t0 = time.perf_counter()
    r = dataclasses.replace(execute_passk_eval(plan, log=quiet), base=base)
    took = "cached" if r.cached else f"{time.perf_counter() - t0:.0f} s"
    vs = ""
    if base is not None:
        vs = f", crossover k {r.crossover}" if r.crossover is not None else f", no crossover up to k = {max(r.curve)}"
    log(f"{what}: {describe_curve(r)}{vs} ({took})")
    return r


def passk_summary(curves: PasskCurves, run_dir: Path) -> dict[str, float | None]:
    """A run's pass@k columns: pass@kmax (None: not evaluated) and, when any run has a warm start, crossover_k (None:
    the warm start never catches up within the grid, or the run has no curve)."""
    r = curves.runs.get(run_dir)
    out: dict[str, float | None] = {"pass@kmax": r.curve[max(r.curve)] if r is not None else None}
    if curves.warm_starts:
        out["crossover_k"] = r.crossover if r is not None else None
    return out


def passk_entry(curves: PasskCurves, run_dir: Path) -> dict[str, Any]:
    """What summary.json keeps of a run's curve: the result file, {k: pass@k}, the warm start's result file."""
    r, ws = curves.runs.get(run_dir), curves.warm_starts.get(run_dir)
    if r is None:
        return {}
    return {"passk": {"result": str(r.path), "curve": {str(k): v for k, v in r.curve.items()},
                      "warm_start_result": str(ws.path) if ws is not None else None}}


def warm_start_entry(curves: PasskCurves) -> dict[str, Any]:
    """summary.json's WARM_START_KEY entry: each warm-start evaluation (model, result file, curve) and the stats of
    its pass@1 and pass@kmax over them (usually one)."""
    evals = curves.distinct_warm_starts()
    return {"evaluations": [{"model_dir": str(w.plan.model_dir), "result": str(w.path),
                             "curve": {str(k): v for k, v in w.curve.items()}} for w in evals],
            "stats": {"pass@1": stats_json(metric_stats([w.curve.get(1) for w in evals])),
                      "pass@kmax": stats_json(metric_stats([w.curve[max(w.curve)] for w in evals]))}}


def passk_markdown(curves: PasskCurves) -> str:
    """summary.md's paragraph on the pass@k columns, with the warm start's own pass@1 and pass@kmax."""
    kmax = curves.ks[-1]
    grid = ",".join(str(k) for k in curves.ks)
    text = (f"pass@k curves: `entropy-rl eval RUN --k {grid} --problems {curves.problems}` (seed {curves.seed}, "
            f"{kmax} samples per problem, each run's task and sampling; result files in eval/ folders, full curves "
            f"in summary.json) of each finished run's final model. pass@kmax is pass@{kmax}. ")
    evals = curves.distinct_warm_starts()
    if not evals:
        return text + "No run has a warm start on disk (they start from a fresh model): no crossover."
    models = ", ".join(f"`{w.plan.model_dir}`" for w in evals)
    ones, tops = [w.curve.get(1) for w in evals], [w.curve[max(w.curve)] for w in evals]
    return text + (f"crossover_k is the smallest k at which the warm start's pass@k is at least the run's, \"never\" "
                   f"when the run stays above it up to k = {kmax}.\n\n"
                   f"Warm start ({models}; {len(evals)} evaluation{'s' if len(evals) > 1 else ''}): "
                   f"pass@1 {stats_cell('pass@1', metric_stats(ones), len(evals))}, "
                   f"pass@{kmax} (pass@kmax) {stats_cell('pass@kmax', metric_stats(tops), len(evals))}.")


def write_summary(specs: list[RunSpec], out_dir: Path, baseline: str | None = None, equal_tokens: bool = False,
                  curves: PasskCurves | None = None) -> str:
    """Write summary.json and summary.md; return the markdown.

    summary.json, per method: what the name resolved to ("variant", "settings"), per run its seed, directory,
    config hash and summary ("runs"), and the statistics over seeds ("stats", "vs_baseline": see summary_stats);
    with `equal_tokens`, "token_budget" too. summary.md: the statistics (summary_markdown), then what each name
    resolved to. `baseline` as in choose_baseline. `equal_tokens`: every run is summarised up to the smallest
    total of tokens generated among them (equal_token_budget), so strategies are compared at equal cost.
    `curves` (compare --k): the columns pass@kmax and crossover_k (passk_summary), each run's curve in its
    "passk" entry, and the warm start's evaluations and stats under WARM_START_KEY.
    """
    results: dict[str, list[dict[str, float | None]]] = {}
    entries: dict[str, dict[str, Any]] = {}
    budget = equal_token_budget([s.run_dir for s in specs]) if equal_tokens else None
    for spec in specs:
        summary = summarize_run(spec.run_dir, budget)
        if curves is not None:
            summary.update(passk_summary(curves, spec.run_dir))
        results.setdefault(spec.method, []).append(summary)
        entry = entries.setdefault(spec.method, {"variant": spec.variant.source, "settings": spec.variant.overrides,
                                                 "runs": []})
        entry["runs"].append({"seed": spec.seed, "run_dir": str(spec.run_dir),
                              "config_sha256": config_hash(to_dict(spec.cfg)), **summary,
                              **(passk_entry(curves, spec.run_dir) if curves is not None else {})})
    base = choose_baseline(list(results), baseline)
    for method, st in summary_stats(results, base).items():
        entries[method].update(st, **({"token_budget": budget} if budget is not None else {}))
    if curves is not None and curves.warm_starts:
        entries[WARM_START_KEY] = warm_start_entry(curves)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(entries, indent=2))
    variants = {s.method: s.variant for s in specs}
    held = (f"Held at an equal generation budget (--equal-tokens): {budget:.0f} tokens generated per run, the "
            "smallest run's total; each run counts only its steps within it (`steps`), pass@k is its last eval "
            f"among them{PASSK_NOT_HELD if curves is not None else ''}.\n\n" if budget is not None else "")
    note = passk_markdown(curves) if curves is not None else ""
    table = held + summary_markdown(results, base, note) + "\n\n" + "\n".join(f"- `{name}`: {describe(v)}"
                                                                    for name, v in variants.items())
    (out_dir / "summary.md").write_text(table + "\n")
    return table


def compare(config: str | None, overrides: list[str], methods: list[str], seeds: int, out_dir: str | Path | None = None,
            jobs: int = 1, methods_dir: str | Path | None = None, baseline: str | None = None,
            equal_tokens: bool = False, log: Callable[[str], None] = print, pool_law: bool = False,
            ks: list[int] | None = None, eval_problems: int = 128) -> Path:
    """Run methods x seeds (skipping finished runs), evaluate pass@k curves when `ks` is given, then write
    summary.json / summary.md (and a report).

    Everything is checked before anything is trained or written: the counts, the method names, every run's
    config, and that no run directory holds a run with another config (ConfigError, one line).

    Args:
        config: base YAML config, or None for the defaults (the CPU demo).
        overrides: `a.b=c` overrides applied to every run.
        methods: method names: variants or policy-loss registry keys.
        seeds: runs per method (>= 1).
        out_dir: the comparison's directory; None gives runs/compare_<config name>_<base config hash>.
        jobs: runs in parallel (>= 1).
        methods_dir: a directory of user variants (win over the packaged ones), or None.
        baseline: the method the summary compares the others with; None: ppo_clip if among `methods`, else the
            first.
        equal_tokens: summarise every run at the smallest run's total of tokens generated (write_summary).
        log: where progress lines go.
        pool_law: the report fits R = -a exp(H) + b once over the runs' pooled points (they share model and task)
            instead of once per run.
        ks: the k grid of pass@k curves (ascending); None: no curves. With it, the warm start and every finished
            run's final model are evaluated after training (evaluate_curves: cached, one at a time), the summary
            gets pass@kmax and crossover_k, and the report plots the curves against the warm start.
        eval_problems: eval problems per curve (with `ks`).

    Returns:
        The output directory.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    check_methods(methods)
    check_ks(ks, eval_problems)
    baseline = choose_baseline(methods, baseline)
    user_dir = Path(methods_dir) if methods_dir is not None else None
    if user_dir is not None and not user_dir.is_dir():
        raise ConfigError(f"--methods-dir '{user_dir}' is not a directory")
    base_cfg = load_config(config, overrides)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(config, base_cfg)
    check_out_dir(out_dir)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    specs = plan_runs(to_dict(base_cfg), methods, seeds, out_dir, user_dir, threads)
    for spec in specs:
        check_run_dir(spec)
    for name in methods:
        log(f"compare: {name} = {describe(next(s.variant for s in specs if s.method == name))}")
    warm_starts = {s.warm_start.model_dir: s.warm_start for s in specs if s.warm_start is not None}
    for ws in warm_starts.values():
        if not (ws.model_dir / COMPLETE).is_file():
            train_warm_start(ws, log)
    todo = [s for s in specs if not is_finished(s)]
    log(f"compare: {len(specs)} runs ({len(specs) - len(todo)} already finished), {jobs} at a time, in {out_dir}")
    failures = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for i, (spec, code, err) in enumerate(pool.map(run_one, todo), 1):
            status = "ok" if code == 0 else f"FAILED (exit {code})"
            log(f"[{i}/{len(todo)}] {spec.method} seed {spec.seed}: {status} ({time.perf_counter() - t0:.0f} s elapsed)")
            if code != 0:
                failures.append(f"{spec.method} seed {spec.seed}: {err.strip().splitlines()[-1] if err.strip() else code}")
    curves = evaluate_curves(specs, ks, eval_problems, log) if ks else None
    table = write_summary(specs, out_dir, baseline, equal_tokens, curves)
    log(table)
    try:
        from entropy_rl.report import write_report
    except ImportError:
        pass
    else:
        write_report([s.run_dir for s in specs], out_dir / "report", labels=[f"{s.method}/seed{s.seed}" for s in specs],
                     summary_md=table, pool_law=pool_law, base_dirs=curves.base_dirs() if curves else None)
        log(f"report: {out_dir / 'report' / 'report.html'}")
    if failures:
        raise RuntimeError("some runs failed:\n  " + "\n  ".join(failures))
    return out_dir
