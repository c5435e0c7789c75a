"""`entropy-rl compare`: run several methods x seeds on one task, model and budget, then summarise.

Every run shares one SFT warm start (done once, seed = the base config's seed) so that methods differ only in
the RL phase; seeds vary the RL phase (sampling, data order, selection). A method name resolves to
`<methods dir>/<name>.yaml` (a partial config merged over the base config: method, params, and any setting
the method needs) or, failing that, to a registry key with default parameters. Runs are subprocesses
(`entropy-rl train`), so one failing run does not end the comparison; finished runs are skipped and
interrupted ones resumed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.train.checkpoint import COMPLETE, latest_checkpoint
from entropy_rl.train.config import ConfigError, apply_overrides, from_dict, Config, save_config, to_dict, validate

SUMMARY_KEYS = ("final_entropy", "final_reward", "pass@1", "pass@8", "steps_to_half_entropy", "wall_s")


@dataclass(frozen=True)
class RunSpec:
    """One (method, seed) run: its resolved config and directory."""

    method: str
    seed: int
    cfg: Config
    run_dir: Path


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values of `extra` win (dict values merge key by key)."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def method_overrides(name: str, methods_dir: Path) -> dict[str, Any]:
    """The partial config of a method variant: `<methods_dir>/<name>.yaml`, else algorithm.method=<name>."""
    path = methods_dir / f"{name}.yaml"
    if path.is_file():
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        return data
    return {"algorithm": {"method": name}}


def plan_runs(base: dict[str, Any], methods: list[str], seeds: int, out_dir: Path, methods_dir: Path,
              sft_model: Path | None) -> list[RunSpec]:
    """Resolve and validate every run's config before anything is trained (a typo fails in a second)."""
    specs = []
    for name in methods:
        for k in range(seeds):
            data = deep_merge(base, method_overrides(name, methods_dir))
            data = deep_merge(data, {"train": {"seed": base.get("train", {}).get("seed", 0) + k}})
            if sft_model is not None:
                data = deep_merge(data, {"model": {"path": str(sft_model)}, "sft": {"enabled": False}})
            try:
                cfg = from_dict(Config, data)
                validate(cfg)
            except ConfigError as e:
                raise ConfigError(f"method '{name}': {e}") from None
            specs.append(RunSpec(name, cfg.train.seed, cfg, out_dir / name / f"seed{cfg.train.seed}"))
    return specs


def is_finished(spec: RunSpec) -> bool:
    """A run is finished when its final-step checkpoint exists."""
    ckpt = latest_checkpoint(spec.run_dir)
    return ckpt is not None and ckpt.name == f"step_{spec.cfg.train.steps:06d}"


def run_one(spec: RunSpec, threads: int) -> tuple[RunSpec, int, str]:
    """Train one run in a subprocess (resuming if it has started). Returns (spec, exit code, stderr tail)."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = spec.run_dir.parent / f"seed{spec.seed}.yaml"
    cfg = spec.cfg
    if threads:  # part of the saved config, so a resume uses the same thread count (bit-reproducible)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    save_config(cfg, cfg_file)
    if (spec.run_dir / "config.yaml").is_file():
        cmd = [sys.executable, "-m", "entropy_rl", "train", "--resume", str(spec.run_dir), "--no-progress"]
    else:
        cmd = [sys.executable, "-m", "entropy_rl", "train", str(cfg_file), "--run-dir", str(spec.run_dir), "--no-progress"]
    with open(spec.run_dir.parent / f"seed{spec.seed}.log", "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.PIPE, text=True)
    return spec, proc.returncode, proc.stderr[-2000:]


def summarize_run(run_dir: Path) -> dict[str, float | None]:
    """Final entropy / reward (mean of the last 10 steps), last eval pass@1 / pass@8, steps until the entropy
    first falls to half its first-5-step mean, and the summed step wall time."""
    logged = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    rows = [r for r in logged if r.get("step", 0) >= 1]  # RL steps; step 0 is the warm start's eval
    if not rows:  # the run failed before its first step
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
    }


def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample std of the non-None values, and how many there were."""
    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None, 0
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)


