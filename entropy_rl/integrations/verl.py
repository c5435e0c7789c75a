"""entropy-rl inside verl 0.9.1: the catalogue as verl policy losses, our entropy metrics in verl's logs.

Install with the `verl` extra (`pip install "entropy-rl[verl]"` in a verl 0.9.1 environment). The package
declares a `verl.plugins` entry point (`entropy_rl.integrations.verl_plugin`), so every process that imports
verl (the driver, the trainer and each Ray worker) calls `install()`; nothing else is needed. With
`VERL_USE_EXTERNAL_PLUGINS=none`, set `VERL_USE_EXTERNAL_MODULES=entropy_rl.integrations.verl_plugin` instead.

`install()` does three things:

1. Registers every catalogue method in verl's policy-loss registry (`verl.trainer.ppo.core_algos.
   register_policy_loss`) as `entropy_rl.<name>`; a job picks one with
   `actor_rollout_ref.actor.policy_loss.loss_mode=entropy_rl.steer`. A method that cannot run faithfully
   in verl is registered too, but refuses with the reason (`method_tier`).
2. Wraps verl's worker-level loss (`verl.workers.utils.losses.ppo_loss`, which the engine worker binds as
   `partial(ppo_loss, config=...)`) so that, during its call, the registered loss can read what verl gives
   `ppo_loss` but not a registered policy loss: the update pass's entropy (`model_output["entropy"]`, with
   gradient) and the micro-batch's TensorDict (the pre-update pass's entropy, field "entropy", and
   "ref_log_prob"). verl's own `ppo_loss` still runs: its entropy bonus, KL loss and metric aggregation.
3. Registers the trainer `entropy_rl` (`trainer.v1.trainer_mode=entropy_rl`): verl's sync PPO trainer that
   also logs our entropy metrics of each rollout batch (`entropy/*`, `dynamics/cov_logp_adv`, from the
   pre-update pass, over the whole batch) before the actor update.

The method's parameters come from the verl config. verl builds `policy_loss` from its `_target_`
(`verl.workers.config.PolicyLossConfig`, which takes no unknown keys); point it at `PolicyLossConfig` below:

    actor_rollout_ref.actor.policy_loss._target_=entropy_rl.integrations.verl.PolicyLossConfig
    actor_rollout_ref.actor.policy_loss.loss_mode=entropy_rl.steer
    +actor_rollout_ref.actor.policy_loss.entropy_rl.weight_min=0.8       # any field of the method's Params
    +actor_rollout_ref.actor.policy_loss.selection_scope=microbatch      # methods with a selection (see tiers)

Without the `_target_` line the method runs with its default Params. The config is checked when verl builds
it (on the driver, in `validate_config`, before any GPU work): unknown method, refused method, bad Params.

How verl's numbers map onto ours (each micro-batch, `verl_policy_loss`): log_prob, old_log_prob, advantages,
response_mask are our logp, old_logp, adv, mask; the aggregation is verl's `loss_agg_mode` with verl's
mini-batch normalisers (`config.global_batch_info`: tokens and sequences of the global mini-batch, times
dp_size, which FSDP divides back out when it averages gradients over data-parallel ranks), so summing the
micro-batch losses of every rank gives our mini-batch loss exactly. verl's `token-sum` mode is not one of
ours and is refused. verl's rollout-correction weights (`rollout_is_weights`, from its
`algorithm.rollout_correction`) multiply the method's per-token loss before aggregation, as our trainer applies
its own (`algorithm.rollout_correction`, train/update.py); verl's rejection reaches us as the response mask.
Selections see one micro-batch only: see `method_tier`.
"""

from __future__ import annotations

import contextvars
import importlib.abc
import importlib.util
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Mapping

import torch
from torch import Tensor
from verl.workers.config import PolicyLossConfig as _VerlPolicyLossConfig

from entropy_rl.core.aggregate import AGG_MODES, Aggregation
from entropy_rl.core.policy_loss import (
    POLICY_LOSSES,
    TOKEN_INPUTS,
    check_inputs,
    get_policy_loss,
    run_select,
    step_context,
)
from entropy_rl.core.types import PolicyInputs
from entropy_rl.metrics.dynamics import cov_logp_adv, entropy_stats

__all__ = [
    "PREFIX",
    "PolicyLossConfig",
    "Tier",
    "VERL_VERSION",
    "VerlIntegrationError",
    "install",
    "method_tier",
    "rollout_entropy_metrics",
    "verl_policy_loss",
    "worker_ppo_loss",
]

