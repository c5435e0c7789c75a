"""The policy-loss registry and the public `policy_loss` entry point.

A method has two phases so that token selection cannot depend on micro-batch size:
  - `select(x, params, generator) -> TokenWeights` (optional): runs once per optimizer mini-batch under no_grad;
  - `loss(x, params, weights) -> LossOutput`: runs per micro-batch on the rows of that micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Literal, Mapping, Protocol

import torch
from torch import Tensor

from entropy_rl.core.registry import Entry, Registry
from entropy_rl.core.types import LossOutput, PolicyInputs, TokenWeights

Stage = Literal["loss", "regularizer", "advantage", "rollout"]


class LossFn(Protocol):
    """Per-micro-batch loss: (inputs, params, selection or None) -> LossOutput with per_token [B, T]."""

    def __call__(self, x: PolicyInputs, p: Any, sel: TokenWeights | None) -> LossOutput: ...


class SelectFn(Protocol):
    """Per-mini-batch selection under no_grad: (inputs, params, generator) -> TokenWeights."""

    def __call__(self, x: PolicyInputs, p: Any, generator: torch.Generator | None) -> TokenWeights: ...


class FeatureFn(Protocol):
    """Per-token feature from logits: (logits [B, T, V], tokens [B, T], temperature, params) -> [B, T] fp32."""

    def __call__(self, logits: Tensor, tokens: Tensor, temperature: float, p: Any) -> Tensor: ...


class MethodState(Protocol):
    """Explicit, checkpointed state of a stateful method (adaptive coefficients, anchors, histories).

    The trainer calls, each step: `params(p)` to get this step's parameters, `before_update(x)` with the whole
    rollout batch of the pre-update pass (no grad), the update, then `after_update(metrics)` with the step's
    metrics (pre-update entropy etc.). `metrics()` is logged; `state_dict()` goes into checkpoints.
    """

    def params(self, p: Any) -> Any: ...

    def before_update(self, x: PolicyInputs) -> None: ...

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
        needs_entropy: needs H_cur (full-vocab entropy of the update forward pass, with gradient).
        needs_old_entropy: needs H_old (full-vocab entropy from the pre-update pass).
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
    needs_entropy: bool = False
    needs_old_entropy: bool = False
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
    needs_entropy: bool = False,
    needs_old_entropy: bool = False,
    neutral: dict[str, Any] | None = None,
    old_features: dict[str, FeatureFn] | None = None,
    cur_features: dict[str, FeatureFn] | None = None,
    make_state: Callable[[Any], MethodState] | None = None,
    doc: str | None = None,
) -> Callable[[LossFn], LossFn]:
    """Decorator: register a loss function (and its optional selector) under `name`.

    The one-line doc shown by `entropy-rl methods` is the first line of the module docstring of the loss
    function when `doc` is not given.
    """

    def deco(fn: LossFn) -> LossFn:
        import sys

        module_doc = sys.modules[fn.__module__].__doc__ if fn.__module__ in sys.modules else None
        method = PolicyLossMethod(
            loss=fn,
            select=select,
            stage=stage,
            paper=paper,
            needs_entropy=needs_entropy,
            needs_old_entropy=needs_old_entropy,
            neutral=None if neutral is None else tuple(sorted(neutral.items())),
            old_features=tuple((old_features or {}).items()),
            cur_features=tuple((cur_features or {}).items()),
            make_state=make_state,
        )
        POLICY_LOSSES.register(name, params_cls, doc=doc or module_doc or fn.__doc__)(method)
        return fn

    return deco


def get_policy_loss(name: str) -> Entry[PolicyLossMethod]:
    """Look up a registered method; importing `entropy_rl.methods` registers the built-in catalogue."""
    import entropy_rl.methods  # noqa: F401  (registration side effect)

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
    **params: Any,
) -> LossOutput:
    """Per-token loss of method `name` on one batch treated as one optimizer mini-batch.

    Runs the method's selection (if any) over the whole batch, then its loss. Aggregate the result with
    `entropy_rl.aggregate(out.per_token, mask, mode)`.

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
        **params: the method's Params fields.

    Returns:
        LossOutput with per_token [B, T] and namespaced scalar metrics.
    """
    entry = get_policy_loss(name)
    p = entry.make_params(**params)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logp)
    x = PolicyInputs(logp, old_logp, advantages, mask.to(logp.dtype), entropy, old_entropy, ref_logp, dict(extras or {}))
    check_inputs(entry, x)
    sel = run_select(entry, p, x, generator)
    out = entry.obj.loss(x, p, sel)
    if sel is not None:
        out.metrics.update(sel.metrics)
    return out


def check_inputs(entry: Entry[PolicyLossMethod], x: PolicyInputs) -> None:
    """Raise a clear error when a method's required tensors are missing."""
    if entry.obj.needs_entropy and x.entropy is None:
        raise ValueError(f"method '{entry.name}' needs `entropy` (H_cur of the current forward pass, with grad)")
    if entry.obj.needs_old_entropy and x.old_entropy is None:
        raise ValueError(f"method '{entry.name}' needs `old_entropy` (H_old from the pre-update pass)")
    for name, _ in entry.obj.old_features + entry.obj.cur_features:
        if name not in x.extras:
            raise ValueError(f"method '{entry.name}' needs extras['{name}'] (a per-token feature it declares)")


def run_select(
    entry: Entry[PolicyLossMethod], p: Any, x: PolicyInputs, generator: torch.Generator | None
) -> TokenWeights | None:
    """Run the method's mini-batch selection on detached inputs, or return None if it has none."""
    if entry.obj.select is None:
        return None
    with torch.no_grad():
        return entry.obj.select(x.detached(), p, generator)
