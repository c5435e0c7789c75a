"""entropy-rl inside verl 0.9.1 on CPU: every method through verl's own lookup and worker loss, against ours.

Needs verl (installed by .ci/run with --no-deps, plus the few packages its loss path imports).
Run: pytest tests/integrations/test_verl.py -q
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_setup import import_extra  # noqa: E402  (tests/ is on sys.path via conftest)

import_extra("verl")

from tensordict import TensorDict  # noqa: E402  (verl's dependency)
from verl.trainer.ppo.core_algos import (  # noqa: E402
    agg_loss,
    compute_grpo_outcome_advantage,
    compute_grpo_vectorized_outcome_advantage,
    compute_policy_loss_gspo,
    compute_policy_loss_vanilla,
    get_policy_loss_fn,
)
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402
from verl.workers.utils import losses  # noqa: E402

from entropy_rl.core.advantage import compute_advantages  # noqa: E402
from entropy_rl.core.aggregate import AGG_MODES, aggregate  # noqa: E402
from entropy_rl.core.policy_loss import POLICY_LOSSES, get_policy_loss, policy_loss  # noqa: E402
from entropy_rl.integrations import verl as ev  # noqa: E402
from entropy_rl.metrics.dynamics import cov_logp_adv, entropy_stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ev.install()
NAMES = POLICY_LOSSES.names()
RUNS = [n for n in NAMES if ev.method_tier(n).level != "refused"]
REFUSED = [n for n in NAMES if ev.method_tier(n).level == "refused"]
# Settings that make the selections select something on a few dozen tokens (defaults pick ~0.02% of tokens).
PARAMS = {"clip_cov": {"clip_ratio": 0.2}, "kl_cov": {"kl_ratio": 0.2}, "steer": {"weight_min": 0.5},
          "top_entropy": {"rho": 0.5}, "entropy_adv": {"alpha": 0.3}}
TOL = dict(rtol=0, atol=1e-6)
B, DP, GLOBAL_SEQS, SCALE = 6, 2, 13, 16  # micro-batch rows, data-parallel ranks, mini-batch sequences, Dr.GRPO length


@dataclasses.dataclass
class MicroBatch:
    """A v1-trainer micro-batch as verl's worker loss gets it, plus the same numbers padded [B, T] for ours."""

    data: TensorDict
    model_output: dict
    logp_leaf: torch.Tensor  # [total_nnz] full-sequence log-probs (the leaf gradients are taken against)
    ent_leaf: torch.Tensor  # [total_nnz] full-sequence update-pass entropies
    logp: torch.Tensor  # [B, T] the response part of logp_leaf, padded with 0 (ours)
    entropy: torch.Tensor
    old_logp: torch.Tensor
    old_entropy: torch.Tensor
    adv: torch.Tensor
    mask: torch.Tensor


def nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def padded(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    return torch.stack([torch.nn.functional.pad(r, (0, width - r.numel())) for r in rows])


def micro_batch(seed: int = 0, rows: int = B, num_tokens: float | None = None, global_seqs: int = GLOBAL_SEQS,
                dp: int = DP, with_old_entropy: bool = True) -> MicroBatch:
    """Random micro-batch in verl's v1 layout: jagged prompts/responses, response-only fields as jagged tensors,
    model outputs over the whole sequence (the log-prob of response token j sits at position prompt_len + j - 1)."""
    g = torch.Generator().manual_seed(seed)
    p_len = torch.randint(2, 5, (rows,), generator=g).tolist()
    r_len = torch.randint(1, 9, (rows,), generator=g).tolist()
    r_len[0] = 8  # the padded width T is the longest response
    T = max(r_len)
    total = sum(p_len) + sum(r_len)
    logp_leaf = (-torch.rand(total, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    ent_leaf = (torch.rand(total, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    starts = torch.tensor([0] + [p + r for p, r in zip(p_len, r_len)]).cumsum(0).tolist()
    idx = [torch.arange(s + p - 1, s + p + r - 1) for s, p, r in zip(starts, p_len, r_len)]
    old = [logp_leaf.detach()[i] + 0.3 * torch.randn(len(i), generator=g, dtype=torch.float64) for i in idx]
    old_ent = [torch.rand(len(i), generator=g, dtype=torch.float64) * 2 for i in idx]
    adv = [torch.randn(1, generator=g, dtype=torch.float64).expand(len(i)).clone() for i in idx]
    resp_mask = [(torch.rand(len(i), generator=g) > 0.15).long() for i in idx]
    resp_mask[0][0] = 1
    fields = {"prompts": nested([torch.randint(0, 50, (p,), generator=g) for p in p_len]),
              "responses": nested([torch.randint(0, 50, (r,), generator=g) for r in r_len]),
              "response_mask": nested(resp_mask), "old_log_probs": nested(old), "advantages": nested(adv)}
    if with_old_entropy:
        fields["entropy"] = nested(old_ent)  # the pre-update pass's entropy, as the v1 trainer stores it
    data = TensorDict(fields, batch_size=[rows])
    mask = padded([m.double() for m in resp_mask], T)
    tu.assign_non_tensor(data, dp_size=dp, global_batch_size=global_seqs,
                         batch_num_tokens=float(mask.sum()) * dp + 5 if num_tokens is None else num_tokens)
    offsets = torch.tensor(starts)
    model_output = {"log_probs": torch.nested.nested_tensor_from_jagged(logp_leaf, offsets),
                    "entropy": torch.nested.nested_tensor_from_jagged(ent_leaf, offsets)}
    return MicroBatch(data, model_output, logp_leaf, ent_leaf, padded([logp_leaf[i] for i in idx], T),
                      padded([ent_leaf[i] for i in idx], T), padded(old, T), padded(old_ent, T), padded(adv, T), mask)


def actor_config(name: str, mode: str = "token-mean", scope: str = "microbatch", **kw) -> ActorConfig:
    policy = ev.PolicyLossConfig(loss_mode=ev.PREFIX + name, entropy_rl=PARAMS.get(name, {}), selection_scope=scope)
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2, loss_agg_mode=mode,
                       policy_loss=policy, loss_scale_factor=SCALE, **kw)


def ours(name: str, mb: MicroBatch, mode: str, num_tokens: float, num_seqs: float, dp: int = DP,
         norm_length: float = SCALE) -> torch.Tensor:
    """Our policy_loss + aggregate on the padded numbers, with verl's mini-batch normalisers and dp scaling."""
    tier = ev.method_tier(name)
    inputs = {"entropy": mb.entropy, "old_entropy": mb.old_entropy}
    torch.manual_seed(7)  # clip_cov draws at random (verl's call uses the global generator too)
    out = policy_loss(name, mb.logp, mb.old_logp, mb.adv, mb.mask, loss_agg_mode=mode,
                      **{k: inputs[k] for k in tier.needs}, **PARAMS.get(name, {}))
    agg = aggregate(out.per_token, mb.mask, mode, num_tokens=num_tokens, num_seqs=num_seqs, norm_length=norm_length)
    return agg * dp


def grads(loss: torch.Tensor, mb: MicroBatch) -> list[torch.Tensor]:
    return [g if g is not None else torch.zeros_like(t)
            for g, t in zip(torch.autograd.grad(loss, [mb.logp_leaf, mb.ent_leaf], allow_unused=True),
                            [mb.logp_leaf, mb.ent_leaf])]


def assert_same(a: torch.Tensor, b: torch.Tensor, mb_a: MicroBatch, mb_b: MicroBatch) -> None:
    torch.testing.assert_close(a, b, **TOL)
    for ga, gb in zip(grads(a, mb_a), grads(b, mb_b)):
        torch.testing.assert_close(ga, gb, **TOL)


# ---- verl's own lookup ----

def test_every_catalogue_method_is_registered_under_the_prefix() -> None:
    for name in NAMES:
        fn = get_policy_loss_fn(ev.PREFIX + name)
        assert callable(fn) and fn.__name__ == f"entropy_rl_{name}"
    assert ev.install() == [ev.PREFIX + n for n in NAMES]  # idempotent
    assert losses.ppo_loss is ev.worker_ppo_loss


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("name", [n for n in RUNS if not ev.method_tier(n).needs])
def test_registry_lookup_matches_policy_loss_and_aggregate(name: str, mode: str) -> None:
    """verl's get_policy_loss_fn path (padded tensors, ActorConfig with verl's global batch info) == ours."""
    mb = micro_batch(seed=1)
    cfg = actor_config(name, mode)
    info = {"dp_size": DP, "batch_num_tokens": float(mb.mask.sum()) * DP + 5, "global_batch_size": GLOBAL_SEQS,
            "loss_scale_factor": SCALE}
    cfg.global_batch_info.update(info)
    torch.manual_seed(7)
    loss, metrics = get_policy_loss_fn(ev.PREFIX + name)(mb.old_logp, mb.logp, mb.adv, mb.mask.bool(), mode, cfg, None)
    assert all(isinstance(v, float) for v in metrics.values())
    mb2 = micro_batch(seed=1)
    assert_same(loss, ours(name, mb2, mode, info["batch_num_tokens"], GLOBAL_SEQS), mb, mb2)


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("name", RUNS)
def test_worker_loss_path_matches_policy_loss_and_aggregate(name: str, mode: str) -> None:
    """verl's ppo_loss (the engine worker's loss_fn) on a v1 TensorDict == ours: loss and gradients w.r.t. the
    model's log-prob and entropy outputs, in float64."""
    mb = micro_batch(seed=2)
    cfg = actor_config(name, mode, calculate_entropy=True)
    torch.manual_seed(7)
    loss, metrics = losses.ppo_loss(cfg, mb.model_output, mb.data)
    assert "actor/pg_loss" in metrics
    mb2 = micro_batch(seed=2)
    assert_same(loss, ours(name, mb2, mode, float(mb2.mask.sum()) * DP + 5, GLOBAL_SEQS), mb, mb2)


def test_ppo_clip_equals_verls_own_vanilla_loss() -> None:
    """An independent check of the aggregation and normalisers: entropy_rl.ppo_clip == verl's `vanilla`."""
    for mode in AGG_MODES:
        mb = micro_batch(seed=3)
        info = {"dp_size": DP, "batch_num_tokens": float(mb.mask.sum()) * DP + 5, "global_batch_size": GLOBAL_SEQS,
                "loss_scale_factor": SCALE}
        cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2, clip_ratio_low=0.2,
                          clip_ratio_high=0.28, clip_ratio_c=3.0, loss_agg_mode=mode)
        cfg.global_batch_info.update(info)
        theirs, _ = compute_policy_loss_vanilla(mb.old_logp, mb.logp, mb.adv, mb.mask.bool(), mode, cfg)
        mb2 = micro_batch(seed=3)
        cfg2 = actor_config("ppo_clip", mode)
        cfg2.policy_loss.entropy_rl.update({"eps_high": 0.28})
        cfg2.global_batch_info.update(info)
        fn = get_policy_loss_fn("entropy_rl.ppo_clip")
        mine, _ = fn(mb2.old_logp, mb2.logp, mb2.adv, mb2.mask.bool(), mode, cfg2)
        assert_same(mine, theirs, mb2, mb)


def test_rollout_correction_weights_multiply_the_loss_as_in_verls_vanilla() -> None:
    """verl's `rollout_is_weights` (its algorithm.rollout_correction): ppo_clip with them == verl's vanilla with them."""
    for mode in AGG_MODES:
        mb = micro_batch(seed=5)
        w = torch.rand(mb.mask.shape, generator=torch.Generator().manual_seed(5), dtype=mb.logp.dtype) * 2
        info = {"dp_size": DP, "batch_num_tokens": float(mb.mask.sum()) * DP + 5, "global_batch_size": GLOBAL_SEQS,
                "loss_scale_factor": SCALE}
        cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2, clip_ratio_low=0.2,
                          clip_ratio_high=0.2, clip_ratio_c=3.0, loss_agg_mode=mode)
        cfg.global_batch_info.update(info)
        theirs, _ = compute_policy_loss_vanilla(mb.old_logp, mb.logp, mb.adv, mb.mask.bool(), mode, cfg, w)
        mb2 = micro_batch(seed=5)
        cfg2 = actor_config("ppo_clip", mode)
        cfg2.global_batch_info.update(info)
        mine, _ = get_policy_loss_fn("entropy_rl.ppo_clip")(mb2.old_logp, mb2.logp, mb2.adv, mb2.mask.bool(), mode,
                                                            cfg2, w)
        assert_same(mine, theirs, mb2, mb)
        unweighted, _ = get_policy_loss_fn("entropy_rl.ppo_clip")(mb2.old_logp, mb2.logp, mb2.adv, mb2.mask.bool(),
                                                                  mode, cfg2)
        assert abs(float(unweighted) - float(mine)) > 1e-6  # the weights did something


SEQ_MODES = [m for m in AGG_MODES if m.startswith("seq-mean")]


def with_an_empty_response(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp leaf, old_logp, adv, mask) [4, 6] in float64, off-policy, row 2 fully masked (an empty response)."""
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(4, 6, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    old = logp.detach() + 0.3 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(4, 1, generator=g, dtype=torch.float64).expand(4, 6).clone()
    mask = (torch.rand(4, 6, generator=g) > 0.3).double()
    mask[:, 0], mask[2] = 1.0, 0.0
    return logp, old, adv, mask


@pytest.mark.parametrize("mode", SEQ_MODES)
def test_seq_means_divide_by_every_response_as_verls_trainer_does(mode: str) -> None:
    """Our default num_seqs = B counts the empty response, as verl 0.9.1's trainer (global_batch_size = the
    mini-batch's responses); agg_loss without global_batch_size counts the 3 non-empty ones (num_seqs = 3)."""
    logp, _, _, mask = with_an_empty_response(0)
    loss = logp.detach() ** 2 + 1.0
    trainer = agg_loss(loss, mask.bool(), mode, global_batch_size=4, loss_scale_factor=SCALE)
    bare = agg_loss(loss, mask.bool(), mode, loss_scale_factor=SCALE)
    torch.testing.assert_close(aggregate(loss, mask, mode, norm_length=SCALE), trainer, **TOL)
    torch.testing.assert_close(aggregate(loss, mask, mode, num_seqs=3, norm_length=SCALE), bare, **TOL)
    assert float(bare) == pytest.approx(float(trainer) * 4 / 3)  # the two conventions differ by B / non-empty


def test_the_verl_loss_without_global_batch_size_counts_non_empty_responses_as_agg_loss() -> None:
    """Through verl's lookup with no global_batch_size in global_batch_info (a bare call): our wrapped ppo_clip
    == verl's vanilla under every mode, an empty response in the micro-batch."""
    for mode in AGG_MODES:
        logp, old, adv, mask = with_an_empty_response(1)
        cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2, clip_ratio_low=0.2,
                          clip_ratio_high=0.2, clip_ratio_c=3.0, loss_agg_mode=mode, loss_scale_factor=SCALE)
        theirs, _ = compute_policy_loss_vanilla(old, logp, adv, mask.bool(), mode, cfg)
        logp2 = logp.detach().clone().requires_grad_(True)
        mine, _ = get_policy_loss_fn("entropy_rl.ppo_clip")(old, logp2, adv, mask.bool(), mode, actor_config("ppo_clip", mode))
        torch.testing.assert_close(mine, theirs, **TOL)
        torch.testing.assert_close(torch.autograd.grad(mine, logp2)[0], torch.autograd.grad(theirs, logp)[0], **TOL)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_gspo_uses_the_configured_aggregation_as_verl_091(mode: str) -> None:
    """verl 0.9.1's compute_policy_loss_gspo aggregates with loss_agg_mode (older verl forced seq-mean-token-mean):
    our gspo + aggregate under the same mode and normalisers gives its loss and gradient."""
    logp, old, adv, mask = with_an_empty_response(2)
    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2, clip_ratio_low=0.05,
                      clip_ratio_high=0.08, loss_agg_mode=mode)
    cfg.global_batch_info.update({"dp_size": 1, "batch_num_tokens": float(mask.sum()), "global_batch_size": 4,
                                  "loss_scale_factor": SCALE})
    theirs, _ = compute_policy_loss_gspo(old, logp, adv, mask.bool(), mode, cfg)
    logp2 = logp.detach().clone().requires_grad_(True)
    out = policy_loss("gspo", logp2, old, adv, mask, loss_agg_mode=mode, eps_low=0.05, eps_high=0.08)
    mine = aggregate(out.per_token, mask, mode, norm_length=SCALE)
    torch.testing.assert_close(mine, theirs, **TOL)
    torch.testing.assert_close(torch.autograd.grad(mine, logp2)[0], torch.autograd.grad(theirs, logp)[0], **TOL)
    if mode != "seq-mean-token-mean":  # not the mode older verl forced: the choice changes the loss
        forced, _ = compute_policy_loss_gspo(old, logp.detach(), adv, mask.bool(), "seq-mean-token-mean", cfg)
        assert abs(float(forced) - float(theirs.detach())) > 1e-6


