"""Run configuration: dataclasses are the schema; YAML and `a.b=c` overrides are validated strictly.

Unknown keys fail with the nearest valid key; wrong types and out-of-range values fail with the key path.
Every numeric field has a range (`RANGES`); method, advantage and task parameters are type-checked
against their registered `Params` dataclasses; the task is built (dataset rows checked), its splits are
checked, and prompts are checked against the model's context, all before any run directory or model is
created. The defaults of `Config()` are the CPU demo (configs/demo_cpu.yaml lists them).

Input limits: a config file (or one override value) is at most MAX_CONFIG_BYTES of UTF-8 YAML; YAML
anchors/aliases may be used, but the document after alias expansion must stay under the same budget
(`yaml_size`: nodes plus scalar characters), so an alias bomb is refused before anything walks it, and
nesting is limited to MAX_YAML_DEPTH. Error messages show values in brief and are cut at
MAX_ERROR_CHARS.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from entropy_rl.core.aggregate import AGG_MODES
from entropy_rl.core.kl import KL_ESTIMATORS
from entropy_rl.core.registry import ParamsError, brief, coerce

if TYPE_CHECKING:
    import torch

MAX_CONFIG_BYTES = 256 * 1024  # a config file or override value; real configs are a few KB
MAX_YAML_DEPTH = 32  # nesting levels of a YAML document (the schema uses 4)
MAX_ERROR_CHARS = 1000  # longest error message (values in it are already shown in brief)
MAX_ROLLOUT_SEQS = 65_536  # prompts_per_step x group_size: sequences generated and scored per step
MAX_EVAL_SEQS = 2**20  # eval_problems x eval_samples: sequences one evaluation generates (and keeps)
MAX_SEED = 10**8  # the trainer derives per-step RNG seeds of about seed x 1e11, which must fit in 64 bits
MAX_SCRATCH_PARAMS = 10**9  # a from-scratch model is for small experiments; load larger ones with model.path
CONTEXT_SAMPLE = 256  # prompts per split checked against the context for a generated (not dataset) task
SINK_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # optional sink -> package it imports


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} more characters)"


class ConfigError(ValueError):
    """A config problem, with the dotted key path in the message (cut to MAX_ERROR_CHARS)."""

    def __init__(self, message: str) -> None:
        super().__init__(clip(message))


@dataclass
class ModelConfig:
    path: str | None = None  # local Hugging Face checkpoint dir; None builds the tiny model below
    dtype: str = "float32"  # parameter dtype for a loaded checkpoint
    gradient_checkpointing: bool = False  # recompute layer activations in backward: less memory, ~30% more compute
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
    engine: str = "hf"  # rollout engine (registry key): hf (Hugging Face generate on the training model) or vllm
    engine_params: dict[str, Any] = field(default_factory=dict)  # its Params fields (e.g. vllm: gpu_memory_utilization)
    strategy: str = "plain"  # rollout strategy (registry key; `entropy-rl methods` lists them)
    strategy_params: dict[str, Any] = field(default_factory=dict)  # its Params fields


@dataclass
class RolloutCorrectionConfig:
    """`algorithm.rollout_correction`: verl 0.9.1's option names and semantics (core/rollout_correction.py).

    Off by default, as in verl: the `hf` engine samples from the training model itself at the trainer's
    temperature, so without top-k / top-p the weights are 1 up to fp32 rounding and a correction would only
    perturb bit-exact runs; the rollout_corr/* metrics are logged at every step either way.
    """

    rollout_is: str | None = None  # null (off) | token | sequence; TRL names: token_truncate | token_mask | sequence_truncate | sequence_mask
    rollout_is_threshold: str | float = 2.0  # C: weights truncated at C (TIS); "lower_upper": zeroed outside (IcePop). TRL's cap is 3.0
    rollout_is_batch_normalize: bool = False  # divide the IS weights by their batch mean
    rollout_rs: str | None = None  # null | comma list of token_k1..3, seq_sum_k1..3, seq_mean_k1..3, seq_max_k2..3 (MIS: seq_sum_k1, Geo-RS: seq_mean_k1)
    rollout_rs_threshold: str | float | None = None  # per option (comma list) or shared: "lower_upper" ratio bounds for *_k1, an upper bound for k2 / k3


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
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)  # engine vs trainer mismatch


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
    attention_entropy_every: int = 0  # log attention/entropy_l* (per layer; per head in attention_entropy.jsonl) every N steps (0 = never)
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


# ---------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Bound:
    """An allowed interval for a numeric field (floats are also required to be finite).

    Attributes:
        lo: lower end.
        hi: upper end (math.inf: any finite value).
        lo_open: exclude the lower end.
        hi_open: exclude the upper end.
        why: a reason shown with the error when the limit is not obvious.
    """

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""

    def contains(self, v: float) -> bool:
        """Whether `v` lies in the interval."""
        return (v > self.lo if self.lo_open else v >= self.lo) and (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        def fmt(x: float) -> str:
            return "inf" if x == math.inf else f"{x:,}" if isinstance(x, int) else f"{x:g}"

        return f"{'(' if self.lo_open else '['}{fmt(self.lo)}, {fmt(self.hi)}{')' if self.hi_open else ']'}"


BIG = 10**9  # step counts and intervals: a billion steps is beyond any run
RANGES: dict[str, Bound] = {
    "model.hidden_size": Bound(1, 16_384),
    "model.num_layers": Bound(1, 512),
    "model.num_heads": Bound(1, 512),
    "model.num_kv_heads": Bound(1, 512),
    "model.intermediate_size": Bound(1, 131_072),
    "model.max_position_embeddings": Bound(2, 2**20),
    "sft.max_steps": Bound(0, BIG),
    "sft.batch_size": Bound(1, MAX_ROLLOUT_SEQS),
    "sft.lr": Bound(0, 1, lo_open=True, why="AdamW moves each weight by about lr per step"),
    "sft.eval_every": Bound(1, BIG),
    "sft.eval_problems": Bound(1, MAX_ROLLOUT_SEQS),
    "sft.target_accuracy": Bound(0, 1),
    "rollout.prompts_per_step": Bound(1, MAX_ROLLOUT_SEQS),
    "rollout.group_size": Bound(1, MAX_ROLLOUT_SEQS),
    "rollout.temperature": Bound(1e-3, 100, why="logits / temperature overflow below 1e-3; above 100 sampling is uniform"),
    "rollout.top_p": Bound(0, 1, lo_open=True),
    "rollout.top_k": Bound(0, 2**31 - 1),
    "rollout.max_new_tokens": Bound(1, 2**20),
    "algorithm.kl_coef": Bound(0, math.inf),
    "optim.lr": Bound(0, 1, lo_open=True, why="AdamW moves each weight by about lr per step"),
    "optim.weight_decay": Bound(0, math.inf),
    "optim.betas": Bound(0, 1, hi_open=True, why="AdamW's moving-average factors"),
    "optim.grad_clip": Bound(0, math.inf),
    "optim.warmup_steps": Bound(0, BIG),
    "optim.mini_batches": Bound(1, MAX_ROLLOUT_SEQS),
    "optim.epochs": Bound(1, 1000),
    "optim.micro_batch_size": Bound(0, MAX_ROLLOUT_SEQS),
    "optim.max_skipped_steps": Bound(1, BIG),
    "train.steps": Bound(0, BIG),
    "train.seed": Bound(0, MAX_SEED, why="per-step seeds derived from it must fit in 64 bits"),
    "train.threads": Bound(0, 4096),
    "train.eval_every": Bound(0, BIG),
    "train.eval_problems": Bound(0, MAX_ROLLOUT_SEQS),
    "train.eval_samples": Bound(1, 4096),
    "train.save_every": Bound(0, BIG),
    "train.keep_checkpoints": Bound(1, 10_000),
    "train.min_free_gb": Bound(0, 10**6),
    "train.high_entropy_threshold": Bound(0, math.inf),
    "train.dynamics_every": Bound(0, BIG),
    "train.attention_entropy_every": Bound(0, BIG),
    "train.log_completions_every": Bound(0, BIG),
    "train.log_completions_n": Bound(1, MAX_ROLLOUT_SEQS),
}


def numeric_fields(cls: type | None = None, prefix: str = "") -> list[str]:
    """Dotted paths of every int / float (or tuple of them) field of the schema, `Config` by default."""
    cls = Config if cls is None else cls
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        path = f"{prefix}{name}"
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += numeric_fields(tp, path + ".")
        elif tp in (int, float) or set(typing.get_args(tp)) <= {int, float} and typing.get_origin(tp) is tuple:
            out.append(path)
    return out


# ---------------------------------------------------------------- parsing


def yaml_size(root: yaml.Node, limit: int, source: str) -> int:
    """Size of a composed YAML document after alias expansion: nodes plus scalar characters.

    An alias is the same node object as its anchor, so sizes are memoised per node: the walk costs the
    number of distinct nodes however large the expansion.

    Args:
        root: the composed document (`yaml.SafeLoader.get_single_node()`), not yet constructed.
        limit: sizes are capped at limit + 1, so huge expansions never make huge integers.
        source: names the input in messages.

    Returns:
        min(expanded size, limit + 1).

    Raises:
        ConfigError: a recursive alias (a node containing itself) or nesting deeper than MAX_YAML_DEPTH.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    on_path: set[int] = set()
    while stack:
        node, depth, children_done = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1 + len(node.value)
            continue
        kids = [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else node.value
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(k)] for k in kids))
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise ConfigError(f"{source}: a YAML alias refers to a node that contains it (line {node.start_mark.line + 1})")
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{source}: YAML nested deeper than {MAX_YAML_DEPTH} levels (line {node.start_mark.line + 1})")
        on_path.add(id(node))
        stack.append((node, depth, True))
        stack.extend((k, depth + 1, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document of plain data, refusing alias bombs and deep nesting.

    Args:
        text: the YAML text (at most MAX_CONFIG_BYTES characters).
        source: names the input in messages (a file path or "override 'a.b=c'").

    Returns:
        The plain data (dict, list, str, int, float, bool, None); None for an empty document.

    Raises:
        ConfigError: invalid YAML (with line and column), too large, or too large after alias expansion.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES:,} characters; a config is a few KB")
    loader = yaml.SafeLoader(text)  # plain data only, never Python objects
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if yaml_size(node, MAX_CONFIG_BYTES, source) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{source}: YAML aliases expand to more than {MAX_CONFIG_BYTES:,} nodes and characters; "
                              "write the values out instead of repeating anchors")
        return loader.construct_document(node)
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as e:
        where = f" (line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1})" if e.problem_mark else ""
        raise ConfigError(f"{source}: invalid YAML: {e.problem or e.context}{where}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply (limit {MAX_YAML_DEPTH} levels)") from None
    except ValueError as e:  # e.g. an integer literal longer than Python's 4,300-digit limit
        raise ConfigError(f"{source}: invalid YAML value: {e}") from None
    finally:
        loader.dispose()


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types with the key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {brief(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            suffix = f"; did you mean '{(path + '.' if path else '') + hint[0]}'?" if hint else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {brief(where)}{suffix}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = from_dict(hints[key], value, where)
            continue
        try:
            kwargs[key] = coerce(hints[key], value, where)
        except ParamsError as e:
            raise ConfigError(str(e)) from None
    return cls(**kwargs)


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
    """Apply `a.b=c` overrides to a nested dict; values are parsed as YAML (`x=0.1`, `x=[1,2]`, `x={a: 1}`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {brief(item)} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {brief(item)}: empty key segment")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {brief(item)}: '{part}' is not a section")
        node[parts[-1]] = load_yaml(raw, f"override {brief(item)}") if raw.strip() else ""
    return data


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file (empty file -> {}). Raises ConfigError for anything unreadable."""
    if not path.is_file():
        raise ConfigError(f"config file '{path}' {'is not a file' if path.exists() else 'does not exist'}")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes; a config is a few KB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    loaded = load_yaml(text, str(path))
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {brief(loaded)}")
    return loaded or {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or start from the defaults), apply overrides, validate everything. Raises ConfigError."""
    data = read_config_file(Path(path)) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    cfg = from_dict(Config, data)
    validate(cfg)
    return cfg


# ---------------------------------------------------------------- validation


def need(cond: bool, where: str, msg: str) -> None:
    """Raise ConfigError(`where: msg`) unless `cond`."""
    if not cond:
        raise ConfigError(f"{where}: {msg}")


def check_ranges(cfg: Config) -> None:
    """Every numeric field against its `RANGES` bound (tuples element by element)."""
    for path, bound in RANGES.items():
        section, name = path.split(".")
        value = getattr(getattr(cfg, section), name)
        for i, v in enumerate(value) if isinstance(value, tuple) else [(None, value)]:
            where = path if i is None else f"{path}[{i}]"
            need(bound.contains(v), where, f"must be in {bound}, got {brief(v)}" + (f" ({bound.why})" if bound.why else ""))


def scratch_model_params(m: ModelConfig, vocab: int) -> int:
    """Parameter count of the from-scratch Qwen2 model (tied embeddings) for a vocabulary of `vocab` tokens."""
    head_dim = m.hidden_size // m.num_heads
    attention = m.hidden_size * head_dim * (2 * m.num_heads + 2 * m.num_kv_heads) + head_dim * (m.num_heads + 2 * m.num_kv_heads)
    mlp = 3 * m.hidden_size * m.intermediate_size
    return vocab * m.hidden_size + m.num_layers * (attention + mlp + 2 * m.hidden_size) + m.hidden_size


def check_model(m: ModelConfig, vocab: int) -> int | None:
    """The model section; returns the model's max_position_embeddings (None if its config.json has none)."""
    if m.path is not None:
        path = Path(m.path)
        need(path.is_dir(), "model.path", f"'{path}' is not a local directory (hub downloads are not used)")
        cfg_file = path / "config.json"
        need(cfg_file.is_file(), "model.path", f"'{path}' has no config.json: not a Hugging Face checkpoint directory")
        try:
            model_cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            raise ConfigError(f"model.path: cannot read '{cfg_file}': {e}") from None
        need(isinstance(model_cfg, dict), "model.path", f"'{cfg_file}' is not a JSON object")
        positions = model_cfg.get("max_position_embeddings")
        return positions if isinstance(positions, int) and not isinstance(positions, bool) else None
    need(m.hidden_size % m.num_heads == 0 and (m.hidden_size // m.num_heads) % 2 == 0, "model.hidden_size",
         f"must be an even multiple of model.num_heads (rotary embeddings need an even head size), "
         f"got {m.hidden_size} / {m.num_heads}")
    need(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads",
         f"must divide model.num_heads ({m.num_heads}), got {m.num_kv_heads}")
    n = scratch_model_params(m, vocab)
    need(n <= MAX_SCRATCH_PARAMS, "model", f"a from-scratch model of {n:,} parameters is larger than "
         f"{MAX_SCRATCH_PARAMS:,}; make it smaller or load a checkpoint with model.path")
    return m.max_position_embeddings


def check_sinks(sinks: list[str]) -> None:
    """Known sink names, no duplicates, and the packages of optional sinks importable."""
    for sink in sinks:
        need(sink in ("jsonl", "stdout", *SINK_PACKAGES), "train.sinks",
             f"unknown sink {brief(sink)}; valid: jsonl, stdout, {', '.join(SINK_PACKAGES)}")
        need(sinks.count(sink) == 1, "train.sinks", f"'{sink}' is listed twice (every row would be written twice)")
        package = SINK_PACKAGES.get(sink)
        need(package is None or package_available(package), "train.sinks",
             f"the {sink} sink needs the {package} package: pip install entropy-rl[{sink}]")


def package_available(name: str) -> bool:
    """Whether `import name` can find the package (one already imported counts, even without a module spec)."""
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_context(cfg: Config, task: Any, tokenizer: Any, max_positions: int | None) -> None:
    """Check that every prompt plus `rollout.max_new_tokens` fits the model's context (and, with SFT on,
    every prompt + answer + EOS). Called by `validate` and once by the trainer after the tokenizer exists.

    A dataset task (one with `pools` of every row, like jsonl) is checked row by row and the error names
    the first offending row's `file:line`; a generated task is checked on CONTEXT_SAMPLE prompts per split.

    Args:
        cfg: the run config.
        task: the built task.
        tokenizer: the policy's tokenizer.
        max_positions: the model's max_position_embeddings; None skips the check.

    Raises:
        ConfigError: naming the row, its token count, the limit and how to fix it.
    """
    if max_positions is None:
        return
    T = cfg.rollout.max_new_tokens
    need(T < max_positions, "rollout.max_new_tokens",
         f"{T} leaves no room for a prompt in the model's context of {max_positions} positions")
    pools = getattr(task, "pools", None)
    if pools is not None:
        problems = [p for pool in pools.values() for p in pool]
    else:
        problems = [p for split in ("train", "eval") for p in task.prompts(split, CONTEXT_SAMPLE, seed=cfg.train.seed)]
    if not problems:
        return
    from entropy_rl.tasks.chat import format_prompt

    try:  # the text the model sees: chat prompts through the chat template (role markers count)
        texts = [format_prompt(tokenizer, p.prompt) for p in problems]
    except ValueError as e:
        raise ConfigError(f"task.params: {e}") from None
    prompt_lens = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    need_lens = [n + T for n in prompt_lens]
    what = "prompt + rollout.max_new_tokens"
    if cfg.sft.enabled:
        answer_lens = [len(ids) for ids in tokenizer([p.answer for p in problems], add_special_tokens=False)["input_ids"]]
        need_lens = [max(n + T, n + a + 1) for n, a in zip(prompt_lens, answer_lens)]
        what = "prompt + max(rollout.max_new_tokens, SFT answer + EOS)"
    too_long = [i for i, n in enumerate(need_lens) if n > max_positions]
    if too_long:
        i = too_long[0]
        source = problems[i].data.get("source") if isinstance(problems[i].data, dict) else None
        raise ConfigError(
            f"{source or 'task.params'}: {what} is {need_lens[i]:,} tokens (prompt {prompt_lens[i]:,}), more than the "
            f"model's context of {max_positions} positions ({len(too_long):,} of {len(problems):,} checked prompts are "
            f"too long); shorten or drop those rows, lower rollout.max_new_tokens, or use a model with a longer "
            f"context (model.max_position_embeddings for a from-scratch model)")


def validate(cfg: Config) -> None:
    """Ranges, cross-field rules, registry parameters, the task and its splits, optional sink packages and
    the model's context: everything a run would otherwise fail on later. Raises ConfigError naming the key."""
    import torch

    from entropy_rl.core.advantage import get_advantage
    from entropy_rl.core.policy_loss import get_policy_loss
    from entropy_rl.core.registry import RegistryError
    from entropy_rl.tasks import TASKS, make_task

    check_ranges(cfg)
    r, o, t, a, s = cfg.rollout, cfg.optim, cfg.train, cfg.algorithm, cfg.sft
    n_seqs = r.prompts_per_step * r.group_size
    need(n_seqs <= MAX_ROLLOUT_SEQS, "rollout.prompts_per_step",
         f"prompts_per_step x group_size = {n_seqs:,} sequences per step, more than {MAX_ROLLOUT_SEQS:,}")
    need(n_seqs % o.mini_batches == 0, "optim.mini_batches",
         f"must divide the rollout batch of {n_seqs} sequences (prompts_per_step x group_size)")
    need(o.lr * o.weight_decay < 1, "optim.weight_decay",
         f"lr x weight_decay must be < 1 (AdamW multiplies every weight by 1 - lr x weight_decay), got {o.lr * o.weight_decay:g}")
    need(t.eval_every == 0 or t.eval_problems >= 1, "train.eval_problems", "must be >= 1 when train.eval_every > 0")
    need(t.eval_problems * t.eval_samples <= MAX_EVAL_SEQS, "train.eval_samples",
         f"eval_problems x eval_samples = {t.eval_problems * t.eval_samples:,} sequences per evaluation, "
         f"more than {MAX_EVAL_SEQS:,}")
    need(t.device in ("cpu", "cuda", "auto"), "train.device", f"must be cpu, cuda or auto, got {brief(t.device)}")
    need(t.device != "cuda" or torch.cuda.is_available(), "train.device", "cuda requested but no CUDA device is available")
    check_sinks(t.sinks)
    need(a.loss_agg_mode in AGG_MODES, "algorithm.loss_agg_mode", f"must be one of {', '.join(AGG_MODES)}, got {brief(a.loss_agg_mode)}")
    need(a.selection_scope in ("minibatch", "microbatch"), "algorithm.selection_scope",
         f"must be minibatch or microbatch, got {brief(a.selection_scope)}")
    need(a.kl_estimator in KL_ESTIMATORS, "algorithm.kl_estimator", f"must be one of {', '.join(KL_ESTIMATORS)}")
    correction_spec(cfg)
    need(cfg.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype", f"unknown dtype {brief(cfg.model.dtype)}")

    from entropy_rl.rollout.base import ENGINES
    import entropy_rl.rollout.hf  # noqa: F401  (registers the built-in engine)

    need(r.engine in ENGINES, "rollout.engine", f"unknown rollout engine {brief(r.engine)}; valid: {', '.join(ENGINES.names())}")
    need(r.engine != "vllm" or importlib.util.find_spec("vllm") is not None, "rollout.engine",
         "the vllm engine needs vLLM: pip install entropy-rl[vllm]")
    try:
        ENGINES.get(r.engine).parse_params(r.engine_params, "rollout.engine_params")
    except ParamsError as e:
        raise ConfigError(str(e)) from None
    entries = {}
    for where, getter, name in (("algorithm.method", get_policy_loss, a.method),
                                ("algorithm.advantage", get_advantage, a.advantage), ("task.name", TASKS.get, cfg.task.name)):
        try:
            entries[where] = getter(name)
        except RegistryError as e:
            raise ConfigError(f"{where}: {e}") from None
    try:
        entries["algorithm.method"].parse_params(a.method_params, "algorithm.method_params")
        adv_params = entries["algorithm.advantage"].parse_params(a.advantage_params, "algorithm.advantage_params")
        entries["task.name"].parse_params(cfg.task.params, "task.params")
    except ParamsError as e:
        raise ConfigError(str(e)) from None
    check_strategy(r.strategy, r.strategy_params)
    if getattr(adv_params, "scale_by_std", False):
        need(r.group_size >= 2, "rollout.group_size", "GRPO std scaling needs groups of >= 2 responses (a group of 1 has no std)")

    try:  # build it: dataset files are read and checked (bad rows named) before any model
        task = make_task(cfg.task.name, **cfg.task.params)
        task.prompts("train", 1, seed=t.seed)
        if t.eval_every > 0 or s.enabled:  # evaluation and the SFT accuracy check draw eval problems
            task.prompts("eval", 1, seed=t.seed)
    except (ValueError, RuntimeError, OSError, ImportError) as e:
        raise ConfigError(f"task.params: {e}") from None
    positions = check_model(cfg.model, vocab=len(task.alphabet) + 3)
    check_context(cfg, task, policy_tokenizer(cfg, task), positions)
    validate_method_requirements(cfg)


def correction_spec(cfg: Config) -> Any:
    """The parsed `algorithm.rollout_correction` (a core.rollout_correction.CorrectionSpec).

    Raises:
        ConfigError: an unknown `rollout_is` level or `rollout_rs` option, or a malformed threshold, naming the key.
    """
    from entropy_rl.core.rollout_correction import parse_correction

    c = cfg.algorithm.rollout_correction
    try:
        return parse_correction(c.rollout_is, c.rollout_is_threshold, c.rollout_is_batch_normalize, c.rollout_rs,
                                c.rollout_rs_threshold)
    except ValueError as e:
        raise ConfigError(f"algorithm.rollout_correction.{e}") from None


def check_strategy(name: str, params: dict[str, Any]) -> None:
    """`rollout.strategy` is registered and `rollout.strategy_params` fit its Params (ConfigError naming the key)."""
    from entropy_rl.core.registry import RegistryError
    from entropy_rl.rollout.strategies import make_strategy

    try:
        make_strategy(name, params)
    except RegistryError as e:
        raise ConfigError(f"rollout.strategy: {e}") from None
    except ParamsError as e:
        raise ConfigError(str(e)) from None


def policy_tokenizer(cfg: Config, task: Any) -> Any:
    """The tokenizer the run will use: the checkpoint's (model.path) or the char tokenizer of the task."""
    from entropy_rl.models.build import load_tokenizer
    from entropy_rl.models.char_tokenizer import build_char_tokenizer

    if cfg.model.path is None:
        return build_char_tokenizer(task.alphabet)
    try:
        return load_tokenizer(Path(cfg.model.path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path: cannot load the tokenizer of '{cfg.model.path}': {e}") from None


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


def pick_device(name: str, key: str = "train.device") -> torch.device:
    """cpu | cuda | auto -> torch.device (auto = cuda when available); ConfigError naming `key` for cuda without
    a CUDA device."""
    import torch  # light module: torch only when a device is picked

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"{key}: must be cpu, cuda or auto, got '{name}'")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: cuda requested but no CUDA device is available")
    return torch.device(name)
