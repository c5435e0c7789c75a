"""pass@k curves: the k grid of `entropy-rl eval --k`, the result files it writes, and the crossover k.

`entropy-rl eval` writes one JSON result per evaluation into an `eval/` folder beside the model it scored
(`<run>/eval/passk_<key>.json`, see `entropy_rl.train.evaluate.result_home`). The file is keyed by the sha256 of
its `settings` (the model's weights by content, task, problems, samples, seed, sampling, the k grid), so a cached
result is reused only when every setting matches. Reading never raises on a bad file: `load_results` skips it.

The crossover k answers "does the model RL started from overtake the trained one at large k?" (Yue et al.
2025, arXiv:2504.13837: RLVR raises pass@1 but can narrow pass@k at large k).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RESULT_FORMAT", "RESULT_VERSION", "EVAL_DIR", "parse_ks", "settings_key", "result_path", "load_results",
           "comparable", "curve", "crossover_k", "describe_crossover", "role_of", "run_result", "warm_start_results",
           "matching_base"]

RESULT_FORMAT = "entropy-rl pass@k"
RESULT_VERSION = 1  # bump when the sampling or the estimator changes what a stored result means
EVAL_DIR = "eval"  # <run>/eval/: the toolkit's entry for eval results (train/rundir.py ENTRIES)
PREFIX = "passk_"
KEY_CHARS = 16  # hex digits of the settings' sha256 in the file name
MAX_K = 2**20  # the largest k `--k` accepts (eval sequences are capped the same way in the config)
# What `comparable` lets differ: the model, and the k grid and samples per problem (pass@k is estimated without
# bias from any n >= k, so curves of different n share their common k); everything else must match.
IGNORED = frozenset({"model_sha256", "ks", "samples"})


def parse_ks(text: str) -> list[int]:
    """The k grid of `--k`: comma-separated integers >= 1, strictly ascending; `...` between two values fills in
    doublings of the value before it ("1,2,4,...,256" -> 1, 2, 4, 8, 16, 32, 64, 128, 256; "1,...,100" ends
    1, ..., 64, 100).

    Raises:
        ValueError: a part that is not an integer, k < 1 or > MAX_K, values not ascending, `...` first or last.
    """
    parts = [p.strip() for p in text.split(",")]
    ks: list[int] = []
    fill = False
    for i, part in enumerate(parts):
        if part == "...":
            if not ks or i == len(parts) - 1 or fill:
                raise ValueError(f"'...' must stand between two values, e.g. 1,2,4,...,256; got '{text[:60]}'")
            fill = True
            continue
        try:
            k = int(part) if len(part) <= 12 else None
        except ValueError:
            k = None
        if k is None or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer in [1, {MAX_K}], got '{part[:20]}'")
        if ks and k <= ks[-1]:
            raise ValueError(f"k values must be strictly ascending, got {ks[-1]} then {k}")
        if fill:
            while ks[-1] * 2 < k:
                ks.append(ks[-1] * 2)
            fill = False
        ks.append(k)
    return ks


def settings_key(settings: Mapping[str, Any]) -> str:
    """The first KEY_CHARS hex digits of the sha256 of `settings` as canonical JSON (sorted keys)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def result_path(folder: Path, settings: Mapping[str, Any]) -> Path:
    """Where the result of `settings` lives in an eval folder: folder/passk_<settings_key>.json."""
    return Path(folder) / f"{PREFIX}{settings_key(settings)}.json"


def _valid(doc: Any, name: str) -> bool:
    """A result file the toolkit wrote: format, version, settings whose key is the file name, a finite curve."""
    if not (isinstance(doc, dict) and doc.get("format") == RESULT_FORMAT and doc.get("version") == RESULT_VERSION
            and isinstance(doc.get("settings"), dict) and isinstance(doc.get("pass_at_k"), dict)):
        return False
    if name != f"{PREFIX}{settings_key(doc['settings'])}.json":
        return False
    try:
        return all(int(k) >= 1 and math.isfinite(float(v)) for k, v in doc["pass_at_k"].items())
    except (TypeError, ValueError):
        return False


