"""Contract every registered policy-loss method must satisfy (parametrised over the registry).

Run: pytest tests/methods/test_contract.py -q
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Iterator, Mapping

import pytest
import torch
import yaml

from entropy_rl.core.aggregate import Aggregation, aggregate
from entropy_rl.core.entropy import token_entropy, token_logprobs
from entropy_rl.core.policy_loss import POLICY_LOSSES, TOKEN_INPUTS, get_policy_loss, params_dict, run_select, step_context
from entropy_rl.core.types import PolicyInputs, StepContext, TokenWeights
from entropy_rl.train.config import TRAINER_INPUTS, TRAINER_STEP_METRICS, ConfigError, load_config

get_policy_loss("ppo_clip")  # registers the catalogue
NAMES = POLICY_LOSSES.names()
STATEFUL = [n for n in NAMES if POLICY_LOSSES.get(n).obj.make_state is not None]
WITH_SELECT = [n for n in NAMES if POLICY_LOSSES.get(n).obj.select is not None]
B, T, V, TAU = 8, 6, 11, 0.9


def make_inputs(name: str, seed: int = 0, off_policy: float = 0.3, lengths: list[int] | None = None) -> PolicyInputs:
    """Random but self-consistent inputs: logp, entropy and method features come from the same logits."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64).float() * 2
    logits.requires_grad_(True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    lengths = lengths or [T - (i % 3) for i in range(B)]
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()
    logp = token_logprobs(logits, tokens, TAU)
    old_logp = (logp + off_policy * torch.randn(B, T, generator=g)).detach()
    adv = torch.randn(B, 1, generator=g).expand(B, T) * mask
    entry = POLICY_LOSSES.get(name)
    method, p = entry.obj, entry.make_params()
    old_logits = logits.detach() + 0.1 * torch.randn(B, T, V, generator=g)
    extras = {k: fn(old_logits, tokens, TAU, p) for k, fn in method.old_features}
    extras.update({k: fn(logits, tokens, TAU, p) for k, fn in method.cur_features})
    return PolicyInputs(logp, old_logp, adv, mask, token_entropy(logits, TAU), token_entropy(old_logits, TAU), None, extras)


def first_step_context(name: str, params, agg: Aggregation | None = None) -> StepContext:
    """The context of a run's first step: a fresh state's values (None without a state) and `agg`."""
    make_state = POLICY_LOSSES.get(name).obj.make_state
    return step_context(make_state(params) if make_state is not None else None, params, agg or Aggregation())


def loss_and_metrics(name: str, x: PolicyInputs, params, seed: int = 0):
    entry = POLICY_LOSSES.get(name)
    ctx = first_step_context(name, params)
    sel = run_select(entry, params, x, ctx, torch.Generator().manual_seed(seed))
    out = entry.obj.loss(x, params, sel, ctx)
    return out, sel


@pytest.mark.parametrize("name", NAMES)
def test_neutral_params_reproduce_ppo_clip(name: str) -> None:
    entry = POLICY_LOSSES.get(name)
    if entry.obj.neutral is None:
        pytest.skip(f"{name} declares no neutral setting (documented in its module)")
    p = entry.make_params(**dict(entry.obj.neutral))
    shared = {k: v for k, v in params_dict(p).items() if k in ("eps_low", "eps_high", "clip_ratio_c")}
    ref = POLICY_LOSSES.get("ppo_clip")
    x = make_inputs(name)
    out, _ = loss_and_metrics(name, x, p)
    expected = ref.obj.loss(x, ref.make_params(**shared), TokenWeights(), StepContext())
    m = x.mask.bool()
    torch.testing.assert_close(out.per_token[m], expected.per_token[m], rtol=1e-6, atol=1e-6)


def test_ppo_clip_is_neutral_and_most_methods_have_a_neutral_setting() -> None:
    assert POLICY_LOSSES.get("ppo_clip").obj.neutral == ()
    with_neutral = [n for n in NAMES if POLICY_LOSSES.get(n).obj.neutral is not None]
    assert len(with_neutral) >= max(1, len(NAMES) // 2), with_neutral


@pytest.mark.parametrize("name", NAMES)
def test_masked_tokens_get_exactly_zero_gradient(name: str) -> None:
    x = make_inputs(name)
    entry = POLICY_LOSSES.get(name)
    leaves = [x.logp, x.entropy] + [v for k, v in x.extras.items() if v.requires_grad]
    for t in leaves:
        t.retain_grad()
    out, _ = loss_and_metrics(name, x, entry.make_params())
    loss = aggregate(out.per_token, x.mask, "token-mean")
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    off = ~x.mask.bool()
    for g in grads:
        if g is not None:
            assert torch.all(g[off] == 0), f"{name}: gradient leaks into masked positions"


@pytest.mark.parametrize("name", NAMES)
def test_micro_batch_invariance(name: str) -> None:
    """Select once over the mini-batch, then 1 vs 4 micro-batches with mini-batch normalisers: same gradient."""
    entry = POLICY_LOSSES.get(name)
    p = entry.make_params()
    x = make_inputs(name, off_policy=0.5)
    ctx = first_step_context(name, p).for_minibatch(num_tokens=x.mask.sum(), num_seqs=B)
    grads = []
    for n_micro in (1, 4):
        sel = run_select(entry, p, x, ctx, torch.Generator().manual_seed(3))
        total = 0.0
        size = B // n_micro
        for start in range(0, B, size):
            rows = slice(start, start + size)
            out = entry.obj.loss(x.rows(rows), p, sel.rows(rows), ctx)
            total = total + ctx.agg.reduce(out.per_token, x.mask[rows])
        grads.append(torch.autograd.grad(total, x.logp, retain_graph=True)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["ratio_e20", "ratio_e-20", "zero_adv", "single_token"])
def test_outputs_finite_on_extreme_inputs(name: str, case: str) -> None:
    x = make_inputs(name, lengths=[1] * B if case == "single_token" else None)
    if case.startswith("ratio"):
        shift = 20.0 if case == "ratio_e20" else -20.0
        x = dataclasses.replace(x, old_logp=(x.logp - shift).detach())
    if case == "zero_adv":
        x = dataclasses.replace(x, adv=torch.zeros_like(x.adv))
    entry = POLICY_LOSSES.get(name)
    out, _ = loss_and_metrics(name, x, entry.make_params())
    loss = aggregate(out.per_token, x.mask, "token-mean")
    assert torch.isfinite(loss)
    (g,) = torch.autograd.grad(loss, x.logp)
    assert torch.isfinite(g).all()
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in out.metrics.values()), out.metrics


@pytest.mark.parametrize("name", NAMES)
def test_empty_mask_gives_zero_loss(name: str) -> None:
    x = make_inputs(name)
    x = dataclasses.replace(x, mask=torch.zeros_like(x.mask), adv=torch.zeros_like(x.adv))
    entry = POLICY_LOSSES.get(name)
    out, _ = loss_and_metrics(name, x, entry.make_params())
    assert float(aggregate(out.per_token, x.mask, "token-mean")) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_metric_keys_are_namespaced(name: str) -> None:
    x = make_inputs(name)
    out, sel = loss_and_metrics(name, x, POLICY_LOSSES.get(name).make_params())
    keys = list(out.metrics) + list(sel.metrics)
    for key in keys:
        assert key.startswith("policy/") or key.startswith(f"method/{name}/"), f"{name}: metric '{key}' not namespaced"


@pytest.mark.parametrize("name", NAMES)
def test_selection_is_deterministic_for_a_generator(name: str) -> None:
    entry = POLICY_LOSSES.get(name)
    if entry.obj.select is None:
        pytest.skip("no selection phase")
    x = make_inputs(name)
    p = entry.make_params()
    ctx = first_step_context(name, p)
    a = run_select(entry, p, x, ctx, torch.Generator().manual_seed(5))
    b = run_select(entry, p, x, ctx, torch.Generator().manual_seed(5))
    for k in a.tensors:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("name", NAMES)
def test_params_defaults_round_trip_through_yaml(name: str) -> None:
    entry = POLICY_LOSSES.get(name)
    p = entry.make_params()
    loaded = yaml.safe_load(yaml.safe_dump(params_dict(p)))
    assert entry.make_params(**loaded) == p


@pytest.mark.parametrize("name", NAMES)
def test_unknown_param_is_rejected_with_a_hint(name: str) -> None:
    entry = POLICY_LOSSES.get(name)
    with pytest.raises(TypeError, match="unknown parameter"):
        entry.make_params(definitely_not_a_param=1)


@pytest.mark.parametrize("name", NAMES)
def test_method_has_module_docstring_with_paper_and_params(name: str) -> None:
    import sys

    entry = POLICY_LOSSES.get(name)
    doc = sys.modules[entry.obj.loss.__module__].__doc__ or ""
    assert entry.obj.paper, f"{name}: register a paper reference"
    assert "Params" in doc, f"{name}: module docstring must list its parameters with defaults"


@pytest.mark.parametrize("name", WITH_SELECT)
def test_loss_without_its_selection_raises_a_clear_error(name: str) -> None:
    entry = POLICY_LOSSES.get(name)
    p = entry.make_params()
    x = make_inputs(name)
    ctx = first_step_context(name, p)
    if not run_select(entry, p, x, ctx, torch.Generator().manual_seed(0)).tensors:
        pytest.skip(f"{name}'s default configuration selects nothing")
    with pytest.raises(ValueError, match="run the method's `select`"):
        entry.obj.loss(x, p, TokenWeights(), ctx)


@pytest.mark.parametrize("name", STATEFUL)
def test_stateful_loss_without_its_values_raises_a_clear_error(name: str) -> None:
    entry = POLICY_LOSSES.get(name)
    p = entry.make_params()
    x = make_inputs(name)
    sel = run_select(entry, p, x, first_step_context(name, p), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=f"{name}: the step context carries NoneType"):
        entry.obj.select(x.detached(), p, StepContext(), None) if sel.tensors else entry.obj.loss(x, p, sel, StepContext())


class DeclaredMetrics(Mapping[str, float]):
    """Step metrics holding exactly the keys a method declares in `requires`; reading any other key fails."""

    def __init__(self, name: str, values: dict[str, float]) -> None:
        self.name, self.values = name, values

    def __getitem__(self, key: str) -> float:
        if key not in self.values:
            raise AssertionError(f"{self.name}: after_update reads '{key}', not declared in `requires`")
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def plain(value: Any) -> Any:
    """A state_dict value as JSON + tensors would hold it; fails on anything else (custom objects, tuples)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        assert all(isinstance(k, str) for k in value), value
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    assert value is None or isinstance(value, (bool, int, float, str)), f"not a plain value: {value!r}"
    return value


@pytest.mark.parametrize("name", STATEFUL)
def test_state_context_is_pure_and_params_stay_user_settings(name: str) -> None:
    """Several before/after_update cycles: building the context twice gives equal values and leaves the state
    unchanged; Params are never touched; after_update reads only declared metrics; state_dict is plain data."""
    entry = POLICY_LOSSES.get(name)
    p = entry.make_params()
    fresh = copy.deepcopy(params_dict(p))
    state = entry.obj.make_state(p)
    seen = []
    for cycle in range(4):
        x = make_inputs(name, seed=cycle)
        state.before_update(dataclasses.replace(x.detached(), logp=x.old_logp))
        before = json.dumps(plain(state.state_dict()), sort_keys=True)
        first = step_context(state, p, Aggregation()).values
        second = step_context(state, p, Aggregation()).values
        assert first == second and dataclasses.is_dataclass(first), (name, first, second)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(first, dataclasses.fields(first)[0].name, None)
        assert json.dumps(plain(state.state_dict()), sort_keys=True) == before, f"{name}: values() changed the state"
        seen.append(first)
        step_metrics = {"entropy/token_mean": 0.5 + 0.1 * cycle, "dynamics/dH_pred": -0.01 * cycle,
                        "dynamics/dH_per_bonus": 0.5}
        state.after_update(DeclaredMetrics(name, {k: v for k, v in step_metrics.items() if k in entry.obj.requires}))
        assert params_dict(p) == fresh and p == entry.make_params(), f"{name}: the state changed Params"
    restored = entry.obj.make_state(p)
    restored.load_state_dict(json.loads(json.dumps(plain(state.state_dict()))))  # survives JSON
    assert restored.values(p) == state.values(p)
    names = {f.name for f in dataclasses.fields(entry.params_cls)}
    assert not {"anchor", "history_mean", "epoch", "loss_agg_mode", "norm_length"} & names, f"{name}: run-time field in Params"


def trainer_supplies(kind: str, requirement: str, method) -> bool:
    features = {n for n, _ in method.old_features + method.cur_features}
    table = TRAINER_INPUTS if kind == "input" else TRAINER_STEP_METRICS
    return requirement in features or requirement in table


@pytest.mark.parametrize("name", NAMES)
def test_every_declared_requirement_is_satisfiable_or_refused(name: str) -> None:
    """Each declared input / trainer metric is one the trainer knows; a config supplying everything validates,
    one supplying nothing optional is refused exactly when the method declares something it then lacks."""
    method = POLICY_LOSSES.get(name).obj
    assert method.inputs <= set(TOKEN_INPUTS) | {n for n, _ in method.old_features + method.cur_features}
    for kind, reqs in (("input", method.inputs), ("trainer metric", method.requires)):
        for req in reqs:
            assert trainer_supplies(kind, req, method), f"{name} declares {kind} '{req}' the trainer never supplies"
    load_config(None, [f"algorithm.method={name}", "train.dynamics_every=1", "algorithm.kl_coef=0.1"])
    bare = ["train.dynamics_every=0", "algorithm.kl_coef=0"]  # no probe, no reference model
    off = load_config(None, bare)  # (ppo_clip) to evaluate the conditions on
    lacking = [r for r in sorted(method.inputs) if r in TRAINER_INPUTS and TRAINER_INPUTS[r](off) is not None]
    lacking += [r for r in method.requires if TRAINER_STEP_METRICS[r](off) is not None]
    if lacking:
        with pytest.raises(ConfigError, match=f"'{name}' needs .* '{lacking[0]}'"):
            load_config(None, [f"algorithm.method={name}", *bare])
    else:
        load_config(None, [f"algorithm.method={name}", *bare])