VERL_VERSION = "0.9.1"  # the verl release this adapter is written and tested against
PREFIX = "entropy_rl."  # verl loss_mode = PREFIX + our method name
TRAINER_NAME = "entropy_rl"  # trainer.v1.trainer_mode of the trainer that logs our entropy metrics
SCOPES = ("minibatch", "microbatch")
# Where verl keeps each per-token input a method may declare, and how a run supplies it.
SUPPLY: dict[str, str] = {
    "entropy": "set actor_rollout_ref.actor.calculate_entropy=True (verl then computes the update pass's entropy)",
    "old_entropy": "run verl's v1 trainer (trainer.use_v1=True, the default), which keeps the pre-update pass's "
                   "entropy in the batch as 'entropy'; the legacy trainer drops it",
    "ref_logp": "enable a reference policy (actor_rollout_ref.actor.use_kl_loss=True) so the batch holds "
                "'ref_log_prob'",
}


class VerlIntegrationError(ValueError):
    """A verl setting or method that entropy-rl cannot run faithfully; the message says why and what to change."""


@dataclass(frozen=True)
class Tier:
    """How a method runs inside verl.

    Attributes:
        level: "full" (our trainer's numbers), "microbatch-selection" (exact when one micro-batch is the whole
            optimizer mini-batch on one rank, else only with `selection_scope=microbatch`: our trainer's
            `algorithm.selection_scope: microbatch`), or "refused".
        needs: per-token inputs beyond logp/old_logp/adv/mask (TOKEN_INPUTS names), supplied by the
            worker-level seam; empty when verl's registry call alone carries everything.
        reason: why the method is refused, or "" when it runs.
    """

    level: str
    needs: tuple[str, ...] = ()
    reason: str = ""


def method_tier(name: str) -> Tier:
    """The tier of catalogue method `name` inside verl 0.9.1 (see `Tier`); KeyError-like error if unknown."""
    method = get_policy_loss(name).obj
    if method.make_state is not None:
        return Tier("refused", reason=(
            "it has a method state that the trainer drives every step (before_update on the whole rollout batch, "
            "after_update with the step's metrics) and checkpoints; verl 0.9.1 gives a policy loss no step hook "
            "and no checkpoint slot, so the state would diverge across ranks and be lost on resume"))
    features = sorted(k for k, _ in method.old_features + method.cur_features)
    if features:
        return Tier("refused", reason=(
            f"it needs per-token features computed from the logits ({', '.join(features)}); verl's loss path "
            "receives log-probs and entropy only, never the logits"))
    needs = tuple(sorted(method.inputs & set(TOKEN_INPUTS)))
    return Tier("microbatch-selection" if method.select is not None else "full", needs)


@dataclass
class PolicyLossConfig(_VerlPolicyLossConfig):
    """verl's `PolicyLossConfig` plus the entropy-rl method's settings (select it with `_target_`, see module doc).

    Attributes:
        entropy_rl: the method's Params fields, e.g. {"weight_min": 0.8}; defaults for the rest.
        selection_scope: "minibatch" (default: refuse a per-micro-batch selection unless one micro-batch is the
            whole mini-batch) or "microbatch" (select per micro-batch, as verl's own clip_cov and kl_cov do).
    """

    entropy_rl: dict = field(default_factory=dict)
    selection_scope: str = "minibatch"

    def __post_init__(self) -> None:
        if self.selection_scope not in SCOPES:
            raise VerlIntegrationError(
                f"policy_loss.selection_scope must be one of {', '.join(SCOPES)}, got {self.selection_scope!r}")
        if self.loss_mode.startswith(PREFIX):
            method_params(self.loss_mode[len(PREFIX):], self.entropy_rl)
        elif self.entropy_rl:
            raise VerlIntegrationError(
                f"policy_loss.entropy_rl is set but loss_mode {self.loss_mode!r} is not an entropy-rl method "
                f"({PREFIX}<name>)")


