"""Run configuration: dataclasses are the schema; YAML and `a.b=c` overrides are validated strictly.

Unknown keys fail with the nearest valid key; wrong types and out-of-range values fail with the key path.
Method, advantage and task parameters are validated against their registered `Params` dataclasses before
any model is built. The defaults of `Config()` are the CPU demo (configs/demo_cpu.yaml lists them).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from entropy_rl.core.aggregate import AGG_MODES
from entropy_rl.core.kl import KL_ESTIMATORS


FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config problem, with the dotted key path in the message."""


@dataclass
class ModelConfig:
    path: str | None = None  # local Hugging Face checkpoint dir; None builds the tiny model below
    dtype: str = "float32"  # parameter dtype for a loaded checkpoint
    hidden_size: int = 128  # tiny model width
    num_layers: int = 4  # tiny model depth
    num_heads: int = 4  # attention heads
    num_kv_heads: int = 2  # key/value heads (GQA)
    intermediate_size: int = 384  # MLP width
    max_position_embeddings: int = 64  # longest prompt + response


@dataclass
class TaskConfig:
    name: str = "countdown"  # registry key (entropy-rl methods lists tasks)
    params: dict[str, Any] = field(default_factory=dict)  # the task's Params fields


@dataclass
class SFTConfig:
    enabled: bool = True  # warm-start the policy by supervised training on reference answers
    max_steps: int = 2000  # upper bound on SFT steps
    batch_size: int = 128  # problems per SFT step
    lr: float = 1e-3  # AdamW learning rate
    eval_every: int = 50  # check sampled accuracy every N steps
    eval_problems: int = 256  # eval-split problems for that check (one sample each at the rollout temperature)
    target_accuracy: float = 0.25  # stop once sampled accuracy reaches this (the demo wants 20-40%)


@dataclass
class RolloutConfig:
    prompts_per_step: int = 16  # distinct prompts per step
    group_size: int = 8  # responses per prompt (G)
    temperature: float = 1.0  # sampling temperature (also the entropy's tau)
    top_p: float = 1.0  # nucleus mass
    top_k: int = 0  # 0 disables
    max_new_tokens: int = 16  # response length cap


@dataclass
class AlgorithmConfig:
    advantage: str = "grpo"  # advantage estimator (registry key)
    advantage_params: dict[str, Any] = field(default_factory=dict)  # its Params fields
    method: str = "ppo_clip"  # policy-loss method (registry key)
    method_params: dict[str, Any] = field(default_factory=dict)  # its Params fields
    loss_agg_mode: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    selection_scope: str = "minibatch"  # where token selection runs: minibatch (default) | microbatch (paper repro)
    kl_coef: float = 0.0  # weight of the KL-to-reference penalty (0 = off, no reference model kept)
    kl_estimator: str = "k3"  # k1 | k2 | k3


@dataclass
class OptimConfig:
    lr: float = 2e-4  # AdamW learning rate for RL
    weight_decay: float = 0.0  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    grad_clip: float = 1.0  # max global grad norm (0 disables)
    warmup_steps: int = 0  # linear warm-up of the learning rate
    mini_batches: int = 1  # optimizer steps per rollout batch per epoch (>1 = off-policy updates)
    epochs: int = 1  # passes over each rollout batch (PPO epochs)
    micro_batch_size: int = 0  # sequences per forward/backward; 0 = whole mini-batch (result is identical)
    max_skipped_steps: int = 10  # stop after this many consecutive non-finite updates


