"""Hostile and careless configs: every one is refused by `load_config` / `entropy-rl validate` with one
short ConfigError naming the key, before any run directory or model exists, never a hang, a traceback
or a huge message."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from entropy_rl.cli import main
from entropy_rl.train import config as config_module
from entropy_rl.train.config import (
    MAX_CONFIG_BYTES,
    MAX_ERROR_CHARS,
    RANGES,
    Config,
    ConfigError,
    check_context,
    from_dict,
    load_config,
    numeric_fields,
)


def chain(levels: int) -> str:
    """A billion-laughs YAML flow list: level k is 9 aliases of level k-1, so the last expands to 9**levels
    leaves (43 million for 8 levels) from about 45 bytes per level."""
    items = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&l{k} [" + ", ".join([f"*l{k - 1}"] * 9) + "]" for k in range(1, levels)]
    return "[" + ", ".join(items) + "]"


BOMBS = {  # before: a repr of the whole value in the message (312 MB) or a RecursionError traceback
    "train.steps": f"train:\n  steps: {chain(8)}\n",
    "task.params.ops": f"task:\n  params: {{ops: {chain(8)}}}\n",
    "merge key": f"optim:\n  <<: {{lr: {chain(8)}}}\n",
    "recursive alias": "train:\n  steps: &s [1, *s]\n",
    "nesting 10,000 deep": "train:\n  sinks: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "nesting 40 deep": "algorithm:\n  method_params: {eps_low: " + "[" * 40 + "]" * 40 + "}\n",
}


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the block runs longer than `seconds`."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", list(BOMBS))
def test_yaml_alias_bombs_are_refused_quickly_with_a_short_message(tmp_path: Path, name: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS[name])
    assert path.stat().st_size < 1000 or name.startswith("nesting")
    t0 = time.perf_counter()
    with deadline(20), pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.perf_counter() - t0 < 10 and len(str(info.value)) <= MAX_ERROR_CHARS + 100  # ~0.1-1 s; a shared box
    assert str(info.value).startswith(f"{path}: ") and str(info.value).count(str(path)) == 1
    assert any(s in str(info.value) for s in ("YAML aliases expand to more than", "refers to a node that contains it",
                                              "nested too deeply", "nested deeper than"))


def test_the_cli_refuses_an_alias_bomb_in_one_line(tmp_path: Path) -> None:
    """The 312 MB one-line error, end to end: `entropy-rl validate` in a process capped at 2 GB."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS["train.steps"])
    proc = subprocess.run([sys.executable, "-m", "entropy_rl", "validate", str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, preexec_fn=cap)
    assert proc.returncode == 2 and "aliases expand" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1 and len(proc.stderr) < MAX_ERROR_CHARS


def test_an_override_value_is_parsed_with_the_same_limits() -> None:
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases expand") as info:
        load_config(None, [f"train.steps={chain(8)}"])
    assert time.perf_counter() - t0 < 5 and len(str(info.value)) <= MAX_ERROR_CHARS + 100


def test_anchors_within_the_budget_still_work(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sft: {lr: &lr 0.001}\noptim: {lr: *lr}\n")
    assert load_config(path).optim.lr == 0.001


@pytest.mark.parametrize(
    "content, message",
    [
        (b"optim:\n  lr: 0.001 # caf\xe9\n", "not UTF-8 text"),
        (b"- just\n- a list\n", "top level must be a mapping"),
        (b"optim: {lr: [1,\n", "invalid YAML"),
        (b"? [a, b]\n: 1\n", "invalid YAML"),  # a list as a mapping key (unhashable)
        (b"train:\n  seed: " + b"9" * 5000 + b"\n", "invalid YAML value|train.seed"),  # over Python's int-digit limit
        (b"# " + b"x" * (MAX_CONFIG_BYTES + 10) + b"\n", "larger than"),
        (b"!!python/object/apply:os.system [echo hi]\n", "invalid YAML"),
    ],
    ids=["non-utf8", "top-level-list", "unclosed-list", "unhashable-key", "5000-digit-int", "too-large", "python-tag"],
)
def test_unreadable_config_files_are_config_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert len(str(info.value)) <= MAX_ERROR_CHARS + 100


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=[1,", r"override 'optim.lr=\[1,': invalid YAML"),
        ("algorithm.method_params={[1]: 2}", "invalid YAML"),  # unhashable key
        ("algorithm.method_params={1: 2}", r"algorithm.method_params \(key 1\): expected a string"),
        ("train.sinks=[[jsonl]]", r"train.sinks\[0\]: expected a string"),
        ("algorithm.advantage_params.eps=abc", "algorithm.advantage_params.eps: expected a number, got 'abc'"),
        ("algorithm.advantage_params.eps=.nan", "algorithm.advantage_params.eps: expected a finite number"),
        ("algorithm.method_params.eps_low=[1]", "algorithm.method_params.eps_low: expected a number"),
        ("algorithm.method_params.clip_ratio_c=x", "algorithm.method_params.clip_ratio_c: expected a number"),
        ("algorithm.advantage_params.scale_by_std=1", "algorithm.advantage_params.scale_by_std: expected true/false"),
        ("task.params.n_numbers=1.5", "task.params.n_numbers: expected an integer, got 1.5"),
        ("task.params.ops=7", "task.params.ops: expected a string, got 7"),
        ("task.params={path: {a: 1}}", "task.name|task.params"),
        ("optim.lr=" + "x" * 100_000, r"optim.lr: expected a number, got 'xxx.*\(100,000 chars\)"),
    ],
)
def test_malformed_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert len(str(info.value)) <= MAX_ERROR_CHARS + 100


def test_numeric_strings_for_method_params_are_numbers() -> None:
    """`method_params.coef=1e-3`: YAML 1.1 reads a string; it used to fail with an unnamed '<' TypeError."""
    cfg = load_config(None, ["algorithm.method=entropy_bonus", "algorithm.method_params.coef=1e-3"])
    from entropy_rl.core.policy_loss import get_policy_loss

    assert get_policy_loss("entropy_bonus").make_params(**cfg.algorithm.method_params).coef == 0.001


ISSUE_INPUTS = [  # issue 15, item 11: each passed `validate` and then crashed `train` with a traceback
    ("optim.betas=[2.0,-1.0]", r"optim.betas\[0\]: must be in \[0, 1\)"),
    ("optim.weight_decay=-1", r"optim.weight_decay: must be in \[0, inf\]"),
    ("optim.lr=.inf", "optim.lr: expected a finite number"),
    ("optim.lr=.nan", "optim.lr: expected a finite number"),
    ("optim.lr=1e30", r"optim.lr: must be in \(0, 1\]"),
    ("optim.lr=0", r"optim.lr: must be in \(0, 1\]"),
    ("train.seed=100000000000000000000000000000", "train.seed: expected an integer that fits in int64"),
    ("train.seed=200000000", r"train.seed: must be in \[0, 100,000,000\]"),
    ("train.eval_problems=-1", r"train.eval_problems: must be in \[0, "),
    ("sft.eval_every=0", r"sft.eval_every: must be in \[1, "),
    ("model.hidden_size=0", r"model.hidden_size: must be in \[1, "),
    ("model.num_layers=-2", r"model.num_layers: must be in \[1, "),
    ("rollout.temperature=1e-300", r"rollout.temperature: must be in \[0.001, 100\]"),
    ("rollout.prompts_per_step=100000000", r"rollout.prompts_per_step: must be in \[1, 65,536\]"),
    # found while there
    ("rollout.prompts_per_step=8193", "prompts_per_step x group_size = 65,544 sequences per step, more than 65,536"),
    ("train.threads=-1", r"train.threads: must be in \[0, 4,096\]"),
    ("optim.weight_decay=20000", "lr x weight_decay must be < 1"),
    ("train.eval_problems=0", "train.eval_problems: must be >= 1 when train.eval_every > 0"),
    ("model.hidden_size=36", "even multiple of model.num_heads"),
    ("model.num_kv_heads=3", r"must divide model.num_heads \(4\)"),
    ("model.hidden_size=16384", "from-scratch model of .* parameters is larger than"),
    ("rollout.max_new_tokens=64", "leaves no room for a prompt"),
    ("train.sinks=[jsonl, jsonl]", "'jsonl' is listed twice"),
    ("optim.epochs=100000", r"optim.epochs: must be in \[1, 1,000\]"),
    ("algorithm.kl_coef=-0.5", r"algorithm.kl_coef: must be in \[0, inf\]"),
    (("train.eval_samples=4096", "train.eval_problems=1024"), "train.eval_samples: eval_problems x eval_samples = 4,194,304"),
]


@pytest.mark.parametrize("override, message", ISSUE_INPUTS, ids=[str(o) for o, _ in ISSUE_INPUTS])
def test_values_that_used_to_crash_training_fail_validation(override: str | tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override] if isinstance(override, str) else list(override))


