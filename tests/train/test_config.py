"""Config schema: strict keys with did-you-mean, types and ranges with key paths, overrides, round trip."""

from pathlib import Path

import pytest
import yaml

from entropy_rl.cli import main
from entropy_rl.train.config import Config, ConfigError, load_config, save_config, to_dict

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rollout.temprature=0.5"], "did you mean 'rollout.temperature'"),
        (["optimm.lr=1"], "did you mean 'optim'"),
        (["rollout.temperature=hot"], "rollout.temperature: expected a number"),
        (["train.steps=1.5"], "train.steps: expected an integer"),
        (["sft.enabled=1"], "sft.enabled: expected true/false"),
        (["rollout.temperature=0"], r"rollout.temperature: must be in \[0.001, 100\]"),
        (["rollout.group_size=1"], "GRPO std scaling needs groups of >= 2"),
        (["algorithm.method_params={eps_high: -0.1}"], "algorithm.method_params: .*eps_low and eps_high must be >= 0"),
        (["algorithm.method_params={eps_hihg: 0.3}"], "algorithm.method_params: .*did you mean 'eps_high'"),
        (["algorithm.method=ppo_clipp"], "algorithm.method: unknown policy loss 'ppo_clipp'.*Did you mean 'ppo_clip'"),
        (["algorithm.advantage=grpoo"], "algorithm.advantage: unknown advantage estimator"),
        (["algorithm.loss_agg_mode=mean"], "algorithm.loss_agg_mode: must be one of"),
        (["task.params={n_numbres: 4}"], "task.params: .*n_numbers"),
        (["optim.mini_batches=3"], "optim.mini_batches: must divide the rollout batch of 128"),
        (["train.sinks=[csv]"], "train.sinks: unknown sink 'csv'"),
        (["nokey"], "not of the form key.path=value"),
        (["algorithm.method=siren", "algorithm.method_params={loss_agg_mode: seq-mean-token-mean}"],
         "algorithm.method_params: unknown parameter 'loss_agg_mode' of siren"),  # the trainer's, in the step context
        (["rollout.strategy=cur"], "rollout.strategy: unknown rollout strategy 'cur'.*Did you mean 'cure'"),
        (["rollout.strategy=cure", "rollout.strategy_params={branchs: 2}"],
         "rollout.strategy_params: unknown parameter 'branchs' of cure; did you mean 'branches'"),
        (["rollout.strategy=top_h", "rollout.strategy_params={alpha: 1.5}"], r"rollout.strategy_params: alpha must be in \(0, 1\]"),
        (["algorithm.method=entropy_controller", "train.dynamics_every=0"],
         "algorithm.method: 'entropy_controller' needs trainer metric 'dynamics/dH_pred' at every step; set train.dynamics_every=1"),
    ],
)
def test_bad_config_is_rejected_with_the_key_path(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_group_size_one_is_fine_without_std_scaling() -> None:
    cfg = load_config(None, ["rollout.group_size=1", "algorithm.advantage=dr_grpo"])
    assert cfg.rollout.group_size == 1


def test_overrides_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["optim.lr=3e-4", "algorithm.method_params={eps_high: 0.28}", "optim.betas=[0.9, 0.95]"])
    assert cfg.optim.lr == 3e-4 and cfg.algorithm.method_params == {"eps_high": 0.28} and cfg.optim.betas == (0.9, 0.95)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_demo_config_file_lists_exactly_the_defaults() -> None:
    data = yaml.safe_load((REPO / "configs" / "demo_cpu.yaml").read_text())
    assert data == to_dict(Config()), "configs/demo_cpu.yaml drifted from Config() defaults"


def test_validate_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("optim:\n  lr: 0.001\n")
    assert main(["validate", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.001\n")
    assert main(["validate", str(bad)]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