def load_results(folder: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Every valid result in folder/passk_*.json, oldest first (by its recorded `created` time, then name).

    A file that is unreadable, not a result, or whose name is not its settings' key is skipped and, when
    `problems` is given, noted there.
    """
    folder = Path(folder)
    out = []
    for f in sorted(folder.glob(f"{PREFIX}*.json")) if folder.is_dir() else []:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            doc, why = None, type(e).__name__
        else:
            why = "not an entropy-rl pass@k result, or renamed"
        if doc is None or not _valid(doc, f.name):
            if problems is not None:
                problems.append(f"{f}: skipped ({why})")
            continue
        doc["path"] = str(f)
        out.append(doc)
    return sorted(out, key=lambda d: (str(d.get("created", "")), d["path"]))


def comparable(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two results evaluated the same way (settings equal except those in IGNORED: the model, the k grid,
    the samples per problem): only then do their curves share an x axis and a crossover mean something."""
    sa, sb = a["settings"], b["settings"]
    return {k: v for k, v in sa.items() if k not in IGNORED} == {k: v for k, v in sb.items() if k not in IGNORED}


def curve(result: Mapping[str, Any]) -> dict[int, float]:
    """{k: pass@k} of a result, ascending k."""
    return dict(sorted((int(k), float(v)) for k, v in result["pass_at_k"].items()))


def crossover_k(base: Mapping[int, float], run: Mapping[int, float]) -> int | None:
    """The smallest k (of those both curves have) at which the base model's pass@k >= the run's, or None.

    Args:
        base: {k: pass@k} of the model RL started from (probability).
        run: {k: pass@k} of the trained model, same problems and sampling (probability).

    Returns:
        The crossover k; None when the run stays strictly above the base at every shared k (or none is shared).
        k = 1 means the base is already as good at pass@1.
    """
    for k in sorted(set(base) & set(run)):
        if base[k] >= run[k]:
            return k
    return None


def describe_crossover(base: Mapping[int, float], run: Mapping[int, float]) -> str:
    """One line: the crossover k with both values there, or that the run stays above the base up to the largest k."""
    shared = sorted(set(base) & set(run))
    if not shared:
        return "no k in common"
    k = crossover_k(base, run)
    if k is None:
        kmax = shared[-1]
        return f"no crossover: the run stays above the base up to k = {kmax} ({run[kmax]:.3f} vs {base[kmax]:.3f})"
    return f"crossover at k = {k}: base pass@{k} {base[k]:.3f} >= run {run[k]:.3f}"


def role_of(result: Mapping[str, Any]) -> str:
    """What the result's model was: "warm start", "checkpoint" (with a step) or "model"."""
    return str(result.get("role", "model"))


def run_result(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A run's own curve: the newest result of its newest evaluated checkpoint (None when there is none)."""
    ckpts = [r for r in results if role_of(r) == "checkpoint" and isinstance(r.get("step"), int)]
    if not ckpts:
        return None
    top = max(r["step"] for r in ckpts)
    return [r for r in ckpts if r["step"] == top][-1]


def warm_start_results(run_dir: Path, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Results of the model a run started from: RUN/eval results of role "warm start" (its own sft/model) and
    every result in the eval folder of its `model.path` (an SFT output directory, e.g. compare's shared warm start).
    """
    found = [r for r in load_results(Path(run_dir) / EVAL_DIR) if role_of(r) == "warm start"]
    model = config.get("model") if isinstance(config, Mapping) else None
    path = model.get("path") if isinstance(model, Mapping) else None
    if isinstance(path, str) and path:
        found += load_results(Path(path) / EVAL_DIR)
    return found


def matching_base(run: Mapping[str, Any], bases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest base result evaluated the same way as `run` (see `comparable`), or None."""
    same = [b for b in bases if comparable(b, run)]
    return same[-1] if same else None
