"""compare: run planning (variants, seeds, warm starts, validation before training), config-keyed reuse, clear
refusals of bad arguments, and the summary table; one tiny end-to-end compare in subprocesses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from entropy_rl.cli import main
from entropy_rl.train import compare as compare_mod
from entropy_rl.train.compare import (STATS_NOTE, SUMMARY_KEYS, choose_baseline, compare, config_diff, default_out_dir,
                                      difference, difference_table, equal_token_budget, metric_stats, plan_runs,
                                      summarize_run,
                                      summary_markdown, summary_stats, summary_table)
from entropy_rl.train.config import Config, ConfigError, load_config, save_config, to_dict

from tiny_setup import TASK, TINY, TINY_MODEL

NO_SFT = TASK + TINY_MODEL + ["sft.enabled=false", "train.steps=2"]


@pytest.fixture
def nothing_launched(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record (and refuse) every subprocess and warm start compare would start: the test must not need one."""
    calls: list = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"compare launched {args} before rejecting the input")

    monkeypatch.setattr(compare_mod.subprocess, "run", refuse)
    monkeypatch.setattr(compare_mod, "train_warm_start", refuse)
    return calls


def test_plan_resolves_packaged_variants_registry_keys_and_seeds_from_any_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here: the variants come from the package
    base = to_dict(load_config(None, ["train.seed=3"]))
    specs = plan_runs(base, ["clip_higher", "steer", "clip_cov", "gspo"], 2, tmp_path / "out", None)
    assert [(s.method, s.seed) for s in specs[:4]] == [("clip_higher", 3), ("clip_higher", 4), ("steer", 3), ("steer", 4)]
    assert specs[0].cfg.algorithm.method_params == {"eps_high": 0.28}  # clip_higher.yaml
    assert specs[4].cfg.algorithm.method_params == {"eps_low": 1.0, "eps_high": 1.0}  # the paper preset, not defaults
    assert specs[4].variant.source == "packaged variant clip_cov.yaml"
    assert specs[3].run_dir == tmp_path / "out" / "steer" / "seed4"


def test_user_variants_win_over_packaged_ones_and_the_source_is_named(tmp_path: Path) -> None:
    (tmp_path / "clip_cov.yaml").write_text("# mine\nalgorithm: {method: clip_cov, method_params: {clip_ratio: 0.01}}\n")
    base = to_dict(Config())
    specs = plan_runs(base, ["clip_cov", "kl_cov"], 1, tmp_path / "out", tmp_path)
    assert specs[0].cfg.algorithm.method_params == {"clip_ratio": 0.01}
    assert specs[0].variant.source == str(tmp_path / "clip_cov.yaml") and specs[0].variant.description == "mine"
    assert specs[1].variant.source == "packaged variant kl_cov.yaml"


def test_plan_fails_fast_naming_the_method(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="method 'ppo_clipp' is not a variant.*Did you mean 'ppo_clip'"):
        plan_runs(to_dict(Config()), ["ppo_clip", "ppo_clipp"], 1, tmp_path, None)


def test_a_typo_fails_before_the_warm_start_is_trained(tmp_path: Path, nothing_launched: list) -> None:
    # the base config needs a shared SFT warm start; the typo in the second name must stop everything first
    with pytest.raises(ConfigError, match="ppo_clipp"):
        compare(None, TASK + TINY_MODEL, ["ppo_clip", "ppo_clipp"], 1, tmp_path / "out", log=lambda s: None)
    assert nothing_launched == [] and not (tmp_path / "out").exists()


def test_warm_start_is_keyed_by_what_it_depends_on(tmp_path: Path) -> None:
    def warm_start_dir(*overrides: str) -> Path:
        spec = plan_runs(to_dict(load_config(None, list(overrides))), ["ppo_clip"], 1, tmp_path, None)[0]
        assert spec.cfg.model.path == str(spec.warm_start.model_dir) and not spec.cfg.sft.enabled
        return spec.warm_start.model_dir

    countdown = warm_start_dir()
    assert countdown.parent == tmp_path / "_sft"
    assert warm_start_dir("task.name=arithmetic") != countdown  # a Countdown model is never used for arithmetic
    assert warm_start_dir("model.hidden_size=64") != countdown
    assert warm_start_dir("sft.max_steps=5") != countdown
    assert warm_start_dir("rollout.temperature=0.7") != countdown  # SFT's accuracy check samples at it
    assert warm_start_dir("train.seed=1") != countdown
    # RL-only settings share it: longer runs, other methods, other batch shapes
    assert warm_start_dir("train.steps=7", "algorithm.method=steer", "rollout.group_size=4") == countdown
    assert warm_start_dir("rollout.strategy=cure", "rollout.strategy_params={branches: 2}") == countdown  # RL sampling
    assert warm_start_dir("rollout.engine_params={share_prefill: false}") == countdown  # SFT samples with HF generate
    seeds = plan_runs(to_dict(Config()), ["ppo_clip", "clip_higher"], 3, tmp_path, None)
    assert {s.warm_start.model_dir for s in seeds} == {countdown}  # every method and seed shares the base seed's