def test_every_numeric_field_has_a_range() -> None:
    assert sorted(numeric_fields()) == sorted(RANGES), "add a Bound to RANGES for every new numeric config field"


@pytest.mark.parametrize("path", sorted(RANGES))
def test_every_range_is_enforced(path: str) -> None:
    bound = RANGES[path]
    integer = isinstance(getattr(getattr(Config(), path.split(".")[0]), path.split(".")[1]), int)
    below = bound.lo if bound.lo_open else bound.lo - (1 if integer else 1e-6)
    outside = [below] + ([] if bound.hi == float("inf") else [bound.hi if bound.hi_open else bound.hi + 1])
    for value in outside:
        value = [value, 0.9] if path == "optim.betas" else value
        with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
            load_config(None, [f"{path}={value}"])


def test_model_path_must_be_a_checkpoint_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.path: .* has no config.json: not a Hugging Face checkpoint"):
        load_config(None, [f"model.path={tmp_path}"])  # like model.path=/etc
    with pytest.raises(ConfigError, match="model.path: .* is not a local directory"):
        load_config(None, [f"model.path={tmp_path / 'missing'}"])


@pytest.mark.parametrize("sink", ["tensorboard", "wandb"])
def test_optional_sinks_need_their_package(monkeypatch: pytest.MonkeyPatch, sink: str) -> None:
    real = config_module.importlib.util.find_spec
    monkeypatch.setattr(config_module.importlib.util, "find_spec", lambda name: None if name == sink else real(name))
    with pytest.raises(ConfigError, match=rf"train.sinks: the {sink} sink needs the {sink} package: pip install entropy-rl\[{sink}\]"):
        load_config(None, [f"train.sinks=[jsonl, {sink}]"])