@pytest.mark.parametrize("verl_grpo", [compute_grpo_outcome_advantage, compute_grpo_vectorized_outcome_advantage])
def test_grpo_singleton_reward_is_verls_r_over_one_plus_eps(verl_grpo) -> None:
    """verl's GRPO (loop and vectorised) gives a singleton group mean 0 and std 1: A = r / (1 + eps). Ours with
    singleton="reward" matches it everywhere; the default "zero" differs at the singleton only."""
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.7, 0.2, 0.9])
    index = np.array([3, 3, 3, 8, 5, 5])  # group 8 is a singleton
    mask = torch.ones(6, 2)
    theirs = verl_grpo(rewards.unsqueeze(1) * torch.tensor([[1.0, 0.0]]), mask, index, epsilon=0.5)[0][:, 0]
    group = torch.as_tensor(index)
    ours = compute_advantages("grpo", rewards, group, singleton="reward", eps=0.5)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert float(theirs[3]) == pytest.approx(0.7 / 1.5)
    zero = compute_advantages("grpo", rewards, group, eps=0.5)
    assert float(zero[3]) == 0.0 and torch.equal(zero[[0, 1, 2, 4, 5]], ours[[0, 1, 2, 4, 5]])
    unscaled = verl_grpo(rewards.unsqueeze(1) * torch.tensor([[1.0, 0.0]]), mask, index, epsilon=0.5,
                         norm_adv_by_std_in_grpo=False)[0][:, 0]
    torch.testing.assert_close(compute_advantages("dr_grpo", rewards, group, singleton="reward"), unscaled)