def method_params(name: str, settings: Mapping[str, Any] | None) -> Any:
    """The Params of method `name` from the verl config's `entropy_rl` mapping; clear error if refused or invalid."""
    if name not in POLICY_LOSSES.names():
        raise VerlIntegrationError(
            f"unknown entropy-rl method '{name}' in loss_mode '{PREFIX}{name}'; "
            f"known: {', '.join(POLICY_LOSSES.names())}")
    tier = method_tier(name)
    if tier.level == "refused":
        raise VerlIntegrationError(f"{PREFIX}{name} cannot run inside verl {VERL_VERSION}: {tier.reason}")
    try:
        return get_policy_loss(name).make_params(**dict(settings or {}))
    except (TypeError, ValueError) as e:
        raise VerlIntegrationError(f"{PREFIX}{name}: policy_loss.entropy_rl: {e}") from None


# ---- the worker-level seam: what verl's ppo_loss sees, visible to the registered loss during its call ----

_MICRO_BATCH: contextvars.ContextVar[tuple[Any, Any] | None] = contextvars.ContextVar(
    "entropy_rl_verl_micro_batch", default=None)
_ORIGINAL: dict[str, Callable[..., Any]] = {}  # verl's own functions that install() wrapped


def worker_ppo_loss(config: Any, model_output: Any, data: Any, dp_group: Any = None) -> Any:
    """verl's `ppo_loss(config, model_output, data, dp_group)`, with this micro-batch visible to our methods.

    Same arguments and result as `verl.workers.utils.losses.ppo_loss` (it runs it); `install()` puts this in
    its place. Only a registered entropy-rl loss reads the micro-batch; every other loss_mode is unaffected.
    """
    token = _MICRO_BATCH.set((model_output, data))
    try:
        return _ORIGINAL["ppo_loss"](config, model_output, data, dp_group)
    finally:
        _MICRO_BATCH.reset(token)


def micro_batch_inputs(name: str, needs: tuple[str, ...], shape: torch.Size) -> dict[str, Tensor]:
    """The per-token inputs `needs` of the current micro-batch, padded [B, T] like verl pads log_prob.

    Raises:
        VerlIntegrationError: outside `worker_ppo_loss`, or when the run does not supply an input (with how to).
    """
    if not needs:
        return {}
    current = _MICRO_BATCH.get()
    if current is None:
        raise VerlIntegrationError(
            f"{PREFIX}{name} needs {', '.join(needs)}, which verl passes only to its worker loss "
            "(verl.workers.utils.losses.ppo_loss): call install() before verl's engine worker is imported")
    model_output, data = current
    from verl.workers.utils.padding import no_padding_2_padding

    out: dict[str, Tensor] = {}
    for need in needs:
        if need == "entropy":
            value = model_output.get("entropy", None)
            value = None if value is None else no_padding_2_padding(value, data)
        else:
            key = {"old_entropy": "entropy", "ref_logp": "ref_log_prob"}[need]
            value = data.select(key).to_padded_tensor()[key] if key in data.keys() else None
        if value is None:
            raise VerlIntegrationError(f"{PREFIX}{name} needs `{need}` ({TOKEN_INPUTS[need]}): {SUPPLY[need]}")
        if value.shape != shape:
            raise VerlIntegrationError(
                f"{PREFIX}{name}: `{need}` from verl has shape {tuple(value.shape)}, log_prob {tuple(shape)}")
        out[need] = value
    return out


def _selection_allowed(scope: str, dp_size: int, rows: int, global_batch_size: float | None) -> bool:
    """Whether a selection on this micro-batch is faithful (it is the whole mini-batch) or opted into."""
    whole = dp_size == 1 and global_batch_size is not None and rows == int(global_batch_size)
    return scope == "microbatch" or whole