def test_cuda_without_a_device_fails_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device: cuda requested but no CUDA device"):
        load_config(None, ["train.device=cuda"])


@pytest.mark.parametrize("override", ["optim.betas=[2.0,-1.0]", "rollout.temperature=1e-300", "model.path=/nonexistent"])
def test_a_failed_start_leaves_no_run_directory(tmp_path: Path, override: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {steps: 1}\n")
    run_dir = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run_dir), "--no-progress", override]) == 2
    assert not run_dir.exists() and "Traceback" not in capsys.readouterr().err


def test_the_trainer_rechecks_the_context_after_building_the_model(tmp_path: Path) -> None:
    """`train` calls check_context once the tokenizer exists (here a config that skipped `validate`)."""
    from entropy_rl.train.loop import train

    data = {"task": {"name": "arithmetic", "params": {"ops": "+", "max_digits": 1}}, "sft": {"enabled": False},
            "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 16,
                      "max_position_embeddings": 8},
            "rollout": {"max_new_tokens": 6}, "train": {"steps": 1, "eval_every": 0, "sinks": ["jsonl"]}}
    cfg = from_dict(Config, data)  # unvalidated: `validate` would refuse it the same way
    with pytest.raises(ConfigError, match="prompt \\+ rollout.max_new_tokens is 10 tokens .* context of 8 positions"):
        train(cfg, tmp_path / "run", progress=False)


def test_check_context_samples_a_generated_task() -> None:
    from entropy_rl.models.char_tokenizer import build_char_tokenizer
    from entropy_rl.tasks import make_task

    cfg = from_dict(Config, {"sft": {"enabled": False}, "rollout": {"max_new_tokens": 4}})
    task = make_task("arithmetic", ops="+", max_digits=1)  # prompts like "5+0=": 4 tokens
    tok = build_char_tokenizer(task.alphabet)
    check_context(cfg, task, tok, 8)
    with pytest.raises(ConfigError, match="is 8 tokens \\(prompt 4\\)"):
        check_context(cfg, task, tok, 7)
    check_context(cfg, task, tok, None)  # a model without max_position_embeddings is not checked


def test_error_messages_are_capped() -> None:
    err = ConfigError("x" * 10 * MAX_ERROR_CHARS)
    assert len(str(err)) < MAX_ERROR_CHARS + 100 and "more characters" in str(err)
    assert json.dumps(str(err))  # one line of plain text
