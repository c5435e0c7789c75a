"""What a report reads from a run directory, and the numbers it derives from it.

A run directory holds `metrics.jsonl` (one row per step, keys defined in `entropy_rl.metrics.names`; with
evals, a first row `step: 0` holds only the eval of the warm start, before any RL update), `config.yaml` and,
in newer runs, `token_entropy/step_NNNNNN.json` ({"step": int, "entropy": [nats]}) for the first and last step
and `completions.jsonl` (sampled completions, fields in `COMPLETION_FIELDS`). Anything may be missing (an old
run, a run without the dynamics probe or evals): every helper here returns empty / None instead of raising,
and the page says what was skipped.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from entropy_rl.metrics.dynamics import fit_entropy_performance_law, law_fit_problems, pearson
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.report.external_verl import load_verl_run
from entropy_rl.report.trl_log import is_trl_run, load_trl_rows

__all__ = ["RunData", "load_run", "series", "paired", "pass_keys", "headline", "HEADLINE_COLUMNS",
           "CORR_KEYS", "window", "load_completions", "pass_story", "LawPoint", "LawFit", "law_points", "law_fits",
           "law_group"]

H, R = "entropy/token_mean", "reward/mean"
ACC = "eval/accuracy"  # the law's R: mean fraction of eval samples correct
D_ACTUAL = "dynamics/dH_actual"
# Signals compared with dH_actual by Pearson r: (metric key, short name).
CORR_KEYS: tuple[tuple[str, str], ...] = (
    ("dynamics/dH_pred", "dH_pred"),
    ("dynamics/dH_pred_lin", "dH_pred_lin"),
    ("dynamics/dH_identity", "dH_identity"),
    ("dynamics/cov_logp_adv", "cov"),
    ("dynamics/steer_omega", "steer_omega"),
)
_PASS_RE = re.compile(r"eval/pass@(\d+)\Z")


@dataclass
class RunData:
    """One run as the report sees it.

    Attributes:
        path: the run directory.
        label: the name shown in legends and tables.
        rows: metrics.jsonl records in file order (empty if the file is missing).
        config: config.yaml as a dict (empty if missing or unreadable).
        token_entropy: {step: per-token entropies in nats} from token_entropy/*.json.
        completions: completions.jsonl records that have every field of COMPLETION_FIELDS, in file order.
        problems: what could not be read, for the page.
    """

    path: Path
    label: str
    rows: list[dict[str, Any]]
    config: dict[str, Any]
    token_entropy: dict[int, list[float]] = field(default_factory=dict)
    completions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _finite(v: Any) -> bool:
    """Whether `v` is a real, finite number (bools excluded)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_run(run_dir: Path, label: str) -> RunData:
    """Read metrics.jsonl, config.yaml and token_entropy/*.json of one run; missing parts are noted, not raised.

    A TRL output directory (`report.trl_log.is_trl_run`) gives its trainer_state.json log history instead.
    """
    run_dir = Path(run_dir)
    if run_dir.suffix == ".jsonl" and run_dir.is_file():  # a verl run's file-logger JSONL (external_verl)
        return load_verl_run(run_dir, label)
    run = RunData(run_dir, label, [], {})
    if is_trl_run(run_dir):  # a TRL output directory: trainer_state.json mapped onto our keys
        run.rows, run.config, notes = load_trl_rows(run_dir)
        run.problems += notes
        return run
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        run.rows = sorted((r for r in read_jsonl(metrics) if _finite(r.get("step"))), key=lambda r: r["step"])
    else:
        run.problems.append(f"no metrics.jsonl in {run_dir}")
    cfg_file = run_dir / "config.yaml"
    if cfg_file.is_file():
        try:
            data = yaml.safe_load(cfg_file.read_text())
            run.config = data if isinstance(data, dict) else {}
        except yaml.YAMLError as e:
            run.problems.append(f"config.yaml unreadable: {e}")
    run.token_entropy = load_token_entropy(run_dir / "token_entropy", run.problems)
    run.completions = load_completions(run_dir / "completions.jsonl", run.problems)
    return run


# The type each completions.jsonl field (entropy_rl.metrics.names.COMPLETION_FIELDS) must have for the page to
# show the record (bool is not a number).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "step": (int,), "index": (int,), "group": (int,), "prompt": (str,), "completion": (str,),
    "reward": (int, float, str), "reason": (str,), "answer": (str, int, float, type(None)), "advantage": (int, float, str),
    "tokens": (list,), "entropy": (list,),
}


def _number_like(v: Any) -> bool:
    """A number, or one of the strings JSONL writers use for non-finite numbers."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or v in ("nan", "inf", "-inf")


def _valid_completion(r: Any) -> bool:
    """Whether a record has every field with the expected type (token text and entropies as lists of str / numbers)."""
    if not isinstance(r, dict):
        return False
    for key, types in _FIELD_TYPES.items():
        if key not in r or isinstance(r[key], bool) or not isinstance(r[key], types):
            return False
    return (_number_like(r["reward"]) and _number_like(r["advantage"]) and all(isinstance(t, str) for t in r["tokens"])
            and all(_number_like(h) for h in r["entropy"]))


def load_completions(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """Records of completions.jsonl (none if the file is missing); unreadable files and malformed records are
    noted in `problems` and skipped. Text stays text: "nan" in a completion is not turned into a float."""
    if not path.is_file():
        return []
    try:
        records = read_jsonl(path, decode_nonfinite=False)
    except (OSError, ValueError) as e:
        problems.append(f"{path.name} unreadable: {e}")
        return []
    good = [r for r in records if _valid_completion(r)]
    if len(good) < len(records):
        problems.append(f"{path.name}: {len(records) - len(good)} malformed records skipped")
    return good


def load_token_entropy(folder: Path, problems: list[str]) -> dict[int, list[float]]:
    """{step: finite entropies} from folder/step_*.json; unreadable files are noted in `problems`."""
    out: dict[int, list[float]] = {}
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("step_*.json")):
        try:
            data = json.loads(f.read_text())
            out[int(data["step"])] = [float(v) for v in data["entropy"] if _finite(v)]
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"{f.name} unreadable: {e}")
    return out


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that have a finite `key`."""
    pts = [(r["step"], r[key]) for r in rows if _finite(r.get(key))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def paired(rows: list[dict[str, Any]], kx: str, ky: str) -> tuple[list[float], list[float]]:
    """(x, y) over the rows where both keys are finite (e.g. only the probed steps for dynamics keys)."""
    pts = [(float(r[kx]), float(r[ky])) for r in rows if _finite(r.get(kx)) and _finite(r.get(ky))]
    return [p[0] for p in pts], [p[1] for p in pts]


def pass_keys(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """Sorted (k, key) of every eval/pass@k key in the rows."""
    ks = {int(m.group(1)): key for r in rows for key in r if (m := _PASS_RE.match(key))}
    return sorted(ks.items())


def pass_story(rows: list[dict[str, Any]]) -> str | None:
    """eval/pass@k of the largest logged k at the first eval (step 0 = the warm start), its best and the last.

    Args:
        rows: metrics.jsonl records.

    Returns:
        e.g. "pass@8 0.770 at step 0 (warm start), best 0.770 at step 0, last 0.531 at step 300", or None when
        no finite pass@k was logged.
    """
    ks = pass_keys(rows)
    if not ks:
        return None
    key = ks[-1][1]
    pts = sorted((r["step"], float(r[key])) for r in rows if _finite(r.get(key)) and _finite(r.get("step")))
    if not pts:
        return None
    (s0, v0), (s1, v1) = pts[0], pts[-1]
    sb, vb = max(pts, key=lambda p: p[1])  # the earliest step of the best value
    return (f"{key.split('/', 1)[1]} {v0:.3f} at step {s0}{' (warm start)' if s0 == 0 else ''}, "
            f"best {vb:.3f} at step {sb}, last {v1:.3f} at step {s1}")


def window(n_rows: int) -> int:
    """Steps averaged for 'first' and 'last': 10, or half the run if shorter (so the two do not overlap)."""
    return max(1, min(10, n_rows // 2))


@dataclass(frozen=True)
class LawPoint:
    """One (entropy, eval accuracy) point of the law fit: the policy evaluated at `step` of run `run`."""

    h: float  # entropy/token_mean of that policy (nats)
    r: float  # eval/accuracy (fraction correct)
    step: int
    run: str


def law_points(run: RunData) -> list[LawPoint]:
    """(H, eval/accuracy) of every evaluated policy of a run, the pairs Cui et al. fit R = -a exp(H) + b to.

    The eval at step s runs after step s's update; the entropy of those same parameters is the pre-update
    `entropy/token_mean` logged at step s + 1 (for the step-0 eval of the warm start: step 1's). The last eval,
    with no step after it, takes its own step's entropy (one update older). Evals without either are skipped.
    """
    entropy_at = {r["step"]: float(r[H]) for r in run.rows if _finite(r.get(H))}
    points = []
    for r in run.rows:
        h = entropy_at.get(r["step"] + 1, entropy_at.get(r["step"]))
        if _finite(r.get(ACC)) and h is not None:
            points.append(LawPoint(h, float(r[ACC]), int(r["step"]), run.label))
    return points


@dataclass
class LawFit:
    """A fit of R = -a exp(H) + b to the points of one run, or of several pooled (`law_fits(..., pool=True)`).

    Attributes:
        name: the run's label, or the pooled group's name.
        runs: labels of the runs whose points were fitted.
        points: the fitted points.
        fit: fit_entropy_performance_law's dict (a, b, r2, ceiling and its 95% CI, ...), or None if undetermined.
        problems: why the fit means nothing (law_fit_problems); [] when it may be read.
    """

    name: str
    runs: list[str]
    points: list[LawPoint]
    fit: dict[str, float] | None
    problems: list[str]


def fit_points(name: str, runs: list[str], points: list[LawPoint]) -> LawFit:
    """LawFit of the given points."""
    fit = fit_entropy_performance_law([p.h for p in points], [p.r for p in points])
    return LawFit(name, runs, points, fit, law_fit_problems(fit))


def law_group(config: dict[str, Any]) -> str:
    """What runs must share to be pooled: the model (its path, else the tiny model's shape) and the task."""
    model, task = config.get("model"), config.get("task")
    if not isinstance(model, dict) or not isinstance(task, dict) or "name" not in task:
        return "model and task not recorded"
    if model.get("path"):
        what = f"model {Path(str(model['path'])).name}"
    else:
        shape = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
        what = "tiny model " + "/".join(str(model.get(k, "?")) for k in shape)
    params = json.dumps(task.get("params") or {}, sort_keys=True)
    return f"{what}, task {task['name']}" + ("" if params == "{}" else f" {params}")


def law_fits(runs: list[RunData], pool: bool = False) -> list[LawFit]:
    """One fit per run, or with `pool` one per group of runs with the same model and task (`law_group`), as the
    paper pools runs of different algorithms on one model. Runs without any point are left out."""
    have = [(run, law_points(run)) for run in runs]
    have = [(run, pts) for run, pts in have if pts]
    if not pool:
        return [fit_points(run.label, [run.label], pts) for run, pts in have]
    groups: dict[str, list[tuple[RunData, list[LawPoint]]]] = {}
    for run, pts in have:
        groups.setdefault(law_group(run.config), []).append((run, pts))
    return [fit_points(f"pooled: {name}", [run.label for run, _ in members], [p for _, pts in members for p in pts])
            for name, members in groups.items()]


def correlations(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Pearson r of each CORR_KEYS signal with dH_actual over the steps that have both."""
    return {name: pearson(*paired(rows, key, D_ACTUAL)) for key, name in CORR_KEYS}


# (key, plain name, unit, definition) of each headline column; the table shows "plain name (unit)" over the key.
HEADLINE_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("steps", "RL steps", "", "RL steps logged (the step-0 eval row not counted)"),
    ("n", "steps averaged", "", "steps averaged as first / last (10, or half a shorter run)"),
    ("H_first", "entropy at start", "nats", "mean entropy/token_mean over the first n steps"),
    ("H_last", "entropy at end", "nats", "mean entropy/token_mean over the last n steps"),
    ("H_drop_pct", "entropy drop", "%", "100 (H_first - H_last) / H_first"),
    ("R_first", "reward at start", "reward", "mean reward/mean over the first n steps (rollout batches)"),
    ("R_last", "reward at end", "reward", "mean reward/mean over the last n steps (rollout batches)"),
    ("pass@1_start", "pass@1, warm start", "prob.", "eval/pass@1 at step 0: the warm start, before any RL update"),
    ("pass@1", "pass@1, last eval", "prob.", "eval/pass@1 at the last eval"),
    ("pass@8_start", "pass@8, warm start", "prob.", "eval/pass@8 at step 0: the warm start, before any RL update"),
    ("pass@8", "pass@8, last eval", "prob.", "eval/pass@8 at the last eval"),
    ("r(dH_pred)", "r, gradient prediction", "Pearson", "Pearson r of dynamics/dH_pred (grad H . dtheta) with "
     "dynamics/dH_actual over probed steps"),
    ("r(dH_pred_lin)", "r, linearised prediction", "Pearson", "Pearson r of dynamics/dH_pred_lin with "
     "dynamics/dH_actual over probed steps"),
    ("r(dH_identity)", "r, covariance identity", "Pearson", "Pearson r of dynamics/dH_identity with "
     "dynamics/dH_actual"),
    ("r(cov)", "r, Cov(log p, A)", "Pearson", "Pearson r of dynamics/cov_logp_adv with dH_actual (negative "
     "expected: cov > 0 predicts a fall)"),
    ("r(steer_omega)", "r, STEER omega", "Pearson", "Pearson r of dynamics/steer_omega with dH_actual (positive "
     "expected)"),
    ("law_R2", "law fit R²", "", "R^2 of R = -a exp(H) + b fitted to (entropy, eval/accuracy) of the run's evaluated "
     "policies (law_points)"),
    ("law_ceiling", "law ceiling b − a", "accuracy", "predicted accuracy at H = 0 of that fit; '-' when the fit is "
     "flagged as meaningless (the law section says why)"),
    ("wall_s", "wall time", "s", "sum of timing/step_s"),
)


def headline(run: RunData) -> dict[str, float | int | None]:
    """The headline numbers of one run (keys = HEADLINE_COLUMNS names), all computed from its logged rows."""
    rows = run.rows
    out: dict[str, float | int | None] = {name: None for name, *_ in HEADLINE_COLUMNS}
    out["steps"] = sum(1 for r in rows if r["step"] >= 1)
    _, hs = series(rows, H)
    _, rs = series(rows, R)
    n = window(len(hs))
    out["n"] = n if hs else None
    if hs:
        out["H_first"], out["H_last"] = statistics.fmean(hs[:n]), statistics.fmean(hs[-n:])
        if out["H_first"] > 0:
            out["H_drop_pct"] = 100.0 * (out["H_first"] - out["H_last"]) / out["H_first"]
    if rs:
        m = window(len(rs))
        out["R_first"], out["R_last"] = statistics.fmean(rs[:m]), statistics.fmean(rs[-m:])
    evals = [r for r in rows if any(_PASS_RE.match(k) for k in r)]
    if evals:
        out["pass@1"] = evals[-1].get("eval/pass@1")
        out["pass@8"] = evals[-1].get("eval/pass@8")
        if evals[0]["step"] == 0:
            out["pass@1_start"] = evals[0].get("eval/pass@1")
            out["pass@8_start"] = evals[0].get("eval/pass@8")
    for name, r in correlations(rows).items():
        out[f"r({name})"] = r
    law = fit_points(run.label, [run.label], law_points(run))
    if law.fit is not None:
        out["law_R2"] = law.fit["r2"]
        out["law_ceiling"] = None if law.problems else law.fit["ceiling"]
    _, ts = series(rows, "timing/step_s")
    out["wall_s"] = sum(ts) if ts else None
    return out