def test_other_loss_modes_run_unchanged_through_the_wrapped_worker_loss() -> None:
    mb, mb2 = micro_batch(seed=4), micro_batch(seed=4)
    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2)
    wrapped, _ = losses.ppo_loss(cfg, mb.model_output, mb.data)
    original, _ = ev._ORIGINAL["ppo_loss"](cfg, mb2.model_output, mb2.data)
    assert_same(wrapped, original, mb, mb2)


# ---- selection scope ----

def test_selection_over_a_micro_batch_is_refused_unless_opted_in() -> None:
    mb = micro_batch(seed=5)
    with pytest.raises(ev.VerlIntegrationError, match="selection_scope=microbatch"):
        losses.ppo_loss(actor_config("steer", scope="minibatch", calculate_entropy=True), mb.model_output, mb.data)


def test_selection_is_exact_when_the_micro_batch_is_the_whole_mini_batch_on_one_rank() -> None:
    """dp 1 and micro = mini: the default scope runs, and equals our selection over the mini-batch."""
    mb = micro_batch(seed=6, dp=1, global_seqs=B)
    n = float(mb.mask.sum())
    tu.assign_non_tensor(mb.data, batch_num_tokens=n)
    loss, _ = losses.ppo_loss(actor_config("steer", scope="minibatch"), mb.model_output, mb.data)
    mb2 = micro_batch(seed=6, dp=1, global_seqs=B)
    assert_same(loss, ours("steer", mb2, "token-mean", n, B, dp=1), mb, mb2)


