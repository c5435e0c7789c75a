"""Any registered entropy-rl method as the loss of TRL's `GRPOTrainer`, with our entropy metrics in its logs.

    from trl import GRPOConfig
    from entropy_rl.integrations.trl import EntropyRLGRPOTrainer

    trainer = EntropyRLGRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=...,
                                   method="clip_cov", method_params={"clip_ratio": 2e-4})
    trainer.train()

Tested with TRL 1.16.0 (`pip install 'entropy-rl[trl]'`, pinned in constraints.txt). The subclass keeps TRL's
rollout (transformers or vLLM generation, reward functions, group advantages, reference model, logging,
checkpoints) and replaces its loss with the method's, driven exactly as our own trainer drives it:

- Batches. TRL generates one batch of `per_device_train_batch_size x steps_per_generation` completions per
  process, splits it into micro-batches of `per_device_train_batch_size` (one `compute_loss` each) and steps the
  optimizer every `gradient_accumulation_steps` micro-batches, over `num_iterations` passes. One optimizer
  mini-batch is therefore `gradient_accumulation_steps` consecutive micro-batches on every process; the adapter
  requires `steps_per_generation` to be a multiple of `gradient_accumulation_steps` so a mini-batch never spans
  two generation batches.
- Pre-update pass. After generation, one no-grad pass of the current policy over the generation batch gives
  old_logp, H_old and the method's features (also where TRL itself would skip old log-probs).
- Selection. At the first micro-batch of each optimizer step the method's `select` runs once over the whole
  mini-batch, gathered across processes (every process selects on the same gathered tensors with the same
  seeded generator, `train.batch.seed_for("select", ...)` of the rollout step, pass and mini-batch, as our
  trainer seeds it, and keeps its own rows), on the pre-update values for the first mini-batch of a generation
  and on a no-grad re-scoring by the current policy for later ones: the rule of `entropy_rl.train.loop`.
- Loss. Per micro-batch, the method's `loss` on its rows of the selection, aggregated with the normalisers of
  the whole mini-batch (tokens and sequences summed over micro-batches and processes), so the micro-batch losses
  add up to the mini-batch loss: TRL's logged `loss` is that mini-batch loss. TRL's `loss_type` only picks the
  aggregation (`TRL_LOSS_TYPES`); TRL options that shape its own loss are refused (`REPLACED_OPTIONS`).
  `beta > 0` adds TRL's k3 reference KL (times the ratio when `use_bias_correction_kl`), vLLM's importance
  sampling ratio multiplies the per-token loss, and an MoE router loss is added, all as TRL does.
- Entropy. log-probs and the entropy H_cur (with gradient) come from TRL's fused LM head at TRL's
  `temperature`, the sampling temperature (a different temperature in `generation_kwargs` is refused). A method
  with per-token features reads the full logits instead: the model's plain forward, then `core.token_stats`.
- State. A stateful method's `before_update` sees the whole generation batch (all processes), `after_update`
  runs after its last micro-batch with that step's metrics; the state is saved in every TRL checkpoint
  (`STATE_FILE`) and restored on resume.
- Metrics, added to TRL's logs (`trainer.state.log_history`, every `report_to` backend): our `entropy/*`
  (`entropy_stats` of H_old over the generation batch of all processes: token mean, quantiles, by advantage
  sign), `dynamics/cov_logp_adv`, `dynamics/steer_omega`, `policy/loss` and the method's `policy/*` and
  `method/<name>/*` metrics (token-weighted over the optimizer step). TRL's own `entropy` (the update pass's
  entropy, mean over micro-batches) is kept next to them.

`method_tier(name)` says for each registered method whether it runs here and how (docs/integrations.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from packaging.version import Version
from torch import Tensor

try:
    import trl
    from trl import GRPOConfig, GRPOTrainer
except ImportError as e:  # the extra is not installed
    raise ImportError("entropy_rl.integrations.trl needs TRL 1.x: pip install 'entropy-rl[trl]'") from e

from entropy_rl.core.aggregate import Aggregation
from entropy_rl.core.kl import kl_k3
from entropy_rl.core.policy_loss import (
    POLICY_LOSSES,
    PolicyLossMethod,
    check_inputs,
    get_policy_loss,
    params_dict,
    run_select,
    step_context,
)
from entropy_rl.core.registry import Entry
from entropy_rl.core.token_stats import token_stats
from entropy_rl.core.types import PolicyInputs, StepContext, TokenWeights
from entropy_rl.metrics.dynamics import cov_logp_adv, entropy_stats, steer_omega_signal
from entropy_rl.report.trl_log import CONFIG_FILE
from entropy_rl.train.batch import seed_for
from entropy_rl.train.forward import Features, bind_features, entropy_for_update

TESTED_TRL = "1.16.0"
if Version(trl.__version__).major != 1:
    raise ImportError(f"entropy_rl.integrations.trl supports TRL 1.x (tested with {TESTED_TRL}); "
                      f"found {trl.__version__}")

STATE_FILE = "entropy_rl_method_state.json"  # written into each TRL checkpoint-N/ of a stateful method

# TRL `loss_type` -> our aggregation over the optimizer mini-batch (the adapter always uses mini-batch normalisers;
# TRL's bnpo normalises per micro-batch, its grpo divides a micro-batch sequence mean by the accumulation steps).
TRL_LOSS_TYPES: dict[str, str] = {
    "dapo": "token-mean",
    "bnpo": "token-mean",
    "grpo": "seq-mean-token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "luspo": "seq-mean-token-sum",
}

# GRPOConfig options that shape TRL's own loss, which the method replaces: (option, TRL default, what to use).
REPLACED_OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("epsilon", 0.2, "set eps_low / eps_high in method_params"),
    ("epsilon_high", None, "set eps_high in method_params"),
    ("delta", None, "set clip_ratio_c in method_params for a dual clip"),
    ("importance_sampling_level", "token", "use method 'gspo' for sequence-level ratios"),
    ("top_entropy_quantile", 1.0, "use method 'top_entropy'"),
    ("entropy_coef", 0.0, "use method 'entropy_bonus'"),
    ("use_adaptive_entropy", False, "use method 'entropy_bonus' with adaptive=True"),
    ("off_policy_mask_threshold", None, "off-policy sequence masking is not part of the entropy-rl methods"),
)

# Trainer metrics (PolicyLossMethod.requires) the adapter logs at every rollout step.
SUPPLIED_METRICS = frozenset({"entropy/token_mean"})


def method_tier(name: str) -> tuple[str, str]:
    """How method `name` runs inside TRL: ("full", how) or ("refused", why), from its declared needs.

    Args:
        name: a registered policy-loss method.

    Returns:
        (tier, one-line explanation). "full": the same selection scope, inputs, state and aggregation as our
        own trainer. "refused": `EntropyRLGRPOTrainer` raises naming the reason.
    """
    m = get_policy_loss(name).obj
    missing = [r for r in m.requires if r not in SUPPLIED_METRICS]
    if missing:
        why = f"its state reads {', '.join(missing)} (our dynamics probe), which the TRL adapter does not run"
        return "refused", why
    notes = []
    if m.select is not None:
        notes.append("selection once per optimizer mini-batch, gathered across processes")
    if "entropy" in m.inputs:
        notes.append("H_cur with gradient from TRL's fused LM head")
    if "old_entropy" in m.inputs:
        notes.append("H_old from the adapter's pre-update pass")
    features = [n for n, _ in m.old_features + m.cur_features]
    if features:
        notes.append(f"features {', '.join(features)} read the full logits: plain forward + token_stats, "
                     "[B, T, V] logits per micro-batch instead of TRL's fused LM head")
    if "ref_logp" in m.inputs:
        notes.append("needs beta > 0 (TRL's reference log-probs)")
    if m.make_state is not None:
        notes.append("state stepped once per generation batch, saved in TRL checkpoints")
    return "full", "; ".join(notes) or "per-token loss and mini-batch aggregation only"


def tier_table_markdown() -> str:
    """The TRL tier table of docs/integrations.md: one row per registered method (generated, test-checked)."""
    get_policy_loss("ppo_clip")  # the catalogue registers when the package loads
    lines = ["| method | tier | how / why |", "|---|---|---|"]
    for name in POLICY_LOSSES.names():
        tier, why = method_tier(name)
        lines.append(f"| `{name}` | {tier} | {why} |")
    return "\n".join(lines) + "\n"


# Our advantage estimators that TRL's own group advantages reproduce, and the GRPOConfig setting that does it.
ADVANTAGES_IN_TRL: dict[str, str] = {
    "grpo": 'scale_rewards="group"',  # (r - mean) / (std + eps), Bessel std; eps 1e-4 in TRL, 1e-6 in ours
    "dr_grpo": 'scale_rewards="none"',  # r - mean
}
LOSS_TYPE_FOR: dict[str, str] = {"token-mean": "dapo", "seq-mean-token-mean": "grpo",
                                 "seq-mean-token-sum-norm": "dr_grpo", "seq-mean-token-sum": "luspo"}


def variant_in_trl(overrides: Mapping[str, Any]) -> tuple[str, str]:
    """How a method variant (a partial config of ours) runs in TRL: (tier, the TRL settings or why not).

    Args:
        overrides: the variant's partial config (`entropy_rl.presets.Variant.overrides`).

    Returns:
        ("full", settings): the method's tier is full and every setting has a TRL equivalent; ("approximate",
        settings and what differs): an advantage estimator TRL lacks (TRL's group advantages replace it) or a
        setting the adapter does not carry; ("refused", why): the method is refused.
    """
    from entropy_rl.presets import flatten

    flat = flatten(dict(overrides))
    method = flat.pop("algorithm.method", "ppo_clip")
    tier, why = method_tier(method)
    if tier == "refused":
        return tier, why
    params = {k.split(".", 2)[2]: flat.pop(k) for k in list(flat) if k.startswith("algorithm.method_params.")}
    out = [f'method="{method}"'] + ([f"method_params={params}"] if params else [])
    out.append(f'loss_type="{LOSS_TYPE_FOR[flat.pop("algorithm.loss_agg_mode", "token-mean")]}"')
    adv = flat.pop("algorithm.advantage", "grpo")
    adv_params = {k: flat.pop(k) for k in list(flat) if k.startswith("algorithm.advantage_params.")}
    if adv in ADVANTAGES_IN_TRL and not adv_params:
        out.append(ADVANTAGES_IN_TRL[adv])
    else:
        tier = "approximate"
        out.append(f"advantage '{adv}' has no TRL equivalent: TRL's group advantages replace it")
    if "optim.mini_batches" in flat:  # optimizer steps per generation batch (per pass)
        k = flat.pop("optim.mini_batches")
        out.append(f"steps_per_generation = {f'{k} x ' if k != 1 else ''}gradient_accumulation_steps")
    for key, value in flat.items():
        tier = "approximate"
        out.append(f"{key}={value} not carried into TRL")
    return tier, "; ".join(out)


def variants_table_markdown() -> str:
    """The table of packaged method variants in TRL for docs/integrations.md (generated, test-checked)."""
    from entropy_rl.presets import packaged_variants

    lines = ["| variant | tier | TRL settings |", "|---|---|---|"]
    for v in packaged_variants():
        tier, how = variant_in_trl(v.overrides)
        lines.append(f"| `{v.name}` | {tier} | {how} |")
    return "\n".join(lines) + "\n"


def check_trl_config(args: GRPOConfig, entry: Entry[PolicyLossMethod]) -> None:
    """Refuse a GRPOConfig under which method `entry` would not run as in our trainer (one-line ValueError).

    Args:
        args: the resolved GRPOConfig (after its __post_init__).
        entry: the registered method.

    Raises:
        ValueError: naming the option and what to do instead.
    """
    tier, why = method_tier(entry.name)
    if tier == "refused":
        raise ValueError(f"method '{entry.name}' cannot run in TRL: {why}")
    if args.loss_type not in TRL_LOSS_TYPES:
        raise ValueError(f"GRPOConfig.loss_type='{args.loss_type}' is a TRL loss of its own; with an entropy-rl method "
                         f"loss_type only picks the aggregation, one of {', '.join(TRL_LOSS_TYPES)}")
    for option, default, hint in REPLACED_OPTIONS:
        if getattr(args, option) != default:
            raise ValueError(f"GRPOConfig.{option}={getattr(args, option)!r} configures TRL's own loss, which method "
                             f"'{entry.name}' replaces; {hint}")
    spg, ga = args.steps_per_generation, args.gradient_accumulation_steps
    if spg % ga:
        raise ValueError(f"steps_per_generation ({spg}) must be a multiple of gradient_accumulation_steps ({ga}): "
                         "an optimizer mini-batch must lie in one generation batch for its selection and normalisers")
    sampled = (args.generation_kwargs or {}).get("temperature", args.temperature)
    if sampled != args.temperature:
        raise ValueError(f"generation_kwargs temperature {sampled} differs from GRPOConfig.temperature "
                         f"{args.temperature}, which scores log-probs and entropies: set one temperature")
    if "ref_logp" in entry.obj.inputs and args.beta == 0.0:
        raise ValueError(f"method '{entry.name}' needs reference log-probs: set GRPOConfig.beta > 0")


@dataclass(frozen=True)
class MiniBatch:
    """The selection of one optimizer mini-batch as this process uses it.

    Attributes:
        ctx: the step context with the mini-batch normalisers (tokens, sequences of all processes).
        sel: the selection's rows of this process's micro-batches, in order, trimmed to its token width.
    """

    ctx: StepContext
    sel: TokenWeights


def trim_rows(sel: TokenWeights, rows: slice, width: int, gathered_width: int) -> TokenWeights:
    """Rows `rows` of a selection made on gathered [B_all, T_all] tensors, cut back to `width` token columns.

    Args:
        sel: selection over the gathered mini-batch; tensors [B_all, T_all] or [B_all, 1].
        rows: this process's rows.
        width: this process's T.
        gathered_width: T_all (the widest process).

    Returns:
        TokenWeights with tensors [len(rows), width] (or [len(rows), 1]), metrics unchanged.
    """
    def cut(v: Tensor) -> Tensor:
        v = v[rows]
        return v[:, :width] if v.dim() >= 2 and v.shape[1] == gathered_width else v

    return TokenWeights({k: cut(v) for k, v in sel.tensors.items()}, sel.metrics)


def rl_extras(batch: Mapping[str, Any]) -> dict[str, Tensor]:
    """The method features the pre-update pass stored in a TRL batch dict (keys `entropy_rl/extra/<name>`)."""
    return {k[len(EXTRA_PREFIX):]: v for k, v in batch.items() if k.startswith(EXTRA_PREFIX)}


EXTRA_PREFIX = "entropy_rl/extra/"
OLD_ENTROPY = "entropy_rl/old_entropy"


def trl_terms(per_token: Tensor, logp: Tensor, old_logp: Tensor, batch: Mapping[str, Any], beta: float,
              bias_correction: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """TRL's additions to a per-token policy loss, as its `_compute_loss` makes them: the reference KL and the vLLM
    importance-sampling ratio.

    Args:
        per_token: [B, T] the method's per-token loss.
        logp: [B, T] current log-probs (with gradient).
        old_logp: [B, T] pre-update log-probs.
        batch: TRL's batch dict (`ref_per_token_logps`, `importance_sampling_ratio` when TRL made them).
        beta: GRPOConfig.beta, the KL coefficient.
        bias_correction: GRPOConfig.use_bias_correction_kl (KL times the ratio exp(logp - old_logp)).

    Returns:
        ([B, T] loss, {"kl": [B, T] detached KL} when beta > 0).
    """
    extra: dict[str, Tensor] = {}
    ratio = batch.get("importance_sampling_ratio")
    if ratio is not None:  # TRL weights the policy loss first, then adds the KL term unweighted
        per_token = per_token * ratio
    if beta != 0.0:
        kl = kl_k3(logp, batch["ref_per_token_logps"])
        if bias_correction:
            kl = kl * torch.exp(logp - old_logp)
        per_token = per_token + beta * kl
        extra["kl"] = kl.detach()
    return per_token, extra


class EntropyRLGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with the loss of a registered entropy-rl method (see the module docstring).

    Args:
        *args: GRPOTrainer's positional arguments (model, reward_funcs, args, ...).
        method: registered policy-loss name (`entropy-rl methods`).
        method_params: the method's Params fields.
        **kwargs: GRPOTrainer's keyword arguments.

    Raises:
        ValueError: the method cannot run in TRL, or the GRPOConfig sets something the method replaces.
    """

    def __init__(self, *args: Any, method: str = "ppo_clip", method_params: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        entry = get_policy_loss(method)
        self.er_entry = entry
        self.er_params = entry.make_params(**dict(method_params or {}))
        config = kwargs.get("args", args[2] if len(args) > 2 else None)
        if config is not None:  # refuse before TRL loads models and generation engines
            check_trl_config(config, entry)
        super().__init__(*args, **kwargs)
        check_trl_config(self.args, entry)
        m = entry.obj
        self.er_state = m.make_state(self.er_params) if m.make_state is not None else None
        self.er_features: Features = m.old_features + m.cur_features
        self.er_use_logits = bool(self.er_features)
        if self.er_use_logits and self.aux_loss_enabled:
            raise ValueError(f"method '{method}' reads full logits, which the adapter does not combine with an MoE "
                             "router loss: set GRPOConfig.router_aux_loss_coef=0")
        self.er_agg = Aggregation(TRL_LOSS_TYPES[self.args.loss_type], norm_length=self.args.max_completion_length)
        self.er_ctx: StepContext = step_context(self.er_state, self.er_params, self.er_agg)
        self.er_minibatch: MiniBatch | None = None
        self.er_rollout_metrics: dict[str, float] = {}
        self.er_acc: dict[str, list[Tensor]] = {}  # key -> [sum of weight * value, sum of weight] this optimizer step
        self.er_loss = torch.zeros(())  # this process's share of the mini-batch loss so far

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """TRL's `train`, after writing `CONFIG_FILE` into output_dir: what `entropy-rl report` shows in its header."""
        if self.args.should_save:
            os.makedirs(self.args.output_dir, exist_ok=True)
            config = {"algorithm": {"method": self.er_entry.name, "method_params": params_dict(self.er_params),
                                    "advantage": f"trl grpo (scale_rewards={self.args.scale_rewards})",
                                    "loss_agg_mode": self.er_agg.mode},
                      "train": {"seed": self.args.seed, "steps": self.args.max_steps}}
            with open(os.path.join(self.args.output_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
                json.dump(config, f, indent=1)
        return super().train(*args, **kwargs)

    # ---- scoring ----

    def er_score(self, model: Any, batch: Mapping[str, Any], features: Features, want_entropy: Any,
                 chunk: int | None = None) -> tuple[Tensor, Tensor | None, dict[str, Tensor], Tensor | None]:
        """Tempered log-probs, entropies and features of the completion tokens of `batch`, fp32 [B, T] each.

        Runs under the caller's grad mode, `chunk` sequences at a time (None: all at once). Without features:
        TRL's fused LM head (`_get_per_token_logps_and_entropies`); with features: the model's logits and
        `core.token_stats` at TRL's temperature.

        Returns:
            (logp, entropy or None, {feature: [B, T]}, MoE router loss or None).
        """
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        T = batch["completion_ids"].size(1)
        if not self.er_use_logits:
            logp, ent, aux = self._get_per_token_logps_and_entropies(
                model, ids, attn, T, batch_size=chunk, compute_entropy=want_entropy is not False,
                compute_aux_loss=self.aux_loss_enabled and torch.is_grad_enabled())
            return logp, ent, {}, aux
        bound = bind_features(features, self.er_params)
        parts = []
        step = chunk or ids.size(0)
        for i in range(0, ids.size(0), step):
            logits = model(input_ids=ids[i:i + step], attention_mask=attn[i:i + step], logits_to_keep=T + 1).logits
            parts.append(token_stats(logits[:, :-1], batch["completion_ids"][i:i + step], self.temperature,
                                     want_entropy=want_entropy, features=bound,
                                     mask=self.er_mask(batch)[i:i + step]))
        ent = torch.cat([p.entropy for p in parts]) if want_entropy is not False else None
        extras = {name: torch.cat([p.features[name] for p in parts]) for name, _ in features}
        return torch.cat([p.logp for p in parts]), ent, extras, None

    @staticmethod
    def er_mask(batch: Mapping[str, Any]) -> Tensor:
        """[B, T] float loss mask: completion tokens (times TRL's tool mask in multi-turn batches)."""
        mask = batch["completion_mask"]
        if batch.get("tool_mask") is not None:
            mask = mask * batch["tool_mask"]
        return mask.float()

    def er_gather(self, t: Tensor) -> Tensor:
        """Rows of every process, process 0 first: [B, T] -> [P B, T_max] (columns zero-padded), [B] -> [P B]."""
        if self.accelerator.num_processes == 1:
            return t
        if t.dim() >= 2:
            t = self.accelerator.pad_across_processes(t.contiguous(), dim=1, pad_index=0)
        return self.accelerator.gather(t.contiguous())

    def er_inputs(self, batch: Mapping[str, Any], logp: Tensor, entropy: Tensor | None,
                  extras: Mapping[str, Tensor]) -> PolicyInputs:
        """PolicyInputs of a TRL batch with the given current values and the batch's pre-update values."""
        mask = self.er_mask(batch)
        adv = batch["advantages"]
        adv = (adv.unsqueeze(1) if adv.dim() == 1 else adv) * mask
        ref = batch.get("ref_per_token_logps")
        return PolicyInputs(logp, batch["old_per_token_logps"], adv.float(), mask, entropy, batch[OLD_ENTROPY],
                            None if ref is None else ref.float(), {**rl_extras(batch), **extras})

    def er_gathered(self, x: PolicyInputs) -> PolicyInputs:
        """`x` with every process's rows (see `er_gather`)."""
        g = self.er_gather

        def opt(t: Tensor | None) -> Tensor | None:
            return None if t is None else g(t)

        return PolicyInputs(g(x.logp), g(x.old_logp), g(x.adv), g(x.mask), opt(x.entropy), opt(x.old_entropy),
                            opt(x.ref_logp), {k: g(v) for k, v in x.extras.items()})

    # ---- generation: the pre-update pass, entropy metrics, the state's view of the batch ----

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's generation and rewards, then the pre-update pass (old_logp, H_old, features) and our metrics."""
        batch = super()._generate_and_score_completions(inputs)
        if "pixel_values" in batch or "num_images" in batch:
            raise ValueError("EntropyRLGRPOTrainer does not support multimodal batches")
        mode = "train" if self.model.training else "eval"
        from trl.models.utils import disable_gradient_checkpointing

        chunk = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            old_logp, old_ent, extras, _ = self.er_score(self.model, batch, self.er_features, True, chunk)
        batch["old_per_token_logps"] = old_logp
        batch[OLD_ENTROPY] = old_ent
        batch.update({EXTRA_PREFIX + k: v for k, v in extras.items()})
        x = self.er_gathered(self.er_inputs(batch, old_logp, old_ent, {}))
        metrics = entropy_stats(x.old_entropy, x.mask, x.adv)
        metrics["dynamics/cov_logp_adv"] = cov_logp_adv(x.old_logp, x.adv, x.mask)
        metrics["dynamics/steer_omega"] = steer_omega_signal(x.old_logp, x.adv, x.old_entropy, x.mask)
        if mode == "train":
            if self.er_state is not None:  # the state sees the whole batch first, then gives this step's values
                self.er_state.before_update(PolicyInputs(x.old_logp, x.old_logp, x.adv, x.mask, x.old_entropy,
                                                         x.old_entropy, x.ref_logp, x.extras))
                metrics.update(self.er_state.metrics())
            self.er_ctx = step_context(self.er_state, self.er_params, self.er_agg)
            self.er_rollout_metrics = dict(metrics)
        for key, value in metrics.items():
            self._metrics[mode][key].append(value)
        return batch

    # ---- selection once per optimizer mini-batch ----

    def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
        """TRL's micro-batch; at the first micro-batch of an optimizer step, the selection of its mini-batch."""
        batch = super()._prepare_inputs(generation_batch)
        if self.model.training:
            spg, ga = self.args.steps_per_generation, self.args.gradient_accumulation_steps
            k = self._step % spg
            if k % ga == 0:
                generate_every = spg * self.num_iterations
                self.er_minibatch = self.er_select(
                    self._buffered_inputs[k:k + ga], first=self._step % generate_every == 0,
                    seed=seed_for("select", self.args.seed, self._step // generate_every + 1,
                                  (self._step // spg) % self.num_iterations, k // ga))
        return batch

    def er_select(self, micro_batches: list[dict[str, Any]], first: bool, seed: int) -> MiniBatch:
        """Normalisers and selection of the mini-batch made of `micro_batches` (this process's share of it).

        Args:
            micro_batches: TRL's buffered micro-batches of this optimizer step (same token width).
            first: the policy is still the one that scored the generation batch (its first mini-batch, first pass).
            seed: the selection generator's seed.

        Returns:
            The MiniBatch this optimizer step's micro-batches read.
        """
        batch = {k: torch.cat([mb[k] for mb in micro_batches]) for k, v in micro_batches[0].items()
                 if isinstance(v, Tensor) and v.dim() > 0}
        mask = self.er_mask(batch)
        n_tokens = self.er_gather(mask.sum().reshape(1)).sum()
        n_seqs = float(mask.shape[0] * self.accelerator.num_processes)
        ctx = self.er_ctx.for_minibatch(num_tokens=n_tokens, num_seqs=n_seqs)
        m = self.er_entry.obj
        if m.select is None:
            return MiniBatch(ctx, TokenWeights())
        if first:
            logp, ent, extras = batch["old_per_token_logps"], batch[OLD_ENTROPY], {}
        else:  # later mini-batches: the current policy's values (only the update-pass features change)
            with torch.no_grad():
                logp, ent, extras, _ = self.er_score(self.model, batch, m.cur_features, True,
                                                     self.args.per_device_train_batch_size)
        x = self.er_gathered(self.er_inputs(batch, logp, ent, extras))
        sel = run_select(self.er_entry, self.er_params, x, ctx, torch.Generator().manual_seed(seed))
        p, b = self.accelerator.process_index, mask.shape[0]
        return MiniBatch(ctx, trim_rows(sel, slice(p * b, (p + 1) * b), mask.shape[1], x.mask.shape[1]))

    # ---- the loss ----

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> Tensor:
        """The method's loss of one micro-batch, aggregated with its mini-batch's normalisers."""
        mode = "train" if self.model.training else "eval"
        m = self.er_entry.obj
        want = entropy_for_update(m) or "nograd"  # TRL's own `entropy` metric reads H_cur of every micro-batch
        logp, ent, cur, aux = self.er_score(model, inputs, m.cur_features, want)
        x = self.er_inputs(inputs, logp, ent if "entropy" in m.inputs else ent.detach(), cur)
        check_inputs(self.er_entry, x)
        b = x.mask.shape[0]
        if mode == "train":
            micro = (self._step % self.args.steps_per_generation) % self.args.gradient_accumulation_steps
            mb = self.er_minibatch
            ctx, sel = mb.ctx, mb.sel.rows(slice(micro * b, (micro + 1) * b))
            last = micro == self.args.gradient_accumulation_steps - 1
        else:  # eval: each batch is its own mini-batch on its own process
            micro, last = 0, True
            ctx = step_context(self.er_state, self.er_params, self.er_agg).for_minibatch(x.mask.sum(), float(b))
            sel = run_select(self.er_entry, self.er_params, x, ctx, torch.Generator().manual_seed(self.args.seed))
        out = m.loss(x, self.er_params, sel, ctx)
        per_token, extra = trl_terms(out.per_token, x.logp, x.old_logp, inputs, self.beta,
                                     self.args.use_bias_correction_kl)
        share = ctx.agg.reduce(per_token, x.mask)  # this micro-batch's share of the mini-batch loss
        metrics = {**out.metrics, **sel.metrics}
        if "kl" in extra:
            metrics["policy/kl_ref"] = (extra["kl"] * x.mask).sum() / x.mask.sum().clamp_min(1.0)
        self.er_accumulate(metrics, x.mask.sum(), share.detach(), micro == 0)
        self.er_log_trl_entropy(mode, ent.detach(), x.mask)
        if last:
            step_metrics = self.er_flush(mode)
            rollout_done = (self._step + 1) % (self.args.steps_per_generation * self.num_iterations) == 0
            if mode == "train" and rollout_done and self.er_state is not None:
                self.er_state.after_update({**step_metrics, **self.er_rollout_metrics})
        scale = self.accelerator.num_processes if mode == "train" else 1.0  # gradients are averaged over processes
        loss = share * scale
        if aux is not None:
            loss = loss + self.router_aux_loss_coef * aux / self.args.gradient_accumulation_steps
        return loss

    # ---- metrics ----

    def er_accumulate(self, metrics: Mapping[str, Tensor], weight: Tensor, share: Tensor, new_step: bool) -> None:
        """Add one micro-batch's metrics (weighted by its tokens) and loss share to this optimizer step's sums."""
        if new_step:
            self.er_acc, self.er_loss = {}, torch.zeros((), device=share.device)
        self.er_loss = self.er_loss + share
        w = weight.detach().float()
        for key, value in metrics.items():
            acc = self.er_acc.setdefault(key, [torch.zeros((), device=w.device), torch.zeros((), device=w.device)])
            acc[0] = acc[0] + w * torch.as_tensor(value, device=w.device).detach().float()
            acc[1] = acc[1] + w

    def er_flush(self, mode: str) -> dict[str, float]:
        """Reduce this optimizer step's sums over processes and append the means (and `policy/loss`) to TRL's logs."""
        keys = sorted(self.er_acc)
        sums = torch.stack([self.er_loss.float()] + [self.er_acc[k][0] for k in keys])
        weights = torch.stack([torch.ones((), device=sums.device)] + [self.er_acc[k][1] for k in keys])
        total = self.accelerator.reduce(torch.stack([sums, weights]), reduction="sum").cpu()
        step = {"policy/loss": float(total[0, 0])}
        step.update({k: float(total[0, i + 1] / total[1, i + 1].clamp_min(1e-12)) for i, k in enumerate(keys)})
        for key, value in step.items():
            self._metrics[mode][key].append(value)
        return step

    def er_log_trl_entropy(self, mode: str, entropy: Tensor, mask: Tensor) -> None:
        """TRL's own `entropy` metric: masked mean of the update pass's entropy over this micro-batch of all
        processes."""
        totals = self.accelerator.reduce(torch.stack([(entropy * mask).sum(), mask.sum()]), reduction="sum")
        self._metrics[mode]["entropy"].append(float(totals[0] / totals[1].clamp_min(1.0)))

    # ---- the method state in TRL checkpoints ----

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """TRL's checkpoint, plus the method state as JSON (`STATE_FILE`) for a stateful method."""
        super()._save_checkpoint(model, trial)
        if self.er_state is not None and self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), name)
            save_state(self.er_state.state_dict(), os.path.join(folder, STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """TRL's resume, plus the method state from `STATE_FILE` (a stateful method refuses a checkpoint without it)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.er_state is not None and checkpoint is not None:
            path = os.path.join(checkpoint, STATE_FILE)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: checkpoint has no state of method '{self.er_entry.name}'")
            with open(path, encoding="utf-8") as f:
                self.er_state.load_state_dict(json.load(f))
            self.er_ctx = step_context(self.er_state, self.er_params, self.er_agg)


def save_state(state: Mapping[str, Any], path: str) -> None:
    """Write a method's state_dict as JSON; its values must be plain (numbers, strings, None, lists, dicts).

    Raises:
        TypeError: a value JSON cannot hold (e.g. a tensor), naming the path.
    """
    try:
        text = json.dumps(state, allow_nan=True)
    except TypeError as e:
        raise TypeError(f"{path}: method state is not plain JSON data ({e})") from None
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    print(tier_table_markdown() + "\n" + variants_table_markdown(), end="")