def test_rerun_with_other_settings_names_the_differing_keys(tmp_path: Path, nothing_launched: list) -> None:
    out = tmp_path / "out"
    old = plan_runs(to_dict(load_config(None, NO_SFT)), ["clip_higher"], 1, out, None)[0]
    old.run_dir.mkdir(parents=True)
    save_config(old.cfg, old.run_dir / "config.yaml")  # a run trained with train.steps=2
    with pytest.raises(ConfigError) as e:
        compare(None, NO_SFT + ["train.steps=5", "optim.lr=0.01"], ["clip_higher"], 1, out, log=lambda s: None)
    assert "clip_higher/seed0 holds a clip_higher run with another config" in str(e.value)
    assert "optim.lr: 0.0002 -> 0.01; train.steps: 2 -> 5" in str(e.value)
    assert nothing_launched == []


def test_config_diff_uses_dotted_paths_and_ignores_threads() -> None:
    old = {"algorithm": {"method_params": {"eps_high": 0.28}}, "train": {"threads": 1, "steps": 2}}
    new = {"algorithm": {"method_params": {}}, "train": {"threads": 2, "steps": 2}}
    assert config_diff(old, new) == ["algorithm.method_params.eps_high: 0.28 -> <unset>"]


def test_default_out_dir_differs_with_the_overrides() -> None:
    a = default_out_dir("configs/compare_cpu.yaml", load_config(None, ["optim.lr=0.001"]))
    b = default_out_dir("configs/compare_cpu.yaml", load_config(None, ["optim.lr=0.002"]))
    assert a.parent == b.parent == Path("runs") and a.name.startswith("compare_compare_cpu_") and a != b
    assert default_out_dir(None, load_config(None, ["optim.lr=0.001"])) == Path("runs") / a.name.replace("compare_cpu", "demo")