@dataclass
class TrainConfig:
    steps: int = 300  # RL steps (rollout + update)
    seed: int = 0  # seeds data, init, sampling and selection
    device: str = "cpu"  # cpu | cuda | auto
    threads: int = 0  # torch CPU threads (0 = torch default)
    eval_every: int = 50  # evaluate pass@k every N steps (0 = never; always at the end if > 0)
    eval_problems: int = 64  # fixed eval-split problems
    eval_samples: int = 8  # samples per eval problem (k of pass@k)
    save_every: int = 100  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept
    min_free_gb: float = 0.0  # refuse to write a checkpoint with less free disk than this (and 2x the last one)
    high_entropy_threshold: float = 0.5  # nats; entropy/high_frac counts tokens above it
    dynamics_every: int = 1  # measure dH_actual / dH_pred / dH_identity every N steps (0 = never)
    log_completions_every: int = 10  # write sampled completions to completions.jsonl at step 1, every N steps and the last (0 = never)
    log_completions_n: int = 8  # completions written per logged step: the first n of the batch (whole groups when a multiple of G)
    sinks: list[str] = field(default_factory=lambda: ["jsonl", "stdout"])  # jsonl | stdout | tensorboard | wandb


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------- parsing


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types with the key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            suffix = f"; did you mean '{(path + '.' if path else '') + hint[0]}'?" if hint else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{where}'{suffix}")
        kwargs[key] = coerce(hints[key], value, where)
    return cls(**kwargs)


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check / convert `value` to type `tp` (dataclass, Optional, list, tuple, dict, int, float, bool, str)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads `3e-4` as a string; accept what is clearly a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported schema type {tp}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain nested dict (tuples become lists, so it is YAML-safe)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides to a nested dict; values are parsed as YAML scalars (`x=0.1`, `x=[1,2]`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}': empty key segment")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or start from the defaults), apply overrides, validate everything. Raises ConfigError."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    cfg = from_dict(Config, data)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Range checks and registry-parameter checks; raises ConfigError naming the key path."""
    from entropy_rl.core.advantage import get_advantage
    from entropy_rl.core.policy_loss import get_policy_loss
    from entropy_rl.core.registry import RegistryError
    from entropy_rl.tasks import TASKS

    def need(cond: bool, where: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {msg}")

    r, o, t, a, s = cfg.rollout, cfg.optim, cfg.train, cfg.algorithm, cfg.sft
    need(r.temperature > 0, "rollout.temperature", f"must be > 0 when sampling, got {r.temperature}")
    need(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    need(r.top_k >= 0, "rollout.top_k", f"must be >= 0, got {r.top_k}")
    need(r.max_new_tokens >= 1, "rollout.max_new_tokens", f"must be >= 1, got {r.max_new_tokens}")
    need(r.prompts_per_step >= 1, "rollout.prompts_per_step", f"must be >= 1, got {r.prompts_per_step}")
    need(r.group_size >= 1, "rollout.group_size", f"must be >= 1, got {r.group_size}")
    need(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    need(o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {o.grad_clip}")
    need(o.epochs >= 1, "optim.epochs", f"must be >= 1, got {o.epochs}")
    need(o.mini_batches >= 1, "optim.mini_batches", f"must be >= 1, got {o.mini_batches}")
    n_seqs = r.prompts_per_step * r.group_size
    need(n_seqs % o.mini_batches == 0, "optim.mini_batches",
         f"must divide the rollout batch of {n_seqs} sequences (prompts_per_step x group_size)")
    need(o.micro_batch_size >= 0, "optim.micro_batch_size", f"must be >= 0, got {o.micro_batch_size}")
    need(o.max_skipped_steps >= 1, "optim.max_skipped_steps", f"must be >= 1, got {o.max_skipped_steps}")
    need(t.steps >= 0, "train.steps", f"must be >= 0, got {t.steps}")
    need(t.device in ("cpu", "cuda", "auto"), "train.device", f"must be cpu, cuda or auto, got '{t.device}'")
    need(t.eval_samples >= 1, "train.eval_samples", f"must be >= 1, got {t.eval_samples}")
    need(t.eval_every >= 0 and t.save_every >= 0, "train.eval_every/save_every", "must be >= 0")
    need(t.dynamics_every >= 0, "train.dynamics_every", f"must be >= 0, got {t.dynamics_every}")
    need(t.log_completions_every >= 0 and t.log_completions_n >= 1, "train.log_completions_every/log_completions_n",
         f"must be >= 0 and >= 1, got {t.log_completions_every} and {t.log_completions_n}")
    need(t.min_free_gb >= 0, "train.min_free_gb", f"must be >= 0, got {t.min_free_gb}")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1, got {t.keep_checkpoints}")
    for sink in t.sinks:
        need(sink in ("jsonl", "stdout", "tensorboard", "wandb"), "train.sinks", f"unknown sink '{sink}'")
    need(a.loss_agg_mode in AGG_MODES, "algorithm.loss_agg_mode", f"must be one of {', '.join(AGG_MODES)}, got '{a.loss_agg_mode}'")
    need(a.selection_scope in ("minibatch", "microbatch"), "algorithm.selection_scope",
         f"must be minibatch or microbatch, got '{a.selection_scope}'")
    need(a.kl_coef >= 0, "algorithm.kl_coef", f"must be >= 0, got {a.kl_coef}")
    need(a.kl_estimator in KL_ESTIMATORS, "algorithm.kl_estimator", f"must be one of {', '.join(KL_ESTIMATORS)}")
    need(s.batch_size >= 1 and s.max_steps >= 0 and s.lr > 0, "sft", "batch_size >= 1, max_steps >= 0, lr > 0 required")
    need(0 <= s.target_accuracy <= 1, "sft.target_accuracy", f"must be in [0, 1], got {s.target_accuracy}")
    need(cfg.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype", f"unknown dtype '{cfg.model.dtype}'")

    for where, params_where, getter, name, params in (
        ("algorithm.method", "algorithm.method_params", get_policy_loss, a.method, a.method_params),
        ("algorithm.advantage", "algorithm.advantage_params", get_advantage, a.advantage, a.advantage_params),
        ("task.name", "task.params", TASKS.get, cfg.task.name, cfg.task.params),
    ):
        try:
            entry = getter(name)
        except RegistryError as e:
            raise ConfigError(f"{where}: {e}") from None
        try:
            p = entry.make_params(**params)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{params_where}: {e}") from None
        if where == "task.name":  # build it: dataset files are read and checked (bad rows named) before any model
            from entropy_rl.tasks import make_task

            try:
                make_task(name, **params)
            except (ValueError, OSError, ImportError) as e:
                raise ConfigError(f"task.params: {e}") from None
        if where == "algorithm.advantage" and getattr(p, "scale_by_std", False):
            need(r.group_size >= 2, "rollout.group_size",
                 "GRPO std scaling needs groups of >= 2 responses (a group of 1 has no std)")
    validate_method_requirements(cfg)


def _every_step_probe(cfg: Config) -> str | None:
    every = cfg.train.dynamics_every
    return None if every == 1 else f"set train.dynamics_every=1 (the entropy-change probe at every step; got {every})"


def _reference_model(cfg: Config) -> str | None:
    kl = cfg.algorithm.kl_coef
    return None if kl > 0 else f"set algorithm.kl_coef > 0 (the reference model is kept only then; got {kl})"


# What the trainer can supply to a method, and the config condition for it (None = always supplied):
# per-token inputs (a method's own features are always computed) and metrics logged at every step.
TRAINER_INPUTS: dict[str, Callable[[Config], str | None]] = {
    "entropy": lambda cfg: None,
    "old_entropy": lambda cfg: None,
    "ref_logp": _reference_model,
}
TRAINER_STEP_METRICS: dict[str, Callable[[Config], str | None]] = {
    "entropy/token_mean": lambda cfg: None,
    "dynamics/dH_pred": _every_step_probe,
    "dynamics/dH_per_bonus": _every_step_probe,  # from the second step on (needs Adam's second moments)
}


def validate_method_requirements(cfg: Config) -> None:
    """Refuse a run whose trainer cannot supply what `algorithm.method` declares (`inputs`, `requires`).

    Raises:
        ConfigError: naming the method, the missing input or metric, and the setting that supplies it.
    """
    from entropy_rl.core.policy_loss import get_policy_loss

    method = get_policy_loss(cfg.algorithm.method)
    features = {name for name, _ in method.obj.old_features + method.obj.cur_features}
    checks = [("input", name, TRAINER_INPUTS.get(name)) for name in sorted(method.obj.inputs - features)]
    checks += [("trainer metric", name, TRAINER_STEP_METRICS.get(name)) for name in method.obj.requires]
    for kind, name, condition in checks:
        problem = "the trainer does not supply it" if condition is None else condition(cfg)
        if problem is not None:
            raise ConfigError(f"algorithm.method: '{method.name}' needs {kind} '{name}' at every step; {problem}")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what `load_config` reads back identically)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
