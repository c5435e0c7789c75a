"""`entropy-rl compare --k`: pass@k curves of the warm start and of every finished run, cached like `entropy-rl eval`,
in the summary (pass@kmax, crossover_k with "never", the warm start's line) and in the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from entropy_rl.cli import build_parser, main
from entropy_rl.metrics import passk
from entropy_rl.tasks import make_task
from entropy_rl.train import compare as compare_mod
from entropy_rl.train.compare import (PasskCurves, compare, passk_markdown, passk_summary, plan_runs, summary_stats,
                                      summary_table)
from entropy_rl.train.config import ConfigError, load_config, to_dict
from entropy_rl.train.evaluate import PasskEvalPlan, PasskEvalResult
from entropy_rl.train.loop import train
from entropy_rl.train.rundir import write_marker

from tiny_setup import TINY

METHODS = ["ppo_clip", "clip_higher"]
KS = [1, 2, 4]


def finished_runs(out: Path, warm: Path) -> list[str]:
    """Train the 2 methods x 1 seed that `compare(None, overrides, METHODS, 1, out)` plans (2 RL steps each, in
    this process), so compare finds them finished and only evaluates; returns the overrides."""
    overrides = TINY + [f"model.path={warm}", "train.steps=2", "optim.lr=0.05"]
    for spec in plan_runs(to_dict(load_config(None, overrides)), METHODS, 1, out, None):
        train(spec.cfg, spec.run_dir, progress=False)
    return overrides


@pytest.mark.parametrize("marked", [False, True], ids=["model_dir", "sft_output"])
def test_compare_k_evaluates_every_run_and_the_warm_start_once(tmp_path: Path, warm_model_dir: Path, capsys,
                                                               marked: bool) -> None:
    warm = tmp_path / "warm"  # a plain model directory (results go to the first run's eval/) or an `sft --out` one
    shutil.copytree(warm_model_dir, warm)
    if marked:
        write_marker(warm, "sft")
    out = tmp_path / "out"
    overrides = finished_runs(out, warm)
    lines: list[str] = []
    compare(None, overrides, METHODS, 1, out, log=lines.append, ks=KS, eval_problems=4)
    progress = [line for line in lines if line.startswith("[")]
    assert [p.split(":")[0] for p in progress] == ["[1/3] warm start", "[2/3] ppo_clip seed 0", "[3/3] clip_higher seed 0"]
    assert not any(p.endswith("(cached)") for p in progress)

    ws_folder = warm / "eval" if marked else out / "ppo_clip" / "seed0" / "eval"
    [ws] = [r for r in passk.load_results(ws_folder) if r["role"] == "warm start"]
    assert ws["settings"]["ks"] == KS and ws["settings"]["problems"] == 4 and ws["settings"]["samples"] == 4
    summary = json.loads((out / "summary.json").read_text())
    md = (out / "summary.md").read_text()
    base = passk.curve(ws)
    for method in METHODS:
        run_dir = out / method / "seed0"
        own = passk.run_result(passk.load_results(run_dir / "eval"))
        assert own["step"] == 2 and passk.comparable(own, ws)  # the run's final model, evaluated the same way
        [entry] = summary[method]["runs"]
        assert entry["pass@kmax"] == own["pass_at_k"]["4"]
        assert entry["crossover_k"] == passk.crossover_k(base, passk.curve(own))  # an int, or None: "never"
        assert entry["passk"] == {"result": own["path"], "curve": own["pass_at_k"], "warm_start_result": ws["path"]}
        assert summary[method]["stats"]["pass@kmax"]["mean"] == own["pass_at_k"]["4"]
        cell = "never (1)" if entry["crossover_k"] is None else f"{entry['crossover_k']} ± n/a, CI n/a"
        assert f"| {method} | 1 |" in md and cell in md.split(f"| {method} | 1 |")[1].splitlines()[0]
    stats = summary["_warm_start"]["stats"]
    assert stats["pass@1"]["mean"] == ws["pass_at_k"]["1"] and stats["pass@kmax"]["mean"] == ws["pass_at_k"]["4"]
    assert summary["_warm_start"]["evaluations"] == [{"model_dir": str(warm), "result": ws["path"],
                                                      "curve": ws["pass_at_k"]}]
    assert "pass@k at the largest k, prob. (pass@kmax) | k where the warm start catches up (crossover_k) |" in md
    assert (f"Warm start (`{warm}`; 1 evaluation): pass@1 {ws['pass_at_k']['1']:.3f} ± n/a, CI n/a, "
            f"pass@4 (pass@kmax) {ws['pass_at_k']['4']:.3f} ± n/a, CI n/a.") in md
    html = (out / "report" / "report.html").read_text()
    assert (out / "report" / "fig_passk_curves.png").is_file()
    assert "no matching warm-start result" not in html and "no warm-start result evaluated the same way" not in html

    files = {p: p.stat().st_mtime_ns for p in [*out.rglob("passk_*.json"), *warm.rglob("passk_*.json")]}
    assert len(files) == 3
    lines.clear()
    compare(None, overrides, METHODS, 1, out, log=lines.append, ks=KS, eval_problems=4)  # samples nothing
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 3 and all(p.endswith("(cached)") for p in progress)
    assert {p: p.stat().st_mtime_ns for p in [*out.rglob("passk_*.json"), *warm.rglob("passk_*.json")]} == files
    assert json.loads((out / "summary.json").read_text()) == summary
    capsys.readouterr()
    assert main(["eval", str(out / "clip_higher" / "seed0"), "--k", "1,2,4", "--problems", "4"]) == 0
    assert "reusing" in capsys.readouterr().err  # `entropy-rl eval` with its defaults shares compare's results


def plan_of(task, ks: list[int], model: str) -> PasskEvalPlan:
    """A planned evaluation on the arithmetic task with the k grid `ks` (settings trimmed to what the test reads)."""
    return PasskEvalPlan(Path(model), None, "model", None, None, {"ks": ks}, task, False, None)


def result_of(plan: PasskEvalPlan, curve: dict[int, float], base: dict[int, float] | None = None) -> PasskEvalResult:
    return PasskEvalResult(plan, {f"eval/pass@{k}": v for k, v in curve.items()}, Path(f"/r/{plan.model_dir}.json"),
                           False, base)


def test_crossover_and_never_on_synthetic_curves() -> None:
    task = make_task("arithmetic")
    base = {1: 0.20, 2: 0.35, 4: 0.50, 8: 0.70}
    # run a: above the base at 1, 2, 4 (0.40 > 0.20, 0.50 > 0.35, 0.55 > 0.50); at 8 the base's 0.70 >= 0.62 -> 8
    a = result_of(plan_of(task, [1, 2, 4, 8], "a"), {1: 0.40, 2: 0.50, 4: 0.55, 8: 0.62}, base)
    # run b: above everywhere (0.75 > 0.70 at k = 8): the warm start never catches up within the grid -> None
    b = result_of(plan_of(task, [1, 2, 4, 8], "b"), {1: 0.45, 2: 0.60, 4: 0.70, 8: 0.75}, base)
    # run c: equal at k = 2 (0.35 = 0.35) counts as caught up -> 2
    c = result_of(plan_of(task, [1, 2, 4, 8], "c"), {1: 0.30, 2: 0.35, 4: 0.60, 8: 0.80}, base)
    assert (a.crossover, b.crossover, c.crossover) == (8, None, 2)
    assert result_of(plan_of(task, [1], "d"), {1: 0.9}).crossover is None  # no base: no crossover either
    ws = result_of(plan_of(task, [1, 2, 4, 8], "ws"), base)
    curves = PasskCurves([1, 2, 4, 8], 16, 0, {Path("a"): a, Path("b"): b, Path("c"): c},
                         {Path("a"): ws, Path("b"): ws, Path("c"): ws})
    assert passk_summary(curves, Path("a")) == {"pass@kmax": 0.62, "crossover_k": 8}
    assert passk_summary(curves, Path("b")) == {"pass@kmax": 0.75, "crossover_k": None}
    assert passk_summary(curves, Path("failed")) == {"pass@kmax": None, "crossover_k": None}
    assert passk_summary(PasskCurves([1], 16, 0, {}, {}), Path("a")) == {"pass@kmax": None}  # no warm start: no column

    def runs(*names: str) -> list[dict]:
        return [{**{k: None for k in compare_mod.SUMMARY_KEYS}, **passk_summary(curves, Path(n))} for n in names]

    table = summary_table({"x": runs("a", "c"), "y": runs("b"), "z": runs("a", "b")})
    assert "| 0.710 ± 0.127, CI n/a | 5 ± 4, CI n/a |" in table  # x: pass@8 (0.62 + 0.80) / 2, k (8 + 2) / 2
    assert "| 0.750 ± n/a, CI n/a | never (1) |" in table  # y: the warm start never caught up
    assert "| 0.685 ± 0.092, CI n/a | 8 ± n/a, CI n/a (1/2) |" in table  # z: one of two runs never crossed
    js = summary_stats({"x": runs("a", "c"), "y": runs("b")}, "x")
    assert js["y"]["stats"]["crossover_k"] == {"n": 0, "mean": None, "std": None, "ci95": None, "iqm": None}
    assert js["y"]["vs_baseline"]["metrics"]["crossover_k"]["verdict"] == "n/a: no values"
    md = passk_markdown(curves)
    assert "`entropy-rl eval RUN --k 1,2,4,8 --problems 16` (seed 0, 8 samples per problem" in md
    assert "pass@kmax is pass@8." in md and '"never" when the run stays above it up to k = 8' in md
    assert "Warm start (`ws`; 1 evaluation): pass@1 0.200 ± n/a, CI n/a, pass@8 (pass@kmax) 0.700 ± n/a, CI n/a." in md


def test_cli_parses_k_and_eval_problems() -> None:
    args = build_parser().parse_args(["compare", "--methods", "ppo_clip", "--k", "1,2,...,16", "--eval-problems", "32"])
    assert args.ks == [1, 2, 4, 8, 16] and args.eval_problems == 32
    args = build_parser().parse_args(["compare", "--methods", "ppo_clip"])
    assert args.ks is None and args.eval_problems == 128


@pytest.mark.parametrize("flags, message", [
    (["--k", "4,2"], "argument --k: k values must be strictly ascending, got 4 then 2"),
    (["--k", "1,x"], "argument --k: k must be an integer in [1, 1048576], got 'x'"),
    (["--k", "...,8"], "argument --k: '...' must stand between two values"),
    (["--k", "1,2", "--eval-problems", "0"], "argument --eval-problems: must be >= 1, got 0"),
])
def test_cli_rejects_a_bad_grid_with_one_line(tmp_path: Path, monkeypatch, capsys, flags: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["compare", "--methods", "ppo_clip", "--out", "out", *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("ks, problems, match", [
    ([4, 2], 8, "--k must be strictly ascending integers"), ([], 8, "--k must be"), ([0, 1], 8, "--k must be"),
    ([1, 2], 0, "--eval-problems must be >= 1, got 0"),
])
def test_compare_refuses_a_bad_grid_before_training(tmp_path: Path, monkeypatch, ks: list[int], problems: int,
                                                    match: str) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("compare launched something before rejecting the grid")

    monkeypatch.setattr(compare_mod.subprocess, "run", refuse)
    with pytest.raises(ConfigError, match=match):
        compare(None, TINY, ["ppo_clip"], 1, tmp_path / "out", log=lambda s: None, ks=ks, eval_problems=problems)
    assert not (tmp_path / "out").exists()
