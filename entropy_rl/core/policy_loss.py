"""The policy-loss registry and the public `policy_loss` entry point.

A method has two phases so that token selection cannot depend on micro-batch size:
  - `select(x, params, ctx, generator) -> TokenWeights` (optional): once per optimizer mini-batch under no_grad;
  - `loss(x, params, sel, ctx) -> LossOutput`: per micro-batch on the rows of that micro-batch, with the rows of
    the selection (an empty `TokenWeights` for a method without `select`).
`params` are the user's settings (a frozen Params dataclass, never written at run time); `ctx` is the frozen
`StepContext` of the step: the method state's run-time values and the trainer's aggregation.

A stateful method's state (`make_state(params)`) is driven by the trainer each step:
  state.before_update(x)  ->  ctx = step_context(state, params, agg)  ->  update  ->  state.after_update(metrics)
`state.values(params)` (inside `step_context`) is pure; only before_update / after_update change the state.

A method declares what it needs from the trainer: `inputs` (per-token tensors: "entropy", "old_entropy",
"ref_logp", plus its features) and `requires` (trainer metrics its state reads in `after_update`, logged at
every step). Config validation refuses a run that cannot supply them (`train.config.validate_method_requirements`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Literal, Mapping, Protocol

import torch
from torch import Tensor

from entropy_rl.core.aggregate import Aggregation
from entropy_rl.core.registry import Entry, Registry
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights

Stage = Literal["loss", "regularizer", "advantage", "rollout"]

# Per-token inputs a method may declare (besides its own features), as named in PolicyInputs.
TOKEN_INPUTS: dict[str, str] = {
    "entropy": "full-vocab H_cur (with grad)",
    "old_entropy": "H_old (pre-update pass)",
    "ref_logp": "reference-model log-probs",
}


class LossFn(Protocol):
    """Per-micro-batch loss: (inputs, params, selection rows, step context) -> LossOutput with per_token [B, T]."""

    def __call__(self, x: PolicyInputs, p: Any, sel: TokenWeights, ctx: StepContext) -> LossOutput: ...


class SelectFn(Protocol):
    """Per-mini-batch selection under no_grad: (inputs, params, step context, generator) -> TokenWeights."""

    def __call__(
        self, x: PolicyInputs, p: Any, ctx: StepContext, generator: torch.Generator | None
    ) -> TokenWeights: ...


class FeatureFn(Protocol):
    """Per-token feature, called per chunk of tokens by `core.token_stats`: (raw logits [n, V], tokens [n],
    temperature (a float, or [n, 1] fp32 for per-token temperatures), params) -> [n] fp32."""

    def __call__(self, logits: Tensor, tokens: Tensor, temperature: float | Tensor, p: Any) -> Tensor: ...


class MethodState(Protocol):
    """Explicit, checkpointed state of a stateful method (adaptive coefficients, anchors, histories).

    Each step the trainer calls `before_update(x)` with the whole rollout batch of the pre-update pass (no
    grad), then `values(p)` once (through `step_context`), runs the update, logs `metrics()`, and calls
    `after_update(metrics)` with the step's metrics (which hold every key the method declares in `requires`).
    `values` is pure: calling it again returns an equal object and leaves `state_dict()` unchanged.
    `state_dict()` holds plain numbers, strings, None, lists, dicts and tensors only (checkpoints store it as
    JSON + tensors).
    """

    def before_update(self, x: PolicyInputs) -> None: ...

    def values(self, p: Any) -> Any: ...

    def after_update(self, metrics: Mapping[str, float]) -> None: ...

    def metrics(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class PolicyLossMethod:
    """A registered policy-loss method.

    Attributes:
        loss: per-micro-batch loss function.
        select: optional per-mini-batch token selection.
        stage: where the method acts (loss, regularizer, ...).
        paper: citation, e.g. "arXiv:2503.14476".
        inputs: per-token inputs `select`, `loss` or the state read: names of TOKEN_INPUTS and the method's
            feature names (`extras`); `check_inputs` enforces them.
        requires: trainer metrics the state's `after_update` reads, which the trainer must log at every step
            (e.g. "dynamics/dH_pred"); config validation refuses a run that does not.
        neutral: parameter overrides under which the method must reduce to `ppo_clip` (contract test), or
            None for a method that has no such setting (e.g. KL-Cov never clips).
        old_features: per-token features computed from the logits of the pre-update pass (no grad), by name
            in `PolicyInputs.extras`.
        cur_features: per-token features computed from the logits of the update forward pass (with grad).
        make_state: builds the method's MethodState from its Params, for stateful methods.
    """

    loss: LossFn
    select: SelectFn | None = None
    stage: Stage = "loss"
    paper: str = ""
    inputs: frozenset[str] = frozenset()
    requires: tuple[str, ...] = ()
    neutral: tuple[tuple[str, Any], ...] | None = None
    old_features: tuple[tuple[str, FeatureFn], ...] = ()
    cur_features: tuple[tuple[str, FeatureFn], ...] = ()
    make_state: Callable[[Any], MethodState] | None = None


POLICY_LOSSES: Registry[PolicyLossMethod] = Registry("policy loss")


def register_policy_loss(
    name: str,
    params_cls: type,
    *,
    select: SelectFn | None = None,
    stage: Stage = "loss",
    paper: str = "",
    inputs: Iterable[str] = (),
    requires: Iterable[str] = (),
    neutral: dict[str, Any] | None = None,
    old_features: dict[str, FeatureFn] | None = None,
    cur_features: dict[str, FeatureFn] | None = None,
    make_state: Callable[[Any], MethodState] | None = None,
    doc: str | None = None,
) -> Callable[[LossFn], LossFn]:
    """Decorator: register a loss function (and its optional selector) under `name`.

    `inputs` names the per-token tensors the method reads (TOKEN_INPUTS); its features are added to them.
    `requires` names the trainer metrics its state reads; a method with `requires` must have a state. The
    one-line doc shown by `entropy-rl methods` is the first line of the module docstring of the loss function
    when `doc` is not given.
    """
    features = {**(old_features or {}), **(cur_features or {})}
    declared = frozenset(inputs)
    unknown = sorted(declared - set(TOKEN_INPUTS) - set(features))
    if unknown:
        raise ValueError(
            f"policy loss '{name}': unknown inputs {unknown}; valid: {sorted(TOKEN_INPUTS)} or its features"
        )
    if tuple(requires) and make_state is None:
        raise ValueError(
            f"policy loss '{name}': `requires` names trainer metrics for a state, but it has no make_state"
        )

    def deco(fn: LossFn) -> LossFn:
        import sys

        module_doc = sys.modules[fn.__module__].__doc__ if fn.__module__ in sys.modules else None
        method = PolicyLossMethod(
            loss=fn,
            select=select,
            stage=stage,
            paper=paper,
            inputs=declared | frozenset(features),
            requires=tuple(requires),
            neutral=None if neutral is None else tuple(sorted(neutral.items())),
            old_features=tuple((old_features or {}).items()),
            cur_features=tuple((cur_features or {}).items()),
            make_state=make_state,
        )
        POLICY_LOSSES.register(name, params_cls, doc=doc or module_doc or fn.__doc__)(method)
        return fn

    return deco


def get_policy_loss(name: str) -> Entry[PolicyLossMethod]:
    """Look up a registered method (the built-in catalogue registers when the `entropy_rl` package loads)."""
    return POLICY_LOSSES.get(name)


def params_dict(p: Any) -> dict[str, Any]:
    """Params dataclass -> plain dict (for logging and YAML)."""
    return {f.name: getattr(p, f.name) for f in fields(p)}


def policy_loss(
    name: str,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropy: Tensor | None = None,
    old_entropy: Tensor | None = None,
    ref_logp: Tensor | None = None,
    extras: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    loss_agg_mode: str = "token-mean",
    values: Any = None,
    **params: Any,
) -> LossOutput:
    """Per-token loss of method `name` on one batch treated as one optimizer mini-batch.

    Runs the method's selection (if any) over the whole batch, then its loss. Aggregate the result with
    `entropy_rl.aggregate(out.per_token, mask, loss_agg_mode)`.

    Args:
        name: registry key (see `entropy-rl methods`).
        logp: [B, T] current log-probs (with gradient).
        old_logp: [B, T] rollout-policy log-probs.
        advantages: [B, T] advantages (or [B], broadcast over T).
        mask: [B, T] response mask.
        entropy: [B, T] H_cur with gradient, for methods that need it.
        old_entropy: [B, T] H_old from the pre-update pass, for methods that need it.
        ref_logp: [B, T] reference log-probs, for methods that use them.
        extras: the method's declared per-token features (e.g. {"lp_proxy": ...}); see `entropy-rl methods`.
        generator: torch.Generator for methods that select at random.
        loss_agg_mode: how the caller aggregates the result (methods that place a batch quantity on tokens,
            e.g. SIREN, need it); normalised over this batch.
        values: the method's run-time values (its state's `values` type, e.g. `epo.EpoValues(history_mean=1.0)`);
            default: those of a fresh state, i.e. the first step of a run.
        **params: the method's Params fields.

    Returns:
        LossOutput with per_token [B, T] and namespaced scalar metrics (the selection's included).
    """
    entry = get_policy_loss(name)
    p = entry.make_params(**params)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logp)
    x = PolicyInputs(
        logp, old_logp, advantages, mask.to(logp.dtype), entropy, old_entropy, ref_logp, dict(extras or {})
    )
    check_inputs(entry, x)
    if values is None and entry.obj.make_state is not None:
        values = entry.obj.make_state(p).values(p)
    ctx: StepContext = StepContext(values, Aggregation(loss_agg_mode))
    sel = run_select(entry, p, x, ctx, generator)
    out = entry.obj.loss(x, p, sel, ctx)
    out.metrics.update(sel.metrics)
    return out


def step_context(state: MethodState | None, p: Any, agg: Aggregation) -> StepContext:
    """The step's frozen context: the state's run-time values for Params `p` (None without a state) and `agg`.

    Pure: builds the values with `state.values(p)`, which must not change the state.
    """
    return StepContext(None if state is None else state.values(p), agg)


def check_inputs(entry: Entry[PolicyLossMethod], x: PolicyInputs) -> None:
    """Raise a clear error when a per-token input the method declares is missing from `x`."""
    for name in sorted(entry.obj.inputs):
        present = getattr(x, name) is not None if name in TOKEN_INPUTS else name in x.extras
        if not present:
            what = TOKEN_INPUTS.get(name, "a per-token feature it declares")
            where = f"`{name}`" if name in TOKEN_INPUTS else f"extras['{name}']"
            raise ValueError(f"method '{entry.name}' needs {where} ({what})")


def run_select(
    entry: Entry[PolicyLossMethod], p: Any, x: PolicyInputs, ctx: StepContext, generator: torch.Generator | None
) -> TokenWeights:
    """Run the method's mini-batch selection on detached inputs under no_grad; empty TokenWeights if it has none.

    Args:
        entry: the registered method.
        p: its Params.
        x: the optimizer mini-batch (or micro-batch when `algorithm.selection_scope` is microbatch), [B, T] each.
        ctx: the step context narrowed to this mini-batch.
        generator: for methods that select at random.

    Returns:
        The selection; pass its rows to `loss`.
    """
    if entry.obj.select is None:
        return TokenWeights()
    with torch.no_grad():
        return entry.obj.select(x.detached(), p, ctx, generator)
