"""compare: run planning (variants, seeds, warm starts, validation before training), config-keyed reuse, clear
refusals of bad arguments, and the summary table; one tiny end-to-end compare in subprocesses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from entropy_rl.cli import main
from entropy_rl.train import compare as compare_mod
from entropy_rl.train.compare import compare, config_diff, default_out_dir, plan_runs, summarize_run, summary_table
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
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--seeds", "-1"], "--seeds must be >= 1, got -1"),
    (["--out", "afile"], "--out 'afile': 'afile' is a file, not a directory"),
    (["--out", "afile/sub"], "--out 'afile/sub': 'afile' is a file, not a directory"),
    (["--methods-dir", "nowhere"], "--methods-dir 'nowhere' is not a directory"),
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
                       "steps_to_half_entropy": 6, "wall_s": 10.0}
    assert runs[2]["final_reward"] is None  # a failed run does not break the table
    table = summary_table({"m": runs})
    # reward over the two finished seeds: mean 0.3, sample std 0.141
    assert "| m | 3 | 0.400 ± 0.000 | 0.300 ± 0.141 |" in table and "6 ± 0 (2/3)" in table


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