@pytest.mark.parametrize("methods, match", [
    (["../../x"], "not a variant or registry name"),
    (["/tmp/x"], "not a variant or registry name"),
    (["a/b"], "not a variant or registry name"),
    ([".hidden"], "not a variant or registry name"),
    (["report"], "reserved"),
    (["ppo_clip", "ppo_clip"], "more than once"),
    ([], "at least one name"),
])
def test_unsafe_or_repeated_method_names_are_refused(tmp_path: Path, monkeypatch, nothing_launched: list,
                                                     methods: list[str], match: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text("algorithm: {method: ppo_clip}\n")  # what '../../x' etc. could have read
    with pytest.raises(ConfigError, match=match):
        compare(None, NO_SFT, methods, 1, tmp_path / "a" / "b" / "out", methods_dir=tmp_path / "a", log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.yaml"]  # nothing written anywhere


@pytest.mark.parametrize("args, message", [
    (["--out", "afile"], "--out 'afile': 'afile' is a file, not a directory"),
    (["--out", "afile/sub"], "--out 'afile/sub': 'afile' is a file, not a directory"),
    (["--methods-dir", "nowhere"], "--methods-dir 'nowhere' is not a directory"),
    (["--baseline", "clip_cov"], "--baseline 'clip_cov' is not one of --methods (ppo_clip)"),
    (["--methods", "../../x"], "method name '../../x' is not a variant or registry name "
                               "(letters, digits, '_' and '-' only; `entropy-rl methods` lists them)"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, monkeypatch, capsys, nothing_launched: list,
                                            args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    assert main(["compare", *NO_SFT, "--out", "out", "--methods", "ppo_clip", *args]) == 2  # the last flag wins
    err = capsys.readouterr().err
    assert err == f"entropy-rl compare: error: {message}\n"
    assert (tmp_path / "afile").read_text() == "mine"


def test_summary_of_runs(tmp_path: Path) -> None:
    # entropy 1.0 for 5 steps then 0.4 (<= half of the first-5 mean) from step 6; eval at step 20
    for seed, reward in ((0, 0.2), (1, 0.4)):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        rows = [{"step": s, "entropy/token_mean": 1.0 if s <= 5 else 0.4, "reward/mean": reward, "timing/step_s": 0.5}
                for s in range(1, 21)]
        rows[-1].update({"eval/pass@1": 0.3, "eval/pass@8": 0.6})
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = [summarize_run(tmp_path / "seed0"), summarize_run(tmp_path / "seed1"), summarize_run(tmp_path / "missing")]
    assert runs[0] == {"final_entropy": 0.4, "final_reward": 0.2, "pass@1": 0.3, "pass@8": 0.6,
                       "steps_to_half_entropy": 6, "wall_s": 10.0, "tokens_generated": None, "steps": 20.0}
    assert runs[2]["final_reward"] is None  # a failed run does not break the table
    table = summary_table({"m": runs})
    # reward over the two finished seeds: mean 0.3, sample std 0.141; no CI with 2 values
    assert "| m | 3 | 0.400 ± 0.000, CI n/a (2/3) | 0.300 ± 0.141, CI n/a (2/3) |" in table
    assert "6 ± 0, CI n/a (2/3)" in table


def write_costed_run(d: Path, tokens_per_step: float, steps: int = 10) -> None:
    """A run whose step s has entropy 1/s, reward s/10, `tokens_per_step` tokens generated; evals at 4 and 8."""
    d.mkdir(parents=True)
    rows = [{"step": s, "entropy/token_mean": 1.0 / s, "reward/mean": s / 10, "timing/step_s": 1.0,
             "rollout/tokens_generated": tokens_per_step} for s in range(1, steps + 1)]
    for s in (4, 8):
        rows[s - 1].update({"eval/pass@1": s / 100, "eval/pass@8": s / 10})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_equal_tokens_holds_every_run_to_the_smallest_generation_budget(tmp_path: Path) -> None:
    write_costed_run(tmp_path / "plain", 100.0)  # 10 steps x 100 = 1000 tokens
    write_costed_run(tmp_path / "branchy", 200.0)  # 10 steps x 200 = 2000 tokens
    assert equal_token_budget([tmp_path / "plain", tmp_path / "branchy"]) == 1000.0
    full = summarize_run(tmp_path / "branchy")
    assert full["tokens_generated"] == 2000.0 and full["steps"] == 10.0 and full["pass@8"] == 0.8
    held = summarize_run(tmp_path / "branchy", 1000.0)  # steps 1-5 cost 1000 tokens
    assert held["tokens_generated"] == 1000.0 and held["steps"] == 5.0 and held["wall_s"] == 5.0
    assert held["final_reward"] == pytest.approx(0.3)  # mean of steps 1-5's rewards
    assert held["pass@1"] == 0.04 and held["pass@8"] == 0.4  # the eval at step 4, not the one at step 8
    assert summarize_run(tmp_path / "plain", 1000.0) == summarize_run(tmp_path / "plain")
    assert summarize_run(tmp_path / "branchy", 150.0)["final_entropy"] is None  # not one step fits


def test_equal_tokens_refuses_runs_without_the_cost_metric(tmp_path: Path) -> None:
    write_costed_run(tmp_path / "a", 100.0)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.jsonl").write_text(json.dumps({"step": 1, "entropy/token_mean": 1.0}) + "\n")
    with pytest.raises(ConfigError, match="old has no steps with rollout/tokens_generated"):
        equal_token_budget([tmp_path / "a", tmp_path / "old"])


def runs_of(key: str, values: list[float | None]) -> list[dict[str, float | None]]:
    """Hand-built per-run summaries: `values` for `key`, None for every other summary key."""
    return [{k: (v if k == key else None) for k in SUMMARY_KEYS} for v in values]


def test_the_ci_contains_the_mean_and_lies_within_the_seeds() -> None:
    xs = [0.31, 0.12, 0.45, 0.27, 0.38, 0.22]
    st = metric_stats(xs)
    assert st.n == 6 and st.mean == pytest.approx(sum(xs) / 6) and st.std == pytest.approx(0.1169, abs=1e-4)
    assert min(xs) <= st.ci[0] < st.mean < st.ci[1] <= max(xs)
    assert metric_stats(xs[:3]).ci is not None  # 3 seeds are enough for a CI


def test_interquartile_mean_on_five_seeds_by_hand() -> None:
    # sorted 0.1, 0.2, 0.3, 0.4, 5.0: trimming floor(5/4) = 1 value at each end leaves 0.2, 0.3, 0.4 -> 0.3
    st = metric_stats([0.4, 5.0, 0.1, 0.3, 0.2])
    assert st.iqm == pytest.approx(0.3) and st.mean == pytest.approx(1.2)  # the outlier moves the mean, not the IQM
    assert metric_stats([0.4, 5.0, 0.1, 0.3]).iqm is None  # 4 seeds: no IQM
    assert "IQM 0.300" in summary_table({"m": runs_of("final_reward", [0.4, 5.0, 0.1, 0.3, 0.2])})


def test_one_seed_prints_na_instead_of_a_zero_std() -> None:
    st = metric_stats([0.4])
    assert (st.n, st.mean, st.std, st.ci, st.iqm) == (1, 0.4, None, None, None)
    table = summary_table({"m": runs_of("final_entropy", [0.4])})
    assert "| m | 1 | 0.400 ± n/a, CI n/a |" in table and "± 0.000" not in table
    assert table.startswith("| method | seeds | final entropy, nats (final_entropy) | final reward (final_reward) | "
                            "pass@1, prob. (pass@1) | pass@8, prob. (pass@8) | steps until entropy halves "
                            "(steps_to_half_entropy) | wall time, s (wall_s) |")  # plain names, units, keys
    d = difference([0.5], [0.4])
    assert d.diff == pytest.approx(0.1) and d.ci is None and d.excludes_zero is None
    assert d.verdict == "n/a: the CI needs >= 3 seeds of each"


def test_two_seeds_give_a_std_but_no_ci() -> None:
    st = metric_stats([0.2, 0.4])
    assert st.std == pytest.approx(0.1414, abs=1e-4) and st.ci is None
    assert "0.300 ± 0.141, CI n/a" in summary_table({"m": runs_of("final_reward", [0.2, 0.4])})


def test_difference_is_flagged_only_when_its_ci_excludes_zero() -> None:
    base = [0.30, 0.32, 0.31, 0.29, 0.33]
    far = difference([0.50, 0.52, 0.51, 0.49, 0.53], base)  # every seed 0.2 above
    assert far.diff == pytest.approx(0.2) and far.ci[0] > 0 and far.excludes_zero is True
    assert far.verdict == "CI excludes 0"
    below = difference([0.10, 0.12, 0.11, 0.09, 0.13], base)
    assert below.ci[1] < 0 and below.excludes_zero is True
    noise = difference([0.31, 0.29, 0.33, 0.30, 0.34], base)  # +0.006 against a spread of 0.04
    assert noise.ci[0] < 0 < noise.ci[1] and noise.excludes_zero is False
    assert noise.verdict == "CI includes 0: within seed noise"
    assert difference([None, None], base).verdict == "n/a: no values"  # every run failed


def test_differences_are_against_the_chosen_baseline_in_words() -> None:
    assert choose_baseline(["clip_cov", "ppo_clip"], None) == "ppo_clip"
    assert choose_baseline(["clip_cov", "kl_cov"], None) == "clip_cov"
    assert choose_baseline(["clip_cov", "ppo_clip"], "clip_cov") == "clip_cov"
    results = {"ppo_clip": runs_of("final_entropy", [0.30, 0.32, 0.31]),
               "up": runs_of("final_entropy", [0.50, 0.52, 0.51]),
               "same": runs_of("final_entropy", [0.29, 0.33, 0.31])}
    table = difference_table(results, "ppo_clip")
    assert "| up | final_entropy | +0.200 | [+0.187, +0.213] | 3 vs 3 | CI excludes 0 |" in table
    assert "| same | final_entropy | +0.000 | [-0.020, +0.020] | 3 vs 3 | CI includes 0: within seed noise |" in table
    assert "| ppo_clip |" not in table  # the baseline is not compared with itself
    assert "pass@1" not in table  # no method has a value: no row
    results["failed"] = runs_of("final_entropy", [None, None, None])
    assert "| failed | final_entropy | - | n/a | 0 vs 3 | n/a: no values |" in difference_table(results, "ppo_clip")
    del results["failed"]
    md = summary_markdown(results, "ppo_clip")
    assert STATS_NOTE in md and "Differences from the baseline `ppo_clip`" in md
    assert difference_table({"ppo_clip": results["ppo_clip"]}, "ppo_clip") == ""  # one method: nothing to compare
    js = summary_stats(results, "ppo_clip")
    assert js["ppo_clip"]["vs_baseline"] is None
    up = js["up"]["vs_baseline"]
    assert up["baseline"] == "ppo_clip" and up["metrics"]["final_entropy"]["excludes_zero"] is True
    assert js["same"]["vs_baseline"]["metrics"]["final_entropy"]["verdict"] == "CI includes 0: within seed noise"
    assert js["up"]["stats"]["final_entropy"]["ci95"] == pytest.approx([0.50, 0.52], abs=1e-9)  # 3 seeds: min..max
    json.dumps(js, allow_nan=False)  # valid JSON: no NaN anywhere


def test_write_summary_puts_statistics_and_verdicts_in_both_files(tmp_path: Path) -> None:
    specs = plan_runs(to_dict(load_config(None, NO_SFT)), ["clip_higher", "ppo_clip"], 3, tmp_path, None)
    for spec in specs:  # clip_higher's final entropy 0.2 above ppo_clip's on every seed
        spec.run_dir.mkdir(parents=True)
        h = (0.5 if spec.method == "clip_higher" else 0.3) + 0.01 * spec.seed
        rows = [{"step": s, "entropy/token_mean": h, "reward/mean": 0.5, "timing/step_s": 1.0} for s in range(1, 3)]
        (spec.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = compare_mod.write_summary(specs, tmp_path)  # default baseline: ppo_clip, although listed second
    assert (tmp_path / "summary.md").read_text() == md + "\n"
    assert "| clip_higher | final_entropy | +0.200 |" in md and "| final_reward | +0.000 |" in md
    assert "- `clip_higher`: packaged variant clip_higher.yaml" in md
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ppo_clip"]["vs_baseline"] is None and len(summary["ppo_clip"]["runs"]) == 3
    vs = summary["clip_higher"]["vs_baseline"]
    assert vs["baseline"] == "ppo_clip" and vs["metrics"]["final_entropy"]["verdict"] == "CI excludes 0"
    assert vs["metrics"]["final_reward"]["verdict"] == "CI includes 0: within seed noise"
    assert summary["clip_higher"]["stats"]["final_entropy"]["ci95"] == pytest.approx([0.5, 0.52])
    md = compare_mod.write_summary(specs, tmp_path, baseline="clip_higher")
    assert "| ppo_clip | final_entropy | -0.200 |" in md


def test_summary_is_deterministic() -> None:
    results = {"a": runs_of("final_reward", [0.1, 0.5, 0.3, 0.2]), "b": runs_of("final_reward", [0.2, 0.6, 0.3, 0.4])}
    first = summary_markdown(results, "a"), json.dumps(summary_stats(results, "a"))
    assert (summary_markdown(results, "a"), json.dumps(summary_stats(results, "a"))) == first
    assert metric_stats([0.1, 0.5, 0.3, 0.2]).ci == metric_stats([0.1, 0.5, 0.3, 0.2]).ci


@pytest.mark.slow
def test_tiny_compare_end_to_end_reuses_only_the_same_config(tmp_path: Path, monkeypatch) -> None:
    """A real compare (SFT warm start + 1 RL step, in subprocesses); the rerun skips it; a changed setting stops."""
    monkeypatch.chdir(tmp_path)
    root = str(Path(compare_mod.__file__).parents[2])  # the subprocesses import this tree
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    overrides = [o for o in TINY if not o.startswith(("sft.enabled", "train.steps"))] + TINY_MODEL + [
        "train.steps=1", "sft.max_steps=1", "sft.eval_problems=4", "sft.batch_size=8"]
    lines: list[str] = []
    out = compare(None, overrides, ["clip_higher"], 1, "out", log=lines.append)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clip_higher"]["variant"] == "packaged variant clip_higher.yaml"
    assert summary["clip_higher"]["runs"][0]["final_reward"] is not None
    assert "- `clip_higher`: packaged variant clip_higher.yaml" in (out / "summary.md").read_text()
    assert len(list((out / "_sft").glob("*/COMPLETE"))) == 1
    lines.clear()
    compare(None, overrides, ["clip_higher"], 1, "out", log=lines.append)  # the saved config is the planned one
    assert "compare: 1 runs (1 already finished), 1 at a time, in out" in lines
    with pytest.raises(ConfigError, match=r"train.steps: 1 -> 2"):
        compare(None, overrides + ["train.steps=2"], ["clip_higher"], 1, "out", log=lines.append)
    with pytest.raises(ConfigError, match=r"model.path: out/_sft/\w+ -> out/_sft/\w+; task.name: arithmetic -> countdown"):
        compare(None, overrides + ["task.name=countdown", "task.params={}"], ["clip_higher"], 1, "out", log=lines.append)


def test_summary_ignores_the_step_0_eval_row(tmp_path: Path) -> None:
    rows = [{"step": 0, "eval/pass@1": 0.5, "eval/pass@8": 0.9, "timing/eval_s": 1.0}]  # the warm start's eval
    rows += [{"step": s, "entropy/token_mean": 1.0, "reward/mean": 0.1, "timing/step_s": 0.5} for s in range(1, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert summarize_run(tmp_path)["final_entropy"] == 1.0
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")  # failed before its first RL step
    assert summarize_run(tmp_path)["final_reward"] is None