def summary_table(results: dict[str, list[dict[str, float | None]]]) -> str:
    """Markdown table: one row per method, mean +- std over seeds of each summary key."""
    head = "| method | seeds | " + " | ".join(SUMMARY_KEYS) + " |"
    lines = [head, "|" + "---|" * (len(SUMMARY_KEYS) + 2)]
    for method, runs in results.items():
        cells = []
        for key in SUMMARY_KEYS:
            mean, std, n = mean_std([r[key] for r in runs])
            if mean is None:
                cells.append("-" if key != "steps_to_half_entropy" else f"never ({len(runs)})")
            else:
                fmt = ".0f" if key in ("wall_s", "steps_to_half_entropy") else ".3f"
                suffix = f" ({n}/{len(runs)})" if key == "steps_to_half_entropy" and n < len(runs) else ""
                cells.append(f"{mean:{fmt}} ± {std:{fmt}}{suffix}")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(config: str | None, overrides: list[str], methods: list[str], seeds: int, out_dir: str | Path,
            jobs: int = 1, methods_dir: str | Path | None = None, log=print) -> Path:
    """Run methods x seeds (skipping finished runs), then write summary.json / summary.md (and a report)."""
    out_dir = Path(out_dir)
    base: dict[str, Any] = {}
    if config is not None:
        base = yaml.safe_load(Path(config).read_text()) or {}
    base = apply_overrides(base, overrides)
    methods_dir = Path(methods_dir) if methods_dir else (Path(config).parent / "methods" if config else Path("configs/methods"))
    base_cfg = from_dict(Config, base)
    validate(base_cfg)
    sft_model = None
    if base_cfg.sft.enabled and not base_cfg.model.path:
        sft_model = out_dir / "sft_model"
        if not (sft_model / COMPLETE).is_file():
            log(f"compare: SFT warm start shared by every run -> {sft_model}")
            cfg_file = out_dir / "sft.yaml"
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(base_cfg, cfg_file)
            subprocess.run([sys.executable, "-m", "entropy_rl", "sft", str(cfg_file), "--out", str(sft_model)], check=True)
            (sft_model / COMPLETE).write_text("ok")
    specs = plan_runs(base, methods, seeds, out_dir, methods_dir, sft_model)
    todo = [s for s in specs if not is_finished(s)]
    log(f"compare: {len(specs)} runs ({len(specs) - len(todo)} already finished), {jobs} at a time, in {out_dir}")
    threads = max(1, 2 // jobs) if jobs > 1 else 0
    failures = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for i, (spec, code, err) in enumerate(pool.map(lambda s: run_one(s, threads), todo), 1):
            status = "ok" if code == 0 else f"FAILED (exit {code})"
            log(f"[{i}/{len(todo)}] {spec.method} seed {spec.seed}: {status} ({time.perf_counter() - t0:.0f} s elapsed)")
            if code != 0:
                failures.append(f"{spec.method} seed {spec.seed}: {err.strip().splitlines()[-1] if err.strip() else code}")
    results: dict[str, list[dict[str, float | None]]] = {}
    for spec in specs:
        results.setdefault(spec.method, []).append(summarize_run(spec.run_dir))
    (out_dir / "summary.json").write_text(json.dumps(results, indent=2))
    table = summary_table(results)
    (out_dir / "summary.md").write_text(table + "\n")
    log(table)
    try:
        from entropy_rl.report import write_report
    except ImportError:
        pass
    else:
        write_report([s.run_dir for s in specs], out_dir / "report", labels=[f"{s.method}/seed{s.seed}" for s in specs],
                     summary_md=table)
        log(f"report: {out_dir / 'report' / 'report.html'}")
    if failures:
        raise RuntimeError("some runs failed:\n  " + "\n  ".join(failures))
    return out_dir