def verl_policy_loss(
    name: str,
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Method `name` as a verl policy loss on one micro-batch (verl's `PolicyLossFn` signature, plus the name).

    Args:
        name: our method name (verl's loss_mode without the `entropy_rl.` prefix).
        old_log_prob: [B, T] pre-update (or rollout) log-probs.
        log_prob: [B, T] current log-probs, with gradient.
        advantages: [B, T] advantages.
        response_mask: [B, T] response mask (bool or 0/1).
        loss_agg_mode: verl's `actor.loss_agg_mode`; one of our AGG_MODES.
        config: verl's ActorConfig (or any object with `policy_loss` and `global_batch_info`); None = defaults.
        rollout_is_weights: [B, T] verl's detached rollout-correction weights, or None; they multiply the method's
            per-token loss (as in our trainer).

    Returns:
        (loss, metrics): the micro-batch's share of the mini-batch loss, times dp_size as verl's `agg_loss`
        scales it; our metrics as Python floats (verl averages them over micro-batches and prefixes `actor/`).

    Raises:
        VerlIntegrationError: a refused method or setting, a missing input, or an unopted per-micro-batch selection.
    """
    policy_loss_cfg = getattr(config, "policy_loss", None) or {}
    params = method_params(name, policy_loss_cfg.get("entropy_rl", None))
    scope = policy_loss_cfg.get("selection_scope", "minibatch")
    if loss_agg_mode not in AGG_MODES:
        raise VerlIntegrationError(
            f"{PREFIX}{name}: actor.loss_agg_mode '{loss_agg_mode}' is not one of entropy-rl's: {', '.join(AGG_MODES)}")
    info = dict(getattr(config, "global_batch_info", None) or {})
    dp_size = int(info.get("dp_size") or 1)
    mask = response_mask.to(log_prob.dtype)
    num_tokens = info.get("batch_num_tokens")
    global_batch_size = info.get("global_batch_size")
    # verl's agg_loss without global info normalises by this call's tokens and its non-empty sequences
    num_seqs = float(global_batch_size) if global_batch_size is not None else float((mask.sum(-1) > 0).sum())
    agg = Aggregation(loss_agg_mode, norm_length=info.get("loss_scale_factor") or mask.shape[-1])
    entry = get_policy_loss(name)
    ctx = step_context(None, params, agg).for_minibatch(mask.sum() if num_tokens is None else num_tokens, num_seqs)

    tier = method_tier(name)
    extra = micro_batch_inputs(name, tier.needs, log_prob.shape)
    x = PolicyInputs(log_prob, old_log_prob, advantages, mask, extra.get("entropy"), extra.get("old_entropy"),
                     extra.get("ref_logp"))
    try:
        check_inputs(entry, x)
    except ValueError as e:
        raise VerlIntegrationError(str(e)) from None
    if entry.obj.select is not None and not _selection_allowed(scope, dp_size, log_prob.shape[0], global_batch_size):
        raise VerlIntegrationError(
            f"{PREFIX}{name} selects tokens over the optimizer mini-batch, but verl calls a policy loss per "
            f"micro-batch ({log_prob.shape[0]} sequences on one of {dp_size} ranks, mini-batch "
            f"{global_batch_size}): set +actor_rollout_ref.actor.policy_loss.selection_scope=microbatch to select "
            "per micro-batch (our algorithm.selection_scope: microbatch; verl's clip_cov and kl_cov do the same), "
            "or make one micro-batch the whole mini-batch on a single rank")
    sel = run_select(entry, params, x, ctx, None)
    out = entry.obj.loss(x, params, sel, ctx)
    per_token = out.per_token if rollout_is_weights is None else out.per_token * rollout_is_weights.detach()
    loss = ctx.agg.reduce(per_token, mask) * dp_size
    metrics = {k: float(v.detach()) for k, v in {**out.metrics, **sel.metrics}.items()}
    return loss, metrics


def _registered_loss(name: str) -> Callable[..., tuple[Tensor, dict[str, float]]]:
    """verl's PolicyLossFn for method `name` (registered as `entropy_rl.<name>`)."""

    def loss_fn(
        old_log_prob: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        return verl_policy_loss(name, old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                                rollout_is_weights)

    loss_fn.__name__ = loss_fn.__qualname__ = f"entropy_rl_{name}"
    loss_fn.__doc__ = f"entropy-rl method '{name}' as a verl policy loss (entropy_rl.integrations.verl)."
    return loss_fn


# ---- our entropy metrics of the rollout batch, logged by the `entropy_rl` trainer ----

ENTROPY_FIELDS = ("entropy", "old_log_probs", "advantages", "response_mask")


def rollout_entropy_metrics(entropy: Tensor, old_log_prob: Tensor, advantages: Tensor, response_mask: Tensor,
                            keep: Tensor | None = None) -> dict[str, float]:
    """`entropy/*` and `dynamics/cov_logp_adv` of one rollout batch, as our trainer logs them.

    Args:
        entropy: [B, T] pre-update pass token entropies (verl's field "entropy"; tempered, full vocabulary).
        old_log_prob: [B, T] pre-update pass log-probs of the sampled tokens.
        advantages: [B, T] advantages.
        response_mask: [B, T] response mask.
        keep: [B] bool, False for rows verl added as padding (tag `is_padding`); None keeps all.

    Returns:
        metric key -> float (keys defined in entropy_rl.metrics.names).
    """
    mask = response_mask.bool()
    if keep is not None:
        mask = mask & keep.to(mask.device)[:, None]
    out = entropy_stats(entropy, mask, advantages)
    out["dynamics/cov_logp_adv"] = cov_logp_adv(old_log_prob, advantages, mask)
    return out


def fetch_entropy_metrics(kv_batch_get: Callable[..., Any], batch: Any) -> dict[str, float]:
    """`rollout_entropy_metrics` of a verl v1 batch (a TransferQueue KVBatchMeta) read with `kv_batch_get`."""
    data = kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(ENTROPY_FIELDS))
    keep = torch.tensor([not tag.get("is_padding", False) for tag in batch.tags], dtype=torch.bool)
    data = data.to_padded_tensor()
    return rollout_entropy_metrics(data["entropy"], data["old_log_probs"], data["advantages"], data["response_mask"],
                                   keep)


def register_trainer_class(trainer_sync: ModuleType) -> type:
    """Register verl's sync PPO trainer plus our entropy metrics as trainer mode `entropy_rl`; returns the class."""
    import transfer_queue as tq
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer

    if TRAINER_NAME in TRAINER_REGISTRY:
        return TRAINER_REGISTRY[TRAINER_NAME]

    class EntropyRLTrainer(trainer_sync.PPOTrainerSync):
        """verl's sync PPO trainer that also logs entropy-rl's entropy metrics of each batch before the update."""

        def _update_actor(self, batch: Any, metrics: dict) -> Any:
            metrics.update(fetch_entropy_metrics(tq.kv_batch_get, batch))
            return super()._update_actor(batch, metrics)

    return register_trainer(TRAINER_NAME)(EntropyRLTrainer)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Run `callback(module)` once, right after module `name` is first executed (a one-shot import hook).

    verl's trainer registry lives in a module too heavy to import from a plugin (it pulls in the rollout
    stack), so the trainer is registered when verl itself imports it, before it looks the trainer up.
    """

    def __init__(self, name: str, callback: Callable[[ModuleType], Any]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _CallbackLoader(spec.loader, self.callback)
        return spec


class _CallbackLoader(importlib.abc.Loader):
    """A loader that runs the wrapped loader, then the callback on the executed module."""

    def __init__(self, loader: Any, callback: Callable[[ModuleType], Any]) -> None:
        self.loader, self.callback = loader, callback

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.callback(module)

    def __getattr__(self, attr: str) -> Any:  # get_source, get_filename, ... of the wrapped loader
        return getattr(self.loader, attr)


def call_after_import(name: str, callback: Callable[[ModuleType], Any]) -> None:
    """`callback(module)` now if module `name` is loaded, else right after it is first imported."""
    if name in sys.modules:
        callback(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, callback))


# ---- install ----

def install() -> list[str]:
    """Register every catalogue method in verl as `entropy_rl.<name>` and set up the seams (idempotent).

    Returns:
        The verl loss_mode names registered (refused methods included: they raise with their reason).

    Raises:
        VerlIntegrationError: when the installed verl is not VERL_VERSION.
    """
    import verl
    from verl.trainer.ppo import core_algos
    from verl.workers.utils import losses

    if verl.__version__ != VERL_VERSION:
        raise VerlIntegrationError(
            f"entropy-rl's verl adapter is written against verl {VERL_VERSION} (its loss seams), found "
            f"verl {verl.__version__}: install verl=={VERL_VERSION}")
    get_policy_loss("ppo_clip")  # registers our catalogue
    names = []
    for name in POLICY_LOSSES.names():
        verl_name = PREFIX + name
        if verl_name not in core_algos.POLICY_LOSS_REGISTRY:
            core_algos.register_policy_loss(verl_name)(_registered_loss(name))
        names.append(verl_name)
    if losses.ppo_loss is not worker_ppo_loss:
        _ORIGINAL["ppo_loss"] = losses.ppo_loss
        losses.ppo_loss = worker_ppo_loss
    workers = sys.modules.get("verl.workers.engine_workers")  # bound `ppo_loss` at its import, if already imported
    if workers is not None and getattr(workers, "ppo_loss", None) is _ORIGINAL["ppo_loss"]:
        workers.ppo_loss = worker_ppo_loss
    call_after_import("verl.trainer.ppo.v1.trainer_sync", register_trainer_class)
    return names