# ---- refusals and missing inputs: clear errors, never a silent approximation ----

@pytest.mark.parametrize("name", REFUSED)
def test_refused_methods_say_why_at_config_time_and_at_call_time(name: str) -> None:
    why = "method state" if POLICY_LOSSES.get(name).obj.make_state is not None else "features computed from the logits"
    with pytest.raises(ev.VerlIntegrationError, match=why):
        ev.PolicyLossConfig(loss_mode=ev.PREFIX + name)
    mb = micro_batch()
    with pytest.raises(ev.VerlIntegrationError, match=f"entropy_rl.{name} cannot run inside verl 0.9.1: .*{why}"):
        get_policy_loss_fn(ev.PREFIX + name)(mb.old_logp, mb.logp, mb.adv, mb.mask, "token-mean", None, None)


def test_bad_config_is_refused_when_verl_builds_it() -> None:
    with pytest.raises(ev.VerlIntegrationError, match="unknown parameter"):
        ev.PolicyLossConfig(loss_mode="entropy_rl.steer", entropy_rl={"weight_minn": 0.5})
    with pytest.raises(ev.VerlIntegrationError, match="unknown entropy-rl method 'stear'"):
        ev.PolicyLossConfig(loss_mode="entropy_rl.stear")
    with pytest.raises(ev.VerlIntegrationError, match="selection_scope must be one of"):
        ev.PolicyLossConfig(loss_mode="entropy_rl.steer", selection_scope="batch")
    with pytest.raises(ev.VerlIntegrationError, match="not an entropy-rl method"):
        ev.PolicyLossConfig(loss_mode="vanilla", entropy_rl={"weight_min": 0.5})


