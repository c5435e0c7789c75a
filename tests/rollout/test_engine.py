"""The rollout seam: the `hf` engine behind the RolloutEngine protocol, group index, per-token temperature,
token-id prompts."""

from __future__ import annotations

import pytest
import torch

from entropy_rl.core.registry import ParamsError, RegistryError
from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.rollout import ENGINES, HfEngine, SamplingParams, generate, make_engine
from entropy_rl.rollout.hf import HfParams, concat_rollouts
from entropy_rl.train.config import ConfigError, load_config
from tiny_setup import TINY  # noqa: E402  (tests/ is on sys.path via conftest)

SPEC = TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def policy():
    tok = build_char_tokenizer("0123456789+-*>: ")
    return build_tiny_model(SPEC, tok, seed=0), tok


def test_hf_engine_gives_contiguous_groups_and_is_the_plain_generate(policy) -> None:
    model, tok = policy
    engine = make_engine("hf", model, tok)
    assert isinstance(engine, HfEngine) and "hf" in ENGINES.names()
    sampling = SamplingParams(temperature=0.7, max_new_tokens=5)
    torch.manual_seed(0)
    batch = engine.generate(["1>2:", "33>4:"], sampling, group_size=3)
    torch.manual_seed(0)
    plain = generate(model, tok, ["1>2:"] * 3 + ["33>4:"] * 3, sampling)
    assert batch.group_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(batch.response_ids, plain.response_ids) and torch.equal(batch.sampling_logp, plain.sampling_logp)
    assert batch.temperature.shape == batch.response_ids.shape and batch.uniform_temperature() == pytest.approx(0.7)


def test_token_id_prompts_sample_the_same_as_their_text(policy) -> None:
    model, tok = policy
    texts = ["1 2>3:", "12 3 4>99:"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=4)
    torch.manual_seed(1)
    a = generate(model, tok, texts, sampling)
    torch.manual_seed(1)
    b = generate(model, tok, ids, sampling)
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.prompt_mask, b.prompt_mask)
    assert torch.equal(a.response_ids, b.response_ids)


def test_sync_weights_repoints_the_engine(policy) -> None:
    model, tok = policy
    engine = HfEngine(model, tok)
    other = build_tiny_model(SPEC, tok, seed=1)
    engine.sync_weights(other)
    assert engine.model is other


def test_per_token_temperature_and_group_checks(policy) -> None:
    model, tok = policy
    batch = generate(model, tok, ["1>2:", "3>4:"], SamplingParams(temperature=0.5, max_new_tokens=3))
    varied = batch.temperature.clone()
    varied[0, 0] = 0.9
    from dataclasses import replace

    assert replace(batch, temperature=varied).uniform_temperature() is None
    with pytest.raises(ValueError, match="group_index"):
        replace(batch, group_index=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        replace(batch, temperature=torch.ones(2, 1))
    joined = concat_rollouts([batch, batch], tok.pad_token_id)
    assert joined.group_index.tolist() == [0, 1, 2, 3]  # groups of different chunks never merge


def test_unknown_engine_is_a_clear_error(policy) -> None:
    with pytest.raises(RegistryError, match="unknown rollout engine 'vlm'"):
        make_engine("vlm", *policy)


def test_engine_params_reach_the_engine_and_unknown_ones_are_named(policy) -> None:
    engine = make_engine("hf", *policy, {})
    assert isinstance(engine, HfEngine) and engine.params == HfParams()
    with pytest.raises(ParamsError, match=r"rollout.engine_params: unknown parameter 'kv_cache_gib' of hf"):
        make_engine("hf", *policy, {"kv_cache_gib": 1.0})


def test_the_config_checks_engine_params_against_the_engine() -> None:
    with pytest.raises(ConfigError, match=r"rollout.engine_params: unknown parameter 'sleep' of hf"):
        load_config(None, [*TINY, "rollout.engine_params={sleep: false}"])


def test_share_prefill_is_an_engine_param_checked_by_type(policy) -> None:
    model, tok = policy
    assert make_engine("hf", model, tok).params.share_prefill is True  # the default
    off = make_engine("hf", model, tok, {"share_prefill": False})
    assert off.params == HfParams(share_prefill=False)
    sampling = SamplingParams(temperature=0.9, max_new_tokens=5)
    torch.manual_seed(2)
    a = off.generate(["1>2:", "33>4:"], sampling, group_size=3)
    torch.manual_seed(2)
    b = make_engine("hf", model, tok).generate(["1>2:", "33>4:"], sampling, group_size=3)
    assert torch.equal(a.response_ids, b.response_ids) and torch.allclose(a.sampling_logp, b.sampling_logp, atol=1e-6)
    with pytest.raises(ParamsError, match=r"rollout.engine_params.share_prefill: expected true/false, got 'yes'"):
        make_engine("hf", model, tok, {"share_prefill": "yes"})
    with pytest.raises(ParamsError, match=r"unknown parameter 'share_prefil' of hf; did you mean 'share_prefill'"):
        make_engine("hf", model, tok, {"share_prefil": True})


def test_the_config_checks_share_prefill() -> None:
    assert load_config(None, [*TINY, "rollout.engine_params={share_prefill: false}"]).rollout.engine_params == {
        "share_prefill": False}
    with pytest.raises(ConfigError, match=r"rollout.engine_params.share_prefill: expected true/false, got 1"):
        load_config(None, [*TINY, "rollout.engine_params={share_prefill: 1}"])


def test_cache_implementation_is_an_engine_param_with_checked_values(policy) -> None:
    model, tok = policy
    assert make_engine("hf", model, tok).params.cache_implementation == "dynamic"  # the default
    static = make_engine("hf", model, tok, {"cache_implementation": "static"})
    sampling = SamplingParams(temperature=0.9, max_new_tokens=5)
    torch.manual_seed(4)
    a = static.generate(["1>2:", "33>4:"], sampling, group_size=3)
    torch.manual_seed(4)
    b = make_engine("hf", model, tok).generate(["1>2:", "33>4:"], sampling, group_size=3)
    assert torch.equal(a.response_ids, b.response_ids) and torch.allclose(a.sampling_logp, b.sampling_logp, atol=1e-6)
    with pytest.raises(ParamsError, match=r"rollout.engine_params: cache_implementation must be one of dynamic, static, "
                                          r"got 'offloaded'"):
        make_engine("hf", model, tok, {"cache_implementation": "offloaded"})
    with pytest.raises(ConfigError, match=r"rollout.engine_params.cache_implementation: expected a string, got 1"):
        load_config(None, [*TINY, "rollout.engine_params={cache_implementation: 1}"])
    with pytest.raises(ConfigError, match=r"cache_implementation must be one of dynamic, static, got 'Static'"):
        load_config(None, [*TINY, "rollout.engine_params={cache_implementation: Static}"])