def test_missing_inputs_and_unsupported_settings_raise_with_the_fix() -> None:
    mb = micro_batch(seed=8)
    mb.model_output.pop("entropy")  # calculate_entropy off
    with pytest.raises(ev.VerlIntegrationError, match="calculate_entropy=True"):
        losses.ppo_loss(actor_config("entropy_adv"), mb.model_output, mb.data)
    mb = micro_batch(seed=8, with_old_entropy=False)  # the legacy trainer drops the pre-update entropy
    with pytest.raises(ev.VerlIntegrationError, match="needs `old_entropy`.*v1 trainer"):
        losses.ppo_loss(actor_config("erc", calculate_entropy=True), mb.model_output, mb.data)
    with pytest.raises(ev.VerlIntegrationError, match="only to its worker loss"):
        get_policy_loss_fn("entropy_rl.erc")(mb.old_logp, mb.logp, mb.adv, mb.mask, "token-mean", None, None)
    with pytest.raises(ev.VerlIntegrationError, match="'token-sum' is not one of"):
        get_policy_loss_fn("entropy_rl.ppo_clip")(mb.old_logp, mb.logp, mb.adv, mb.mask, "token-sum", None, None)


def test_install_refuses_another_verl_release(monkeypatch: pytest.MonkeyPatch) -> None:
    import verl

    monkeypatch.setattr(verl, "__version__", "0.10.0")
    with pytest.raises(ev.VerlIntegrationError, match="written against verl 0.9.1.*found verl 0.10.0"):
        ev.install()


# ---- our entropy metrics from a verl batch ----

def test_rollout_entropy_metrics_from_a_transfer_queue_batch_skip_padding_rows() -> None:
    """The trainer's metrics read the v1 batch's jagged fields; rows verl added as padding do not count."""
    mb = micro_batch(seed=9)
    batch = types.SimpleNamespace(keys=list(range(B)), partition_id="train",
                                  tags=[{"is_padding": i == B - 1} for i in range(B)])
    asked = {}

    def kv_batch_get(keys, partition_id, select_fields):
        asked.update(keys=keys, partition_id=partition_id, fields=select_fields)
        return mb.data.select(*select_fields)

    out = ev.fetch_entropy_metrics(kv_batch_get, batch)
    assert asked == {"keys": batch.keys, "partition_id": "train", "fields": list(ev.ENTROPY_FIELDS)}
    mask = mb.mask.clone()
    mask[B - 1] = 0
    expected = entropy_stats(mb.old_entropy, mask, mb.adv)
    expected["dynamics/cov_logp_adv"] = cov_logp_adv(mb.old_logp, mb.adv, mask)
    assert out == pytest.approx(expected, abs=1e-12)
    assert out["entropy/token_mean"] != pytest.approx(entropy_stats(mb.old_entropy, mb.mask)["entropy/token_mean"])


def test_call_after_import_runs_once_after_the_module_executes(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "er_fake_trainer.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    ev.call_after_import("er_fake_trainer", lambda m: seen.append(m.VALUE + 1))
    import er_fake_trainer  # noqa: F401

    assert seen == [42]
    ev.call_after_import("er_fake_trainer", lambda m: seen.append(m.VALUE))  # already loaded: runs now
    assert seen == [42, 41]
    monkeypatch.delitem(sys.modules, "er_fake_trainer")


# ---- the plugin entry point ----

def test_pyproject_declares_the_verl_plugin_entry_point() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["verl.plugins"] == {"entropy_rl": "entropy_rl.integrations.verl_plugin"}
    assert project["optional-dependencies"]["verl"] == [f"verl=={ev.VERL_VERSION}"]


def test_importing_verl_loads_the_plugin_and_registers_the_methods(tmp_path: Path) -> None:
    """A fresh process with the entry point visible: a plain `import verl` is enough (as in each Ray worker)."""
    dist = tmp_path / "entropy_rl_plugin_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: entropy-rl-plugin-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[verl.plugins]\nentropy_rl = entropy_rl.integrations.verl_plugin\n")
    code = ("import verl, json; from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R; "
            "import verl.workers.utils.losses as L; "
            "print(json.dumps([sorted(k for k in R if k.startswith('entropy_rl.')), L.ppo_loss.__name__]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "VERL_USE_EXTERNAL_PLUGINS": "entropy_rl"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    names, wrapped = json.loads(out.stdout.strip().splitlines()[-1])
    assert names == sorted(ev.PREFIX + n for n in NAMES) and wrapped == "worker_ppo_loss"


def test_docs_tier_table_matches_method_tier() -> None:
    """docs/integrations.md lists every method with the tier `method_tier` gives it."""
    text = (ROOT / "docs" / "integrations.md").read_text()
    for name in NAMES:
        tier = ev.method_tier(name)
        row = next((line for line in text.splitlines() if line.startswith(f"| `entropy_rl.{name}` |")), None)
        assert row is not None, f"docs/integrations.md has no row for {name}"
        assert f"| {tier.level} |" in row, (name, tier.level, row)


def test_method_params_come_from_the_verl_config() -> None:
    cfg = actor_config("steer")
    assert ev.method_params("steer", cfg.policy_loss.entropy_rl) == get_policy_loss("steer").make_params(weight_min=0.5)
